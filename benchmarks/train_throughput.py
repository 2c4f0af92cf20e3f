"""Train-step throughput of a config: images/s, step time, achieved FLOP/s, peak memory.

  .venv/bin/python benchmarks/train_throughput.py --out=benchmarks/results
  .venv/bin/python benchmarks/train_throughput.py --devices=1,8 --steps=20 --variant=default

Each device count runs in its own process (XLA_FLAGS must be set before JAX starts) on
synthetic batches of the config's shapes, through the real jitted, donated, sharded train
step. FLOPs come from XLA's cost analysis of the compiled step; peak memory is the
process's maximum resident set size (CPU) or the device's peak bytes (GPU/TPU).
Results: OUT/train_throughput.json (and printed).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_step(variant: str, overrides: list[str]):
    """The real jitted, donated, sharded train step of a config, compiled on synthetic data.

    Returns (compiled step, state, batch, FLOPs per global step, batch size, mesh, compile s,
    model FLOPs per global step).
    """
    sys.path.insert(0, ROOT)
    import jax
    import numpy as np

    from semantica_jax import decoder
    from semantica_jax.train_step import (
        StepConfig,
        create_state,
        make_optimizer,
        model_apply_fn,
        train_step,
    )
    from semantica_jax.utils import parallel

    config = apply_overrides(config_for(variant), overrides)
    mesh = parallel.make_mesh(config.mesh.fsdp)
    bsz = config.train.batch_size
    parallel.check_batch_size(bsz, mesh)
    hw, c = config.data.image_size, config.data.channels
    num_tokens, width = cond_token_shape(config)
    rng = np.random.default_rng(0)
    host_batch = {
        "target": rng.uniform(-1, 1, (bsz, hw, hw, c)).astype(np.float32),
        "cond_tokens": rng.normal(size=(bsz, num_tokens, width)).astype(np.float32),
        "cond_cls": rng.normal(size=(bsz, width)).astype(np.float32),
    }
    model = decoder.build_model(config)
    tx = make_optimizer(config.train)
    state, abstract = create_state(config, model, tx, host_batch, mesh)
    step_fn = functools.partial(
        train_step,
        model_apply=model_apply_fn(model),
        encoder_apply=None,
        logsnr_fn=decoder.training_logsnr_fn(config),
        tx=tx,
        hp=StepConfig.from_config(config),
    )
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    jit_step = jax.jit(
        step_fn,
        in_shardings=(shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=(0,),
    )
    with jax.set_mesh(mesh):
        batch = parallel.global_batch(host_batch, mesh)
        t0 = time.perf_counter()
        lowered = jit_step.lower(state, batch, {})
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA reports the cost of one SPMD partition: scale to the whole (global) step.
    flops = float(cost.get("flops", float("nan"))) * mesh.size
    # The model's FLOPs as written (before XLA's passes; on GPU the compiled count can miss
    # convolutions handed to cuDNN), the numerator of MFU. Of the global step already.
    model_cost = lowered.cost_analysis()
    model_cost = model_cost[0] if isinstance(model_cost, list) else model_cost
    model_flops = float((model_cost or {}).get("flops", float("nan")))
    return compiled, state, batch, flops, bsz, mesh, compile_s, model_flops


def config_for(variant: str):
    """A benchmark's config: a configs/mnist.py variant name ("default", "tiny", ...) or a
    config file as --config takes it ("configs/imagenet256.py", "configs/mnist.py:large")."""
    import importlib

    sys.path.insert(0, ROOT)
    if not variant.endswith(".py") and ".py:" not in variant:
        from configs import mnist

        return mnist.get_config(variant)
    path, _, sub = variant.partition(":")
    module = importlib.import_module("configs." + os.path.splitext(os.path.basename(path))[0])
    return module.get_config(sub) if sub else module.get_config()


def cond_token_shape(config) -> tuple[int, int]:
    """(T, D) of the conditioning tokens: `encoder.num_tokens` where a config fixes it (a
    pretrained encoder's, e.g. DINOv2's 256 at 224²), else the project encoder's."""
    from semantica_jax import assets

    if config.encoder.get("num_tokens"):
        return int(config.encoder.num_tokens), int(config.encoder.width)
    return assets.encoder_token_shape(config)


