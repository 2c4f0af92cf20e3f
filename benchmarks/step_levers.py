"""Bounds on two train-step levers, measured on the default config's real shapes.

  .venv/bin/python benchmarks/step_levers.py --out=benchmarks/results     # ~2 min
  .venv/bin/python benchmarks/step_levers.py --quick --out=/tmp/levers     # seconds (tests)

- **Fused QKV**: one self-attention of the default transformer stage (x [B, N, W]:
  B = train.batch_size, N = (image_size / patch_size / 2)^2 tokens, W = transformer_width,
  `model.heads` heads), forward and backward, with the query, key and value projected by
  three DenseGeneral layers (what `models/layers.Attention` does) or by one of three times
  the width, split afterwards. Both compute the same function; the saving per block times
  the stage's blocks, over the real step's time, bounds what fusing could buy.
- **EMA fused into the optimizer update**: the real step's time (train_throughput's
  build_step: jitted, donated) against the EMA update alone on the same parameter tree
  (e <- d e + (1 - d) p, jitted, donated). Fusing it into Adam's elementwise pass could
  save at most the latter.

Variants alternate within each of --rounds rounds (medians reported), so a neighbour on
the cores slows both alike. Writes OUT/step_levers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def attention_fns(batch: int, tokens: int, width: int, heads: int):
    """{'separate' | 'fused': (jitted fwd+bwd, params, x, forward)}: the same attention.

    x [batch, tokens, width]; fwd+bwd returns d(sum(out^2))/d(params, x);
    forward(params, x) -> [batch, tokens, width].
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    head_dim = width // heads

    class Separate(nn.Module):
        @nn.compact
        def __call__(self, x):
            def proj(name, use_bias=True):
                return nn.DenseGeneral((heads, head_dim), use_bias=use_bias, name=name)(x)

            q, k, v = proj("query"), proj("key", use_bias=False), proj("value")
            out = jax.nn.dot_product_attention(q, k, v)
            return nn.DenseGeneral(width, axis=(-2, -1), name="out")(out)

    class Fused(nn.Module):
        @nn.compact
        def __call__(self, x):
            qkv = nn.DenseGeneral((3, heads, head_dim), name="qkv")(x)
            out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
            return nn.DenseGeneral(width, axis=(-2, -1), name="out")(out)

    class HeadsFirst(nn.Module):
        """Separate's parameters, but Q, K, V projected straight into [B, heads, N, d] and
        the attention written as einsums in that layout (no [B, N, heads, d] transposes)."""

        @nn.compact
        def __call__(self, x):
            def proj(name, use_bias=True):
                kernel = self.param(name, nn.initializers.lecun_normal(), (width, heads, head_dim))
                y = jnp.einsum("bnw,whd->bhnd", x, kernel)
                if use_bias:
                    y = (
                        y
                        + self.param(name + "_bias", nn.initializers.zeros, (heads, head_dim))[
                            None, :, None, :
                        ]
                    )
                return y

            q, k, v = proj("query"), proj("key", use_bias=False), proj("value")
            logits = jnp.einsum("bhnd,bhmd->bhnm", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
            out = jnp.einsum("bhnm,bhmd->bhnd", jax.nn.softmax(logits, axis=-1), v)
            kernel = self.param("out", nn.initializers.lecun_normal(), (heads, head_dim, width))
            return jnp.einsum("bhnd,hdw->bnw", out, kernel) + self.param(
                "out_bias", nn.initializers.zeros, (width,)
            )

    x = jax.random.normal(jax.random.key(0), (batch, tokens, width), jnp.float32)
    fns = {}
    for name, module in (
        ("separate", Separate()),
        ("fused", Fused()),
        ("heads_first", HeadsFirst()),
    ):
        params = module.init(jax.random.key(1), x)

        def loss(p, x, module=module):
            return jnp.sum(module.apply(p, x) ** 2)

        fns[name] = (jax.jit(jax.grad(loss, argnums=(0, 1))), params, x, module.apply)
    return fns


def ema_fn():
    """Jitted, donated EMA update: (ema, params, decay) -> d ema + (1 - d) params."""
    import jax

    def update(ema, params, decay):
        return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)

    return jax.jit(update, donate_argnums=(0,))


