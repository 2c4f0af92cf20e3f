"""Speed against the PyTorch peers, side by side, at equal parameter count.

  .venv/bin/python benchmarks/peers.py --out=benchmarks/results           # makes .peers-venv
  .venv/bin/python benchmarks/peers.py --peers_python=/tmp/peers-venv/bin/python --rounds=2

The peers are the two PyTorch diffusion baselines in `--peers_dir` (default
`../shared/peers`): diffusers `UNet2DModel` (15.7M parameters) and denoising-diffusion-pytorch
`Unet` at dim 64 (9.9M) and dim 32 (2.6M), each run by its own script (random 32x32x1
batches of 64, 2 threads, 3 warm-up + 20 timed AdamW steps, then 50-step DDIM sampling of
64 images). They live in a venv of their own (`--peers_python`; created as the peers' README
says when missing); the project never imports torch.

For each peer, ours is configured to the peer's parameter count within +-15% the way a user
widens the U-ViT: transformer width W, conv channels W/2, embedding width W, head width 32
(`matched_overrides`), at the peers' 32x32 images. Ours is timed through the real jitted
train step (`train_throughput.py --child`) and the real sampler (`sampler_throughput.py`,
DDIM, 50 steps, batch 64, unguided so that every image costs the same 50 network
evaluations as a peer's; with guidance ours costs twice that). Peer, our step and our
sampler alternate within each round, so that all see the same machine state; a figure is
the median over rounds. FLOPs: XLA's cost analysis for ours, torch's FlopCounterMode for the
peers (matmul, convolution and attention in both). `--peak_gflops` (or `--measure_peak`,
which builds and runs `fma_peak.c` on both cores) gives the % of peak.
Results: OUT/peers.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.train_throughput import _cpu_model  # noqa: E402

TOLERANCE = 0.15  # ours within +-15% of the peer's parameter count
TRAIN_STEPS, WARMUP, BATCH, SAMPLE_STEPS = 20, 3, 64, 50


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str
    script: str
    args: tuple[str, ...]


PEERS = (
    Peer("diffusers UNet2DModel", "peer_diffusers.py", ()),
    Peer("denoising-diffusion-pytorch Unet dim 64", "peer_ddpm_lucidrains.py", ("--dim", "64")),
    Peer("denoising-diffusion-pytorch Unet dim 32", "peer_ddpm_lucidrains.py", ("--dim", "32")),
)


def width_overrides(width: int) -> list[str]:
    """Our U-ViT widened to transformer width `width` at 32x32 images."""
    return [
        "data.image_size=32",
        f"model.transformer_width={width}",
        f"model.channels=({width // 2},)",
        f"model.emb_dim={width}",
        f"model.heads={max(1, width // 32)}",
    ]


def decoder_params(overrides: list[str]) -> int:
    """Parameter count of the default decoder with `overrides` (shapes only, no compute)."""
    import jax
    from clu import parameter_overview

    from benchmarks.train_throughput import apply_overrides
    from configs import mnist
    from semantica_jax import decoder
    from semantica_jax.models import uvit

    config = apply_overrides(mnist.get_config("default"), overrides)
    model = decoder.build_model(config)
    num_tokens = (config.data.image_size // config.encoder.patch_size) ** 2
    inputs = uvit.example_inputs(model.config, 1, num_tokens, config.encoder.width)
    shapes = jax.eval_shape(lambda *a: model.init(jax.random.PRNGKey(0), *a, train=False), *inputs)
    return parameter_overview.count_parameters(shapes["params"])


def matched_overrides(target: int) -> tuple[list[str], int]:
    """The width (a multiple of 32) whose parameter count is nearest `target`.

    Raises:
      ValueError: no width within TOLERANCE of the target.
    """
    best = min(
        ((w, decoder_params(width_overrides(w))) for w in range(64, 1537, 32)),
        key=lambda item: abs(item[1] - target),
    )
    if abs(best[1] - target) > TOLERANCE * target:
        raise ValueError(f"no U-ViT width within {TOLERANCE:.0%} of {target:,} parameters")
    return width_overrides(best[0]), best[1]


def ensure_peers_venv(python: str, peers_dir: str) -> str:
    """`python` if it exists, else a venv made at its place as the peers' README says."""
    if os.path.exists(python):
        return python
    venv = os.path.dirname(os.path.dirname(python))
    print(f"creating the peers' venv in {venv} (torch, diffusers; a few minutes) ...", flush=True)
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q"]
    for cmd in (
        [sys.executable, "-m", "venv", venv],
        pip + ["torch==2.13.0"],
        pip + ["-r", os.path.join(peers_dir, "requirements-peers.lock.txt")],
        [os.path.join(venv, "bin", "python"), "-m", "pip", "uninstall", "-y", "-q", "torchvision"],
    ):
        subprocess.run(cmd, check=True)
    return python