def apply_overrides(config, overrides: list[str]):
    """config with each "a.b=value" applied (value cast to the field's type; tuples as
    Python literals, e.g. "model.channels=(128,)")."""
    import ast

    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        old = node[leaf]
        node[leaf] = ast.literal_eval(value) if isinstance(old, tuple) else type(old)(value)
    return config


def measure(variant: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    """Runs in the child process: builds the real step and times it."""
    import jax
    import numpy as np

    compiled, state, batch, flops, bsz, mesh, compile_s, model_flops = build_step(
        variant, overrides
    )
    with jax.set_mesh(mesh):
        for _ in range(max(warmup, 1)):  # at least one, so the timed steps start warm
            state, metrics = compiled(state, batch, {})
        jax.block_until_ready(metrics)
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch, {})
        jax.block_until_ready(metrics)
        wall = time.perf_counter() - t0
        cores_busy = (time.process_time() - c0) / wall
        step_s = wall / steps
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    mem = jax.devices()[0].memory_stats() or {}
    peak = mem.get("peak_bytes_in_use") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "variant": variant,
        "overrides": overrides,
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "batch_size": bsz,
        "num_params": num_params,
        "compile_s": round(compile_s, 2),
        "step_time_s": round(step_s, 4),
        "images_per_s": round(bsz / step_s, 1),
        "flops_per_step": flops,
        "flops_per_image": flops / bsz,
        "achieved_gflops_per_s": round(flops / step_s / 1e9, 1),
        "model_flops_per_image": model_flops / bsz,
        "model_tflops_per_s": round(model_flops / step_s / 1e12, 2),
        "device_kind": jax.devices()[0].device_kind,
        "cores_busy": round(cores_busy, 2),
        "peak_memory_gib": round(peak / 2**30, 3),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "final_loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON")
    parser.add_argument(
        "--variant",
        default="default",
        help="configs/mnist.py variant, or a config file such as configs/imagenet256.py",
    )
    parser.add_argument("--devices", default="1,8", help="simulated CPU device counts")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--xla_flags", default="", help="extra XLA_FLAGS, e.g. onednn flags")
    add_xla_defaults_flag(parser)
    parser.add_argument("--set", action="append", default=[], help="config override a.b=v")
    parser.add_argument("--name", default="train_throughput.json", help="result file name")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.variant, args.steps, args.warmup, args.set)))
        return
    sys.path.insert(0, ROOT)
    from semantica_jax.utils import xla_cpu

    results = []
    for n in [int(d) for d in args.devices.split(",")]:
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n} {args.xla_flags}".strip()
        if not args.no_xla_defaults:
            env["XLA_FLAGS"] = xla_cpu.with_defaults(env["XLA_FLAGS"])
        env.setdefault("JAX_PLATFORMS", "cpu")
        cmd = [
            sys.executable,
            __file__,
            "--child",
            f"--variant={args.variant}",
            f"--steps={args.steps}",
            f"--warmup={args.warmup}",
        ]
        cmd += [f"--set={s}" for s in args.set]
        print(f"measuring {args.variant} on {n} device(s) ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            sys.exit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1], indent=2))
    report = {
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "results": results,
    }
    sys.path.insert(0, ROOT)
    from semantica_jax.utils import atomic_files

    path = atomic_files.write_json(os.path.join(args.out, args.name), report)
    print(f"wrote {path}")


def add_xla_defaults_flag(parser: argparse.ArgumentParser) -> None:
    """--no_xla_defaults: compare against XLA as shipped (every benchmark has it)."""
    parser.add_argument(
        "--no_xla_defaults",
        action="store_true",
        help="leave out the project's default XLA:CPU flags (utils/xla_cpu.py)",
    )


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
