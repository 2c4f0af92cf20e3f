"""The throughput benchmarks build any config's real step without the data stack (values)."""

import os
import subprocess
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import train_throughput  # noqa: E402


def test_config_for_takes_a_variant_or_a_config_file():
    assert train_throughput.config_for("tiny").variant == "tiny"
    assert train_throughput.config_for("configs/mnist.py:large").variant == "large"
    big = train_throughput.config_for("configs/imagenet256.py")
    assert big.data.image_size == 256 and big.model.dtype == "bfloat16"


def test_cond_token_shape_of_project_and_pretrained_encoders():
    # MNIST: the project's ViT, 28 / 4 = 7 -> 49 tokens of width 64.
    assert train_throughput.cond_token_shape(train_throughput.config_for("default")) == (49, 64)
    # ImageNet 256: DINOv2-B/14 at 224 -> 256 tokens of width 768, fixed by the config.
    big = train_throughput.config_for("configs/imagenet256.py")
    assert train_throughput.cond_token_shape(big) == (256, 768)


def test_build_step_trains_and_counts_model_flops():
    compiled, state, batch, flops, bsz, mesh, _, model_flops = train_throughput.build_step(
        "tiny", ["train.batch_size=8"]
    )
    assert bsz == 8 and batch["target"].shape[0] == 8
    # Compiled and as-written FLOPs agree to within XLA's fusion rewrites.
    assert flops > 0 and 0.8 < model_flops / flops < 1.25
    before = jax.tree.map(np.asarray, state.params)
    with jax.set_mesh(mesh):
        for _ in range(2):  # the warm-up's learning rate is 0 at step 0
            state, metrics = compiled(state, batch, {})
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 2
    moved = jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - b)), state.params, before)
    assert max(float(m) for m in jax.tree.leaves(moved)) > 0


def test_step_imports_neither_tensorflow_nor_clu():
    """A GPU machine without TF or clu can run the throughput benchmarks."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); sys.path.insert(0, '.');"
        "[sys.modules.__setitem__(m, None) for m in ('tensorflow', 'tensorflow_datasets', 'clu')];"
        "import train_throughput, sampler_throughput;"
        "from semantica_jax import train_step, decoder; print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_sampler_benchmark_interleaves_batch_sizes():
    """Several batch sizes are arms of one run; cached and uncached agree at each."""
    import argparse

    import sampler_throughput

    args = argparse.Namespace(
        variant="tiny",
        set=[],
        dtype="float32",
        batch="2,4",
        images=4,
        steps=2,
        kinds="ddpm",
        arms="cached,uncached",
        repeats=2,
        guidance=0.5,
    )
    report = sampler_throughput.measure(args)
    assert report["batch"] == [2, 4] and report["images_per_call"] == 4
    rows = report["rows"]
    assert [(r["arm"], r["batch"]) for r in rows] == [
        ("cached", 2),
        ("cached", 4),
        ("uncached", 2),
        ("uncached", 4),
    ]
    for r in rows:
        assert 0 < r["images_per_s_range"][0] <= r["images_per_s"] <= r["images_per_s_range"][1]
        assert r["max_abs_diff_cached_vs_uncached"] < 1e-4


def test_profile_of_the_sampler_sums_op_time_by_kind():
    """--what=sampler profiles one compiled guided sampler call of the config's eval batch."""
    import argparse

    import profile_step

    args = argparse.Namespace(what="sampler", variant="tiny", set=[], steps=1, top=5, batch=0)
    report = profile_step.child(args)
    assert report["what"] == "sampler" and report["batch_size"] == 20  # tiny eval.batch_size
    assert report["sampler"] == "ddpm, 4 steps, w = 0.5" and report["flops_per_reverse_step"] > 0
    shares = [k["share"] for k in report["kinds"].values()]
    assert abs(sum(shares) - 1) < 0.01 and report["op_ms_per_call_total"] > 0
    assert "dot (dense, attention)" in report["kinds"] and len(report["top_ops"]) == 5
    # The jitted call's own event spans the whole call: counted, it would double the total.
    assert not any(op["op"].startswith("PjitFunction") for op in report["top_ops"])


def test_ynn_devices_check_compares_each_sample_with_the_one_device_run(tmp_path):
    import numpy as np
    import ynn_devices_check

    ref = np.zeros((4, 2, 2, 1), np.float32)
    off = ref.copy()
    off[2, 0, 0, 0] = 0.5  # one sample of four differs
    outputs = {}
    for arm, case in (("one_device_ynn", ref), ("two_devices_ynn", off), ("two_devices", ref)):
        np.savez(tmp_path / f"{arm}.npz", sampler=case)
        outputs[arm] = np.load(tmp_path / f"{arm}.npz")
    report = ynn_devices_check.compare(outputs)["sampler"]
    assert report["two_devices_ynn"] == {"max_abs_diff": 0.5, "samples_over_0.1": [2]}
    assert report["two_devices"] == {"max_abs_diff": 0.0, "samples_over_0.1": []}
