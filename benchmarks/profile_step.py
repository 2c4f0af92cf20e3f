"""Where the train step's (or the sampler's) time goes: per-op time of the compiled call, by kind.

  .venv/bin/python benchmarks/profile_step.py --out=benchmarks/results
  .venv/bin/python benchmarks/profile_step.py --xla_flags=--xla_cpu_experimental_ynn_fusion_type=dot
  .venv/bin/python benchmarks/profile_step.py --what=sampler --steps=3 --out=benchmarks/results
  XLA_FLAGS=--xla_force_host_platform_device_count=2 .venv/bin/python \
      benchmarks/profile_step.py --what=sampler --steps=3 --name=profile_sampler_2dev.json

Builds the real jitted train step of a config (as benchmarks/train_throughput.py does), or
with `--what=sampler` the config's guided sampler at `eval.batch_size` on random weights
(as benchmarks/sampler_throughput.py does; with forced host devices the batch is sharded
over them, as in `main --mode=eval`), traces `--steps` calls with `jax.profiler`, reads
the trace back with `jax.profiler.ProfileData` and sums the time of every XLA op (thunk)
event by name. Each op is put in one kind by its HLO name: convolution, dot (matmuls:
dense layers, attention), ynn/onednn library fusions, reduce (norms, losses), copy/transpose, and
loop fusions (elementwise: activations, FiLM, optimizer and EMA updates, noising). The
HLO module text is searched for each fusion's root opcode, so a fusion counts as what it
computes. Results: OUT/profile_step.json or OUT/profile_sampler.json (kinds with ms per
call and share; top ops).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from train_throughput import (  # noqa: E402
    add_xla_defaults_flag,
    apply_overrides,
    build_step,
    config_for,
)


def op_kinds(hlo_text: str) -> dict[str, str]:
    """{instruction name: kind} for every instruction of an optimised HLO module.

    A fusion is classed by what its called computation contains, in this order:
    convolution, dot (dense layers, attention), reduce (norms, softmax sums, losses,
    grad norm), transpose/copy (layout changes), else elementwise.
    """
    bodies: dict[str, str] = {}
    current = None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            bodies[current] = ""
        elif current is not None:
            bodies[current] += line + "\n"
    kinds = {}
    for line in hlo_text.splitlines():
        m = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\(", line)
        if not m:
            continue
        name, opcode = m.groups()
        called = re.search(r"calls=%?([\w.\-]+)", line)
        text = opcode + " " + (bodies.get(called.group(1), "") if called else "")
        for kind, pattern in KINDS:
            if re.search(pattern, text):
                kinds[name] = kind
                break
        else:
            kinds[name] = "elementwise"
    return kinds


KINDS = (
    ("convolution", r"\bconvolution\("),
    ("dot (dense, attention)", r"\bdot\("),
    ("reduce (norms, softmax, losses)", r"\breduce(-window)?\("),
    ("transpose / copy", r"\b(transpose|copy)\("),
)


def _step_call(args):
    """(compiled, call, mesh, facts) of the config's real train step; call() runs one."""
    compiled, state, batch, flops, bsz, mesh, *_ = build_step(args.variant, args.set)
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], batch, {})
        return metrics

    return compiled, call, mesh, {"batch_size": bsz, "flops_per_call": flops}


