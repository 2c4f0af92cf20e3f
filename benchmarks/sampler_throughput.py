"""Sampler throughput: images/s of the guided variation sampler, cached vs uncached.

  .venv/bin/python benchmarks/sampler_throughput.py --out=benchmarks/results
  .venv/bin/python benchmarks/sampler_throughput.py --variant=default --batch=64 --steps=32 \
      --kinds=ddpm,ddim --repeats=3
  .venv/bin/python benchmarks/sampler_throughput.py --kinds=ddpm --arms=cached \
      --batch=25,50,200 --images=200 --repeats=3 --name=sampler_batch.json   # eval.batch_size
  XLA_FLAGS=--xla_force_host_platform_device_count=2 .venv/bin/python \
      benchmarks/sampler_throughput.py --kinds=ddpm --arms=cached --batch=50 --images=200 \
      --name=sampler_2dev.json    # the batch sharded over 2 CPU devices, as main --mode=eval

For each sampler kind it times the real jitted sampler (`samplers.make_sampler`, guidance
on, one doubled batch) twice on random weights of the config's shapes: with the decoder's
`prepare` (the conditioning embedding's CLS term, the projected encoder tokens, every
cross-attention layer's keys and values and the null condition's computed once per call)
and without it (every step recomputes them, as before); `--batch` may list several batch
sizes, each an arm of its own. The arms alternate within each repeat so that all see the
same machine state (separate runs of this VM differed by up to 15%); an arm's call
samples at least `--images` images (several calls for a small batch), and the figure is
the median over repeats
with the min-max range. `cores_busy` is process CPU time / wall time during the timed
calls (2.0 = both cores of this machine busy). Results: OUT/sampler_throughput.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.train_throughput import (  # noqa: E402
    add_xla_defaults_flag,
    apply_overrides,
    cond_token_shape,
    config_for,
)


@dataclasses.dataclass(frozen=True)
class UncachedApply:
    """The decoder without `prepare`: every step re-derives the condition (the old path)."""

    model: object

    def __call__(self, params, z_t, logsnr, cond, drop_cond):
        return self.model.apply(
            {"params": params}, z_t, logsnr, cond["tokens"], cond["cls"], drop_cond, train=False
        )


def _timed(calls: int, fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `calls` calls, the last one blocking."""
    import jax

    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return time.perf_counter() - t0, time.process_time() - c0


def random_decoder(config):
    """(model, params, (num_tokens, width)) of a config's decoder on random weights.

    Small noise on every weight, so the zero-initialised output layers pass signal and
    outputs compared below are real (not zero images).
    """
    import jax
    import numpy as np

    from semantica_jax import decoder
    from semantica_jax.models import uvit

    model = decoder.build_model(config)
    num_tokens, width = cond_token_shape(config)
    inputs = uvit.example_inputs(model.config, 2, num_tokens, width)
    params = model.init(jax.random.PRNGKey(0), *inputs, train=False)["params"]
    noise = np.random.default_rng(1)
    params = jax.tree.map(
        lambda p: p + 0.02 * noise.standard_normal(p.shape).astype(p.dtype), params
    )
    return model, params, (num_tokens, width)


def random_cond(batch: int, token_shape: tuple[int, int], mesh) -> dict:
    """Random encoder tokens [B, T, D] and CLS [B, D], the batch sharded over `mesh`."""
    import jax
    import numpy as np

    from semantica_jax.utils import parallel

    rng = np.random.default_rng(0)
    num_tokens, width = token_shape
    cond = {
        "tokens": rng.normal(size=(batch, num_tokens, width)).astype("f4"),
        "cls": rng.normal(size=(batch, width)).astype("f4"),
    }
    return jax.device_put(cond, parallel.batch_sharding(mesh))


def config_sampler(config, apply_fn, batch: int, *, kind: str, steps: int, guided: bool):
    """`samplers.make_sampler` for `batch` images of the config's shape, schedule,
    parametrisation and DDPM gamma: the sampler the eval builds, with `apply_fn`."""
    from semantica_jax import decoder
    from semantica_jax.diffusion import samplers

    hw, c = config.data.image_size, config.data.channels
    return samplers.make_sampler(
        apply_fn,
        (batch, hw, hw, c),
        decoder.training_logsnr_fn(config),
        prediction=config.diffusion.prediction,
        kind=kind,
        num_steps=int(steps),
        gamma=float(config.sampler.gamma),
        guided=guided,
    )


