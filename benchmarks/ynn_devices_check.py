"""Why the YNN dot fusion is off on several host devices: the guided sampler's outputs.

  .venv/bin/python benchmarks/ynn_devices_check.py --out=benchmarks/results   # ~3 min

Runs the default config's sampler on random weights (benchmarks/sampler_throughput.py's
set-up, batch 50 sharded over the devices as `main --mode=eval` does) in three processes:
one device with `--xla_cpu_experimental_ynn_fusion_type=dot` (the reference, training's
setting), two forced host devices with it, and two without it (the eval's setting). For
each of guided DDIM at several step counts, guided DDPM, unguided DDPM and one guided
forward pass it reports the largest difference per sample from the reference and which
samples differ by more than 0.1. On jax 0.10.2 (Intel Xeon, 2026-12-05) two devices with
the fusion returned other images for samples 0-2 of 50 once the loop ran 8 or more guided
steps, while everything else agreed to 1e-6: the case to report upstream, and the reason
`utils/xla_cpu.with_defaults` leaves the fusion out where XLA_FLAGS forces several devices.
Results: OUT/ynn_devices_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YNN = "--xla_cpu_experimental_ynn_fusion_type=dot"
TWO = "--xla_force_host_platform_device_count=2"
ARMS = {"one_device_ynn": YNN, "two_devices_ynn": f"{TWO} {YNN}", "two_devices": TWO}
BATCH = 50


def child(path: str, ddim_steps: list[int]) -> None:
    """Writes every case's samples [B, 28, 28, 1] of this process's devices to `path`."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import jax
    import jax.numpy as jnp
    import numpy as np
    from sampler_throughput import config_sampler, random_cond, random_decoder
    from train_throughput import config_for

    from semantica_jax import decoder
    from semantica_jax.utils import parallel

    config = config_for("default")
    mesh = parallel.make_mesh(1)
    model, params, token_shape = random_decoder(config)
    params = jax.device_put(params, parallel.replicated(mesh))
    cond = random_cond(BATCH, token_shape, mesh)
    apply = decoder.DecoderApply(model)
    hw, c = config.data.image_size, config.data.channels
    key = jax.random.PRNGKey(1)

    def sample(kind: str, steps: int, guided: bool) -> np.ndarray:
        fn = config_sampler(config, apply, BATCH, kind=kind, steps=steps, guided=guided)
        return np.asarray(fn(params, cond, key, 0.5 if guided else 0.0))

    def guided_forward(p, z, cond):
        cache = apply.prepare(p, cond, True)
        out = apply(p, jnp.concatenate([z, z]), jnp.full((2 * BATCH,), 1.0), cache, None)
        return 1.5 * out[:BATCH] - 0.5 * out[BATCH:]

    z = np.random.default_rng(3).normal(size=(BATCH, hw, hw, c)).astype(np.float32)
    z = jax.device_put(z, parallel.batch_sharding(mesh))
    cases = {"guided forward pass": np.asarray(jax.jit(guided_forward)(params, z, cond))}
    for steps in ddim_steps:
        cases[f"guided DDIM, {steps} steps"] = sample("ddim", steps, True)
    steps = int(config.sampler.num_steps)
    cases[f"guided DDPM, {steps} steps"] = sample("ddpm", steps, True)
    cases[f"unguided DDPM, {steps} steps"] = sample("ddpm", steps, False)
    np.savez(path, **cases)


def compare(outputs: dict) -> dict:
    """{case: {arm: {max_abs_diff, samples_over_0.1}}} against the one-device reference."""
    import numpy as np

    reference = outputs["one_device_ynn"]
    report = {}
    for case in reference.files:
        ref = reference[case]
        report[case] = {}
        for arm, out in outputs.items():
            diff = np.abs(out[case] - ref).reshape(ref.shape[0], -1).max(axis=1)
            report[case][arm] = {
                "max_abs_diff": float(diff.max()),
                "samples_over_0.1": np.flatnonzero(diff > 0.1).tolist(),
            }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON")
    parser.add_argument("--ddim_steps", default="4,8,16,32", help="guided DDIM step counts")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ddim_steps = [int(s) for s in args.ddim_steps.split(",")]
    if args.child:
        child(args.child, ddim_steps)
        return
    sys.path.insert(0, ROOT)
    import numpy as np

    from semantica_jax.utils import atomic_files

    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for arm, flags in ARMS.items():
            path = os.path.join(tmp, f"{arm}.npz")
            env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
            cmd = [sys.executable, __file__, f"--child={path}", f"--ddim_steps={args.ddim_steps}"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                sys.exit(f"error: the {arm} process failed:\n{proc.stderr[-3000:]}")
            outputs[arm] = np.load(path)
        report = {"batch": BATCH, "arms": ARMS, "cases": compare(outputs)}
    print(json.dumps(report["cases"], indent=1))
    path = atomic_files.write_json(os.path.join(args.out, "ynn_devices_check.json"), report)
    print("wrote", path)


if __name__ == "__main__":
    main()
