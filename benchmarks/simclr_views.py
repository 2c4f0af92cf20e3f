"""How the SimCLR views' jitter sets the label-free encoder's quality.

  .venv/bin/python benchmarks/simclr_views.py --out=benchmarks/results   # ~10 min a setting here

The label-free generator of the augmentation benchmark is only as good as its SimCLR
encoder (its k-means episodes pair different digits when the CLS does not know digits). For
each named setting of `config.encoder.aug_*` (SETTINGS), this trains the `:unsupervised`
encoder through the real encoder job (`train_encoder.run_encoder_job`, into
OUT/simclr_views/<setting>; a finished setting is reused, so the command resumes) and reads
its evaluation: the k-NN (k = 5) label accuracy of the CLS on the test split against the
train split (with a 95% binomial interval over the test queries), and the ROC AUC of same-
vs different-digit cosines. Labels only score; SimCLR never sees them.
Writes OUT/simclr_views.json and OUT/simclr_views.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# name -> the config.encoder.aug_* values that differ from the default views
# (rotation ±15°, scale ±10%, shift ±10%, no elastic, pixel noise 0.1).
SETTINGS: dict[str, dict[str, float]] = {
    "default": {},
    "elastic, rotation 20, scale 0.2": dict(aug_elastic=34.0, aug_rotation_deg=20.0, aug_scale=0.2),
    "elastic, rotation 30, scale 0.3, shift 0.15, noise 0.2": dict(
        aug_elastic=34.0, aug_rotation_deg=30.0, aug_scale=0.3, aug_shift=0.15, aug_noise=0.2
    ),
}


def setting_dir(name: str) -> str:
    """A file-system name for a setting: 'elastic, rotation 20' -> 'elastic_rotation_20'."""
    return "_".join("".join(c if c.isalnum() or c == "." else " " for c in name).split())


def measure(config, workdir: str) -> dict[str, Any]:
    """The encoder evaluation of `config` in `workdir`: read back when it is already there
    for this encoder (its cache key), else trained (or reused) and evaluated by the job."""
    from semantica_jax import train_encoder
    from semantica_jax.encoder import bundle
    from semantica_jax.utils import atomic_files

    path = os.path.join(workdir, "encoder_eval.json")
    start = time.perf_counter()
    report = atomic_files.read_json(path)  # None when missing
    if report is None or report.get("key") != bundle.encoder_key(config):
        report = train_encoder.run_encoder_job(config, workdir)
    cosine = report["cosine"]
    accuracy, n = report["knn5_accuracy"], report["query_size"]
    half = 1.96 * math.sqrt(accuracy * (1.0 - accuracy) / n)  # normal binomial interval
    return {
        "knn5_accuracy": accuracy,
        "knn5_interval": [max(0.0, accuracy - half), min(1.0, accuracy + half)],
        "queries": n,
        "auc_same_vs_different": cosine["auc_same_vs_different"],
        "same_cosine_median": cosine["same"]["quantiles"]["q50"],
        "different_cosine_median": cosine["different"]["quantiles"]["q50"],
        "encoder_steps": int(config.encoder.num_steps),
        "train_seconds": report["train"].get("train_seconds"),
        "seconds_this_call": round(time.perf_counter() - start, 1),
    }


def table(result: dict[str, Any]) -> str:
    """The markdown table of a result."""
    lines = [
        "| views (`config.encoder.aug_*`) | k-NN (k = 5) test accuracy [95%] "
        "| ROC AUC same vs different digit | median cosine same / different |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in result["rows"].items():
        changes = ", ".join(f"{k}={v:g}" for k, v in row["changes"].items()) or "defaults"
        low, high = row["knn5_interval"]
        lines.append(
            f"| {name} ({changes}) | {row['knn5_accuracy']:.3f} [{low:.3f}, {high:.3f}] | "
            f"{row['auc_same_vs_different']:.3f} | {row['same_cosine_median']:.3f} / "
            f"{row['different_cosine_median']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=";".join(SETTINGS), help="SETTINGS names, ';'-separated")
    p.add_argument("--variant", default="unsupervised", help="configs/mnist.py variant")
    p.add_argument("--steps", type=int, default=0, help="encoder steps (0: the variant's)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    from configs import mnist

    chosen = [s.strip() for s in args.settings.split(";") if s.strip()]
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown or not chosen:
        p.exit(2, f"error: unknown --settings {unknown}; choose from {list(SETTINGS)}\n")
    if args.variant not in mnist.VARIANTS or args.steps < 0:
        p.exit(2, f"error: --variant must be one of {mnist.VARIANTS} and --steps >= 0\n")

    import paper_claims

    from semantica_jax.encoder import objectives
    from semantica_jax.utils import atomic_files

    result: dict[str, Any] = {"variant": args.variant, "rows": {}}
    for name in chosen:
        config = mnist.get_config(args.variant)
        config.encoder.objective = "simclr"  # the views are SimCLR's, whatever the variant
        config.encoder.update(SETTINGS[name])
        if args.steps:
            config.encoder.num_steps = args.steps
        objectives.view_jitter(config.encoder)  # bad settings fail up front
        workdir = os.path.join(os.path.abspath(args.out), "simclr_views", setting_dir(name))
        row = measure(config, workdir)
        row["changes"] = SETTINGS[name]
        result["rows"][name] = row
        print(f"{name}: k-NN {row['knn5_accuracy']:.3f}, AUC {row['auc_same_vs_different']:.3f}")
    result.update(
        cpu=paper_claims.cpu_model(),
        git_revision=paper_claims.git_revision(),
        command="python benchmarks/simclr_views.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    )
    atomic_files.write_json(os.path.join(args.out, "simclr_views.json"), result)
    atomic_files.write_text(os.path.join(args.out, "simclr_views.md"), table(result))
    return result


if __name__ == "__main__":
    from semantica_jax.utils import xla_cpu

    xla_cpu.apply_defaults(os.environ)  # before JAX creates its backend
    main()