def measure(args) -> dict:
    import jax
    import numpy as np

    from semantica_jax import decoder
    from semantica_jax.utils import parallel

    config = apply_overrides(config_for(args.variant), args.set)
    config.model.dtype = args.dtype
    model, params, token_shape = random_decoder(config)
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    batches = [int(b) for b in str(args.batch).split(",")]
    calls = {b: -(-args.images // b) for b in batches}  # per timed arm: >= --images images
    # Several devices (XLA_FLAGS forcing host devices): the batch sharded over them, the
    # params replicated, as the eval's Generator does.
    mesh = parallel.make_mesh(1)
    for b in batches:
        parallel.check_batch_size(b, mesh, "batch (--batch)")
    params = jax.device_put(params, parallel.replicated(mesh))
    conds = {b: random_cond(b, token_shape, mesh) for b in batches}
    rows = []
    for kind in args.kinds.split(","):
        arms = {"cached": decoder.DecoderApply(model), "uncached": UncachedApply(model)}
        arms = {name: arms[name] for name in args.arms.split(",")}
        fns = {
            (name, b): config_sampler(
                config, apply_fn, b, kind=kind, steps=args.steps, guided=args.guidance != 0
            )
            for name, apply_fn in arms.items()
            for b in batches
        }
        key = jax.random.PRNGKey(1)
        results = {arm: [] for arm in fns}
        w = args.guidance
        outs = {arm: np.asarray(fn(params, conds[arm[1]], key, w)) for arm, fn in fns.items()}
        diffs = {  # compiled above; cached vs uncached on the same inputs
            b: float(np.max(np.abs(outs["cached", b] - outs["uncached", b])))
            for b in batches
            if ("uncached", b) in outs and ("cached", b) in outs
        }
        for _ in range(args.repeats):
            for (name, b), fn in fns.items():
                results[name, b].append(_timed(calls[b], fn, params, conds[b], key, w))
        for (name, b), times in results.items():
            rates = [calls[b] * b / wall for wall, _ in times]
            rows.append(
                {
                    "kind": kind,
                    "arm": name,
                    "batch": b,
                    "images_per_s": round(statistics.median(rates), 2),
                    "images_per_s_range": [round(min(rates), 2), round(max(rates), 2)],
                    "cores_busy": round(statistics.median(cpu / wall for wall, cpu in times), 2),
                    "max_abs_diff_cached_vs_uncached": diffs.get(b),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {
        "variant": args.variant,
        "platform": jax.devices()[0].platform,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "dtype": args.dtype,
        "num_params": num_params,
        "batch": batches[0] if len(batches) == 1 else batches,
        "images_per_call": args.images,
        "steps": args.steps,
        "guidance": args.guidance,
        "overrides": args.set,
        "repeats": args.repeats,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON")
    parser.add_argument(
        "--variant",
        default="default",
        help="configs/mnist.py variant, or a config file such as configs/imagenet256.py",
    )
    parser.add_argument(
        "--batch", default="64", help="samples per sampler call; several: 25,50,200"
    )
    parser.add_argument(
        "--images", type=int, default=1, help="images per timed arm (several calls if > batch)"
    )
    parser.add_argument("--steps", type=int, default=32, help="reverse steps")
    parser.add_argument("--kinds", default="ddpm,ddim", help="sampler kinds, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per arm")
    parser.add_argument("--dtype", default="float32", help="model.dtype: float32 | bfloat16")
    parser.add_argument(
        "--guidance", type=float, default=0.5, help="w; 0 = the unguided sampler (one batch)"
    )
    parser.add_argument("--arms", default="cached,uncached", help="decoder apply arms to time")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=v")
    parser.add_argument("--name", default="", help="result file name (default from the variant)")
    add_xla_defaults_flag(parser)
    args = parser.parse_args()
    from benchmarks.train_throughput import _cpu_model
    from semantica_jax.utils import atomic_files, xla_cpu

    if not args.no_xla_defaults:
        xla_cpu.apply_defaults(os.environ)  # before JAX creates its backend

    report = {
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "command": " ".join(sys.argv),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        **measure(args),
    }
    suffix = "_no_xla_defaults" * args.no_xla_defaults
    name = args.name or f"sampler_throughput_{os.path.basename(args.variant)}{suffix}.json"
    path = atomic_files.write_json(os.path.join(args.out, name), report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
