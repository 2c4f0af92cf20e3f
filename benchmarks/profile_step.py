"""Where the train step's time goes: per-op time of the compiled step, by kind.

  .venv/bin/python benchmarks/profile_step.py --out=benchmarks/results
  .venv/bin/python benchmarks/profile_step.py --xla_flags=--xla_cpu_experimental_ynn_fusion_type=dot

Builds the real jitted train step of a config (as benchmarks/train_throughput.py does),
traces `--steps` steps with `jax.profiler`, reads the trace back with
`jax.profiler.ProfileData` and sums the time of every XLA op (thunk) event by name. Each
op is put in one kind by its HLO name: convolution, dot (matmuls: dense layers,
attention), ynn/onednn library fusions, reduce (norms, losses), copy/transpose, and
loop fusions (elementwise: activations, FiLM, optimizer and EMA updates, noising). The
HLO module text is searched for each fusion's root opcode, so a fusion counts as what it
computes. Results: OUT/profile_step.json (kinds with ms per step and share; top ops).
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
from train_throughput import add_xla_defaults_flag, build_step  # noqa: E402


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


def child(args) -> dict:
    sys.path.insert(0, ROOT)
    import jax

    compiled, state, batch, flops, bsz, mesh, *_ = build_step(args.variant, args.set)
    kinds = op_kinds(compiled.as_text())
    with jax.set_mesh(mesh):
        for _ in range(2):
            state, metrics = compiled(state, batch, {})
        jax.block_until_ready(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            with jax.profiler.trace(tmp):
                for _ in range(args.steps):
                    state, metrics = compiled(state, batch, {})
                jax.block_until_ready(metrics)
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
                if name.startswith(("$", "Thunk", "ExecuteSharded", "PjRt")) or " " in name:
                    continue
                totals[name] += event.duration_ns
                counts[name] += 1
    per_step = {k: v / args.steps / 1e6 for k, v in totals.items()}
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, ms in per_step.items():
        by_kind[kinds.get(name, "runtime (not an HLO op)")] += ms
    total = sum(by_kind.values())
    top = sorted(per_step.items(), key=lambda kv: -kv[1])[: args.top]
    top = [(f"{n} [{kinds.get(n, 'runtime')}]", ms) for n, ms in top]
    return {
        "variant": args.variant,
        "overrides": args.set,
        "batch_size": bsz,
        "flops_per_step": flops,
        "op_ms_per_step_total": round(total, 2),
        "kinds": {
            k: {"ms_per_step": round(v, 2), "share": round(v / total, 3)}
            for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
        },
        "top_ops": [{"op": n, "ms_per_step": round(ms, 3)} for n, ms in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON")
    parser.add_argument("--variant", default="default", help="configs/mnist.py variant")
    parser.add_argument("--steps", type=int, default=5, help="traced steps")
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
    print("wrote", atomic_files.write_json(os.path.join(args.out, "profile_step.json"), report))


if __name__ == "__main__":
    main()