def time_calls(fn, reps: int) -> float:
    """Median seconds of `reps` calls of fn() (each blocked until ready)."""
    import jax

    jax.block_until_ready(fn())  # compile / warm
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child(args) -> dict:
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import jax
    import jax.numpy as jnp
    import numpy as np
    import train_throughput

    variant = "tiny" if args.quick else args.variant
    compiled, state, batch, flops, bsz, mesh, *_ = train_throughput.build_step(variant, args.set)
    from semantica_jax.models import uvit

    config = train_throughput.apply_overrides(train_throughput.config_for(variant), args.set)
    ucfg = uvit.UViTConfig.from_config(config.model, config.data.image_size, config.data.channels)
    side, width = ucfg.transformer_resolutions[-1], ucfg.transformer_widths[-1]
    blocks = ucfg.transformer_blocks[-1]
    attn = attention_fns(bsz, side * side, width, ucfg.heads)
    update = ema_fn()
    holder = {"state": state, "ema": jax.tree.map(jnp.copy, state.params)}

    def run_step():
        with jax.set_mesh(mesh):
            holder["state"], metrics = compiled(holder["state"], batch, {})
        return metrics

    def run_ema():
        with jax.set_mesh(mesh):
            holder["ema"] = update(holder["ema"], holder["state"].params, 0.999)
        return holder["ema"]

    calls = {
        "step": run_step,
        "ema_update": run_ema,
        "attention_separate": lambda: attn["separate"][0](*attn["separate"][1:3]),
        "attention_fused": lambda: attn["fused"][0](*attn["fused"][1:3]),
        "attention_heads_first": lambda: attn["heads_first"][0](*attn["heads_first"][1:3]),
    }
    rounds = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, fn in calls.items():
            rounds[name].append(time_calls(fn, args.reps))
    ms = {name: statistics.median(v) * 1e3 for name, v in rounds.items()}
    saving_qkv = (ms["attention_separate"] - ms["attention_fused"]) * blocks
    return {
        "variant": variant,
        "overrides": args.set,
        "batch_size": bsz,
        "attention_shape": [bsz, side * side, width, ucfg.heads],
        "self_attention_blocks": blocks,
        "num_params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(state.params))),
        "ms": {k: round(v, 3) for k, v in ms.items()},
        "ms_per_round": {k: [round(t * 1e3, 3) for t in v] for k, v in rounds.items()},
        "fused_qkv_saving_share_of_step": round(saving_qkv / ms["step"], 4),
        "heads_first_saving_share_of_step": round(
            (ms["attention_separate"] - ms["attention_heads_first"]) * blocks / ms["step"], 4
        ),
        "ema_share_of_step": round(ms["ema_update"] / ms["step"], 4),
        "rounds": args.rounds,
        "reps": args.reps,
    }


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, ROOT)
    from semantica_jax.utils import atomic_files, xla_cpu

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--variant", default="default", help="configs/mnist.py variant")
    p.add_argument("--set", action="append", default=[], help="config override a.b=v")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    p.add_argument("--reps", type=int, default=10, help="timed calls per variant per round")
    p.add_argument("--quick", action="store_true", help="tiny config, 1 round of 2 calls")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.rounds, args.reps = 1, 3
    if args.child:
        print(json.dumps(child(args)))
        return {}
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    xla_cpu.apply_defaults(env)
    cmd = [sys.executable, os.path.abspath(__file__), "--child"]
    cmd += sys.argv[1:] if argv is None else argv
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"step_levers child failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import paper_claims

    report.update(cpu=paper_claims.cpu_model(), xla_flags=env.get("XLA_FLAGS", ""))
    print(json.dumps(report, indent=2))
    os.makedirs(args.out, exist_ok=True)
    print("wrote", atomic_files.write_json(os.path.join(args.out, "step_levers.json"), report))
    return report


if __name__ == "__main__":
    main()