def _sampler_call(args):
    """(compiled, call, mesh, facts) of the config's guided sampler (random weights, as
    benchmarks/sampler_throughput.py): one call samples a batch."""
    import jax
    from sampler_throughput import config_sampler, random_cond, random_decoder

    from semantica_jax import decoder
    from semantica_jax.utils import parallel

    config = apply_overrides(config_for(args.variant), args.set)
    bsz = int(args.batch or config.eval.batch_size)
    mesh = parallel.make_mesh(1)
    parallel.check_batch_size(bsz, mesh, "batch (--batch)")
    model, params, token_shape = random_decoder(config)
    params = jax.device_put(params, parallel.replicated(mesh))
    cond = random_cond(bsz, token_shape, mesh)
    guidance = float(config.sampler.guidance)
    sampler = config_sampler(
        config,
        decoder.DecoderApply(model),
        bsz,
        kind=config.sampler.kind,
        steps=config.sampler.num_steps,
        guided=guidance != 0,
    )
    key = jax.random.PRNGKey(1)
    compiled = jax.jit(sampler).lower(params, cond, key, guidance).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    facts = {
        "batch_size": bsz,
        "sampler": f"{config.sampler.kind}, {config.sampler.num_steps} steps, w = {guidance}",
        "devices": mesh.size,
        # XLA's cost analysis counts the reverse-step loop's body once.
        "flops_per_reverse_step": float(cost.get("flops", float("nan"))) * mesh.size,
    }
    return compiled, lambda: compiled(params, cond, key, guidance), mesh, facts


def child(args) -> dict:
    sys.path.insert(0, ROOT)
    import jax

    compiled, call, mesh, facts = (_sampler_call if args.what == "sampler" else _step_call)(args)
    kinds = op_kinds(compiled.as_text())
    with jax.set_mesh(mesh):
        for _ in range(2):
            out = call()
        jax.block_until_ready(out)
        with tempfile.TemporaryDirectory() as tmp:
            with jax.profiler.trace(tmp):
                for _ in range(args.steps):
                    out = call()
                jax.block_until_ready(out)
            path = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)[0]
            profile = jax.profiler.ProfileData.from_file(path)
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    for plane in profile.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = event.name
                # Wrappers around the ops (dispatch, the whole jitted call), not ops.
                wrapper = ("$", "Thunk", "ExecuteSharded", "PjRt", "PjitFunction")
                if name.startswith(wrapper) or " " in name:
                    continue
                totals[name] += event.duration_ns
                counts[name] += 1
    per_call = {k: v / args.steps / 1e6 for k, v in totals.items()}
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, ms in per_call.items():
        by_kind[kinds.get(name, "runtime (not an HLO op)")] += ms
    total = sum(by_kind.values())
    top = sorted(per_call.items(), key=lambda kv: -kv[1])[: args.top]
    top = [(f"{n} [{kinds.get(n, 'runtime')}]", ms) for n, ms in top]
    return {
        "what": args.what,
        "variant": args.variant,
        "overrides": args.set,
        **facts,
        "op_ms_per_call_total": round(total, 2),
        "kinds": {
            k: {"ms_per_call": round(v, 2), "share": round(v / total, 3)}
            for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
        },
        "top_ops": [{"op": n, "ms_per_call": round(ms, 3)} for n, ms in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON")
    parser.add_argument("--variant", default="default", help="configs/mnist.py variant")
    parser.add_argument(
        "--what", choices=("step", "sampler"), default="step", help="the train step or the sampler"
    )
    parser.add_argument(
        "--steps", type=int, default=5, help="traced calls (steps or sampler calls)"
    )
    parser.add_argument("--batch", type=int, default=0, help="sampler batch; 0 = eval.batch_size")
    parser.add_argument("--name", default="", help="result file name (default profile_WHAT.json)")
    parser.add_argument("--top", type=int, default=25, help="ops listed by time")
    parser.add_argument("--xla_flags", default="", help="extra XLA_FLAGS")
    add_xla_defaults_flag(parser)
    parser.add_argument("--set", action="append", default=[], help="config override a.b=v")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    sys.path.insert(0, ROOT)
    from semantica_jax.utils import atomic_files, xla_cpu

    if not args.no_xla_defaults:
        xla_cpu.apply_defaults(env)
    cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"profile child failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["xla_flags"] = env["XLA_FLAGS"]
    print(json.dumps(report, indent=2))
    name = args.name or f"profile_{args.what}.json"
    print("wrote", atomic_files.write_json(os.path.join(args.out, name), report))


if __name__ == "__main__":
    main()