def run_peer(python: str, peers_dir: str, peer: Peer) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peer.jsonl")
        cmd = [python, os.path.join(peers_dir, peer.script), *peer.args, "--threads", "2"]
        proc = subprocess.run(cmd + ["--json", out], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{peer.script} failed:\n{proc.stderr[-3000:]}")
        return json.loads(open(out).read().strip().splitlines()[-1])


def _child_env() -> dict[str, str]:
    from semantica_jax.utils import xla_cpu

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = xla_cpu.with_defaults(env.get("XLA_FLAGS", ""))
    return env


def run_ours_train(overrides: list[str]) -> dict:
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "train_throughput.py"),
        "--child",
        f"--steps={TRAIN_STEPS}",
        f"--warmup={WARMUP}",
        *[f"--set={o}" for o in overrides],
    ]
    proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"train_throughput failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_ours_sampler(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "sampler_throughput.py"),
            f"--out={tmp}",
            "--name=s.json",
            "--kinds=ddim",
            f"--steps={SAMPLE_STEPS}",
            f"--batch={BATCH}",
            "--repeats=1",
            "--arms=cached",
            "--guidance=0",
            *[f"--set={o}" for o in overrides],
        ]
        proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise RuntimeError(f"sampler_throughput failed:\n{proc.stderr[-3000:]}")
        return json.load(open(os.path.join(tmp, "s.json")))


