#!/usr/bin/env bash
# The GPU checks, as one prepared run (about 10 minutes on one H200): the chip's measured bf16
# matrix ceiling, then train-step images/s and model FLOP/s (MFU) of the default MNIST config
# (float32 and bfloat16, batch 64 and 1,024) and of configs/imagenet256.py (bfloat16, a batch
# that fits), then 50-step guided sampling images/s of both, with and without the decoder's
# `prepare` cache.
#
#   bash benchmarks/gpu_check.sh OUT            # on a machine with a CUDA JAX
#   GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh /tmp/out   # a rehearsal on CPU (seconds)
#
# Every case runs under its own timeout and writes OUT/parts/<case>.json; a failing case is
# logged and skipped. At the end the parts are merged into OUT/gpu_check.json (and removed),
# next to OUT/gpu_check.log. Needs jax, flax, optax, ml_collections and numpy; not TF or clu.
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT}
cd "$(dirname "$0")/.."
mkdir -p "$OUT/parts"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

if [[ -n "${GPU_CHECK_QUICK:-}" ]]; then
  export JAX_PLATFORMS=cpu
  MNIST=tiny BIG_BATCH=16 LARGE=tiny TRAIN_STEPS=2 LARGE_STEPS=2 SAMPLE_STEPS=2 MATMUL=256
  LIMIT=300
  LARGE_SET=()
else
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
  MNIST=default BIG_BATCH=1024 LARGE=configs/imagenet256.py TRAIN_STEPS=20 LARGE_STEPS=5
  SAMPLE_STEPS=50 MATMUL=8192
  # On an H200 (2026-12-04) the 364M-parameter ImageNet step took 181 s to compile and its
  # sampler about 100 s: 330 s each leaves room. The whole script: about 10 minutes.
  LIMIT=330
  # The paper's global batch (2,048) is a pod's; 64 fits one GPU with room to spare.
  LARGE_SET=(--set=train.batch_size=64)
fi

case_run() {  # NAME SECONDS CMD...: one case under its own timeout; failures are logged
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s) $(date -u +%T)"
  if ! timeout "$limit" "$@"; then
    echo "=== $name FAILED or timed out"
  fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())"

case_run matmul 60 $PY - "$MATMUL" "$OUT/parts/matmul.json" <<'EOF'
import json, sys, time
import jax, jax.numpy as jnp
n, path = int(sys.argv[1]), sys.argv[2]
keys = jax.random.split(jax.random.PRNGKey(0), 4)
xs = [jax.random.normal(k, (n, n), jnp.bfloat16) for k in keys]  # random, never zeros
f = jax.jit(lambda a, b: a @ b)
jax.block_until_ready(f(xs[0], xs[1]))
times = []
for i in range(10):
    t0 = time.perf_counter()
    jax.block_until_ready(f(xs[i % 4], xs[(i + 1) % 4]))
    times.append(time.perf_counter() - t0)
times.sort()
tflops = 2 * n**3 / times[len(times) // 2] / 1e12
out = {"n": n, "dtype": "bfloat16", "median_tflops_per_s": round(tflops, 1),
       "device_kind": jax.devices()[0].device_kind}
json.dump(out, open(path, "w"))
print(out)
EOF

T=(benchmarks/train_throughput.py --devices=1 --no_xla_defaults --out="$OUT/parts"
   --steps="$TRAIN_STEPS" --warmup=3)
case_run train_default 120 $PY "${T[@]}" --variant="$MNIST" --name=train_default.json
case_run train_large "$LIMIT" $PY "${T[@]}" --variant="$LARGE" "${LARGE_SET[@]}" \
  --steps="$LARGE_STEPS" --warmup=1 --name=train_large.json

S=(benchmarks/sampler_throughput.py --no_xla_defaults --out="$OUT/parts" --steps="$SAMPLE_STEPS"
   --repeats=3 --guidance=0.5)
case_run sample_default 120 $PY "${S[@]}" --variant="$MNIST" --batch=64 --kinds=ddpm,ddim \
  --name=sample_default.json
case_run sample_large "$LIMIT" $PY "${S[@]}" --variant="$LARGE" --dtype=bfloat16 --batch=16 \
  --kinds=ddim --arms=cached --repeats=2 --name=sample_large.json

# The MNIST step is tiny for this chip: bfloat16 and a batch that fills it.
case_run train_default_bf16 120 $PY "${T[@]}" --variant="$MNIST" \
  --set=model.dtype=bfloat16 --set=train.batch_size="$BIG_BATCH" --name=train_default_bf16.json

$PY - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
parts = {}
for path in sorted(glob.glob(os.path.join(out, "parts", "*.json"))):
    parts[os.path.splitext(os.path.basename(path))[0]] = json.load(open(path))
tmp = os.path.join(out, "gpu_check.json.tmp")
json.dump(parts, open(tmp, "w"), indent=1)
os.replace(tmp, os.path.join(out, "gpu_check.json"))
for path in glob.glob(os.path.join(out, "parts", "*.json")):
    os.remove(path)
print("merged", ", ".join(parts), "into", os.path.join(out, "gpu_check.json"))
EOF