def measure_peak(peers_dir: str) -> float | None:
    """FP32 FMA peak of both cores in GFLOP/s from fma_peak.c (None without gcc)."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "fma_peak")
        src = os.path.join(peers_dir, "fma_peak.c")
        build = ["gcc", "-O2", "-march=native", "-fopenmp", src, "-o", exe]
        if subprocess.run(build, capture_output=True).returncode:
            return None
        env = dict(os.environ, OMP_NUM_THREADS="2")
        out = subprocess.run([exe], env=env, capture_output=True, text=True).stdout
    numbers = [
        float(t)
        for line in out.splitlines()
        if "GFLOP" in line
        for t in line.split()
        if t.replace(".", "", 1).isdigit()
    ]
    return max(numbers) if numbers else None


def summarize(
    peer: Peer,
    peer_runs: list[dict],
    train_runs: list[dict],
    sample_runs: list[dict],
    overrides: list[str],
    peak: float | None,
) -> dict:
    """Medians over rounds and the ours/peer ratios."""

    def med(values):
        return round(statistics.median(values), 2)

    peer_train = med([r["train_images_per_s"] for r in peer_runs])
    peer_sample = med([r["sample_images_per_s"] for r in peer_runs])
    ours_train = med([r["images_per_s"] for r in train_runs])
    ours_sample = med([r["rows"][0]["images_per_s"] for r in sample_runs])
    peer_gflops = med([r["achieved_train_gflops"] for r in peer_runs])
    ours_gflops = med([r["achieved_gflops_per_s"] for r in train_runs])
    row = {
        "peer": peer.name,
        "peer_params": peer_runs[0]["params"],
        "ours_params": train_runs[0]["num_params"],
        "ours_overrides": overrides,
        "peer_gflop_per_image": round(peer_runs[0]["train_flops_per_step"] / BATCH / 1e9, 3),
        "ours_gflop_per_image": round(train_runs[0]["flops_per_image"] / 1e9, 3),
        "peer_train_images_per_s": peer_train,
        "ours_train_images_per_s": ours_train,
        "peer_train_gflops": peer_gflops,
        "ours_train_gflops": ours_gflops,
        "peer_sample_images_per_s": peer_sample,
        "ours_sample_images_per_s": ours_sample,
        "train_ratio": round(ours_train / peer_train, 2),
        "sample_ratio": round(ours_sample / peer_sample, 2),
        "rounds": len(peer_runs),
        "per_round": {
            "peer_train": [r["train_images_per_s"] for r in peer_runs],
            "ours_train": [r["images_per_s"] for r in train_runs],
            "peer_sample": [r["sample_images_per_s"] for r in peer_runs],
            "ours_sample": [r["rows"][0]["images_per_s"] for r in sample_runs],
        },
    }
    if peak:
        row["peer_train_pct_of_peak"] = round(100 * peer_gflops / peak, 1)
        row["ours_train_pct_of_peak"] = round(100 * ours_gflops / peak, 1)
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| peer | params peer / ours | GFLOP/image (train) peer / ours | train images/s peer / "
        "ours (ratio) | train GFLOP/s peer / ours | 50-step DDIM images/s peer / ours (ratio) |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for r in rows:
        pct = ""
        if "ours_train_pct_of_peak" in r:
            pct = f" ({r['peer_train_pct_of_peak']}% / {r['ours_train_pct_of_peak']}% of peak)"
        lines.append(
            f"| {r['peer']} | {r['peer_params'] / 1e6:.2f}M / {r['ours_params'] / 1e6:.2f}M | "
            f"{r['peer_gflop_per_image']} / {r['ours_gflop_per_image']} | "
            f"{r['peer_train_images_per_s']} / {r['ours_train_images_per_s']} "
            f"(**{r['train_ratio']}x**) | "
            f"{r['peer_train_gflops']} / {r['ours_train_gflops']}{pct} | "
            f"{r['peer_sample_images_per_s']} / {r['ours_sample_images_per_s']} "
            f"(**{r['sample_ratio']}x**) |"
        )
    return head + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="directory for peers.json")
    parser.add_argument("--peers_dir", default=os.path.join(ROOT, "..", "shared", "peers"))
    parser.add_argument(
        "--peers_python",
        default=os.path.join(ROOT, ".peers-venv", "bin", "python"),
        help="python of the peers' venv (created there when missing)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats (median)")
    parser.add_argument("--only", default="", help="comma-separated peer indices (0,1,2)")
    parser.add_argument("--peak_gflops", type=float, default=0.0, help="FP32 peak, 2 cores")
    parser.add_argument("--measure_peak", action="store_true", help="run fma_peak.c for it")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.exit(2, "error: --rounds must be >= 1\n")
    if not os.path.isdir(args.peers_dir):
        parser.exit(2, f"error: no peers directory {args.peers_dir}; pass --peers_dir\n")
    python = ensure_peers_venv(args.peers_python, args.peers_dir)
    peak = args.peak_gflops or (measure_peak(args.peers_dir) if args.measure_peak else None)
    chosen = [PEERS[int(i)] for i in args.only.split(",")] if args.only else list(PEERS)
    rows = []
    for peer in chosen:
        peer_runs, train_runs, sample_runs, overrides = [], [], [], None
        for r in range(args.rounds):
            print(f"[{peer.name}] round {r + 1}/{args.rounds}: peer ...", flush=True)
            peer_runs.append(run_peer(python, args.peers_dir, peer))
            if overrides is None:
                overrides, count = matched_overrides(peer_runs[0]["params"])
                print(f"  ours matched: {count:,} parameters ({' '.join(overrides)})", flush=True)
            print("  ours: train step ...", flush=True)
            train_runs.append(run_ours_train(overrides))
            print("  ours: sampler ...", flush=True)
            sample_runs.append(run_ours_sampler(overrides))
        rows.append(summarize(peer, peer_runs, train_runs, sample_runs, overrides, peak))
        print(json.dumps(rows[-1], indent=1), flush=True)
    from semantica_jax.utils import atomic_files

    report = {
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "peak_gflops": peak},
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
        "settings": {
            "batch": BATCH,
            "train_steps": TRAIN_STEPS,
            "warmup": WARMUP,
            "sample_steps": SAMPLE_STEPS,
            "image_size": 32,
            "ours_guidance": "off (50 network evaluations per image, as the peers)",
        },
        "rows": rows,
    }
    path = atomic_files.write_json(os.path.join(args.out, "peers.json"), report)
    print(table(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
