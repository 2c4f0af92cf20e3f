"""The papers' claims, re-measured on MNIST, each with numbers, 95% intervals and a verdict.

  .venv/bin/python benchmarks/paper_claims.py --claim=all --out=benchmarks/results/claims
  .venv/bin/python benchmarks/paper_claims.py --claim=guidance --num=500      # one claim
  .venv/bin/python benchmarks/paper_claims.py --claim=reconstruction --steps=3500 --seeds=2

A claim is a declarative `Claim`: arms (a `configs/mnist.py` variant plus overrides, and
how to evaluate it), comparisons (metric, arm a, arm b, the direction the paper expects) and
its source in the paper. For every arm the harness trains through the real
`train.train_and_evaluate` into `OUT/workdirs/<run key>` (a finished run is reused, an
interrupted one resumes from its checkpoint; arms that differ only in how they are
evaluated share one run), measures it with the real evaluation code (`evaluate.Generator`,
`evaluate.protocol`, the cached feature net) into `OUT/measurements/<key>.json` (reused
on a rerun), and writes `OUT/NAME.json` (every arm's metrics with N and 95% bootstrap
intervals, seeds, steps, wall times, git revision, CPU) and `OUT/NAME.png`. Then
`docs/paper_claims.md` is rewritten from every `OUT/*.json` present.

Verdicts follow from the intervals only: a comparison *holds* when the two 95% intervals
are separated in the expected direction, is *opposite* when separated the other way, and
*overlaps* otherwise. A claim is confirmed when every comparison holds, refuted when every
comparison that separates is opposite, and inconclusive otherwise (overlap, or mixed).

`--tiny` builds every arm on `configs/mnist.py:tiny` (the variant's differences from the
default applied on top): seconds per arm, for the test.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "claims")
TABLE = os.path.join(ROOT, "docs", "paper_claims.md")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One configuration to train (variant + overrides) and one way to evaluate it.

    Attributes:
      name: label in tables and plots.
      variant: `configs/mnist.py` variant.
      overrides: (dotted field, value) pairs applied after the variant (training).
      guidance: classifier-free guidance w of the evaluation (None: the config's).
      eval_classes: labels the evaluation conditions on (empty: all).
      at_fractions: checkpoints to measure, as fractions of the run's steps (a learning
        curve); the last one is the arm's value in comparisons.
      copies: also measure copy rate and distances to the conditioning image.
    """

    name: str
    variant: str = "default"
    overrides: tuple[tuple[str, Any], ...] = ()
    guidance: float | None = None
    eval_classes: tuple[int, ...] = ()
    at_fractions: tuple[float, ...] = (1.0,)
    copies: bool = False


@dataclasses.dataclass(frozen=True)
class Comparison:
    """`metric` of arm `a` is expected `higher` or `lower` than that of arm `b`."""

    metric: str
    a: str
    b: str
    expect: str


@dataclasses.dataclass(frozen=True)
class Claim:
    name: str
    source: str
    statement: str
    arms: tuple[Arm, ...]
    comparisons: tuple[Comparison, ...]
    plot_metric: str
    # Show each arm's training pairs (kept share, off-topic share, the cosine histogram
    # with the filter's thresholds) next to the metrics.
    pairs: bool = False
    # Decoder steps of every arm unless --steps says otherwise (the published budget).
    steps: int = 1500


def _guidance_arms() -> tuple[Arm, ...]:
    return tuple(Arm(f"w={w:g}", guidance=w) for w in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0))


def _pages(rate: float, filtering: bool) -> Arm:
    overrides = (("episodes.page_offtopic", rate), ("episodes.filter", filtering))
    return Arm(
        f"{int(rate * 100)}% off-topic, filter {'on' if filtering else 'off'}", "pages", overrides
    )


_SEEN, _UNSEEN = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
_SIM = (("train.sim_loss_weight", 1.0),)

CLAIMS = (
    Claim(
        "reconstruction",
        "Semantica §4, Fig. 2",
        "Training on reconstruction (target = conditioning image) collapses to near-copies: "
        "higher copy rate, lower diversity and one-shot recall than training on pairs.",
        (Arm("pairs (default)", copies=True), Arm("reconstruction", "reconstruction", copies=True)),
        (
            Comparison("copy_rate", "reconstruction", "pairs (default)", "higher"),
            Comparison("one_shot.recall", "pairs (default)", "reconstruction", "higher"),
            Comparison("one_shot.diversity", "pairs (default)", "reconstruction", "higher"),
        ),
        "copy_rate",
        steps=3500,
    ),
    Claim(
        "guidance",
        "Semantica §7, Fig. 3",
        "Classifier-free guidance lowers one-shot recall while full-set recall rises.",
        _guidance_arms(),
        (
            Comparison("one_shot.recall", "w=0", "w=4", "higher"),
            Comparison("full.recall", "w=4", "w=0", "higher"),
        ),
        "one_shot.recall",
        steps=3500,
    ),
    Claim(
        "conditioning",
        "Semantica App. D, Fig. 9",
        "Cross-attention conditioning beats CLS-FiLM conditioning (learning curves).",
        tuple(
            Arm(name, variant, at_fractions=(1 / 3, 2 / 3, 1.0))
            for name, variant in (
                ("cross-attention", "cross_only"),
                ("FiLM", "film"),
                ("both (default)", "default"),
            )
        ),
        (Comparison("one_shot.fid", "cross-attention", "FiLM", "lower"),),
        "one_shot.fid",
    ),
    Claim(
        "filtering",
        "Semantica App. C",
        "Filtering pairs by encoder similarity (absolute cosine thresholds) improves quality "
        "when episodes contain off-topic images.",
        (_pages(0.25, True), _pages(0.25, False), _pages(0.5, True), _pages(0.5, False)),
        (
            Comparison(
                "one_shot.fid", "25% off-topic, filter on", "25% off-topic, filter off", "lower"
            ),
            Comparison(
                "one_shot.fid", "50% off-topic, filter on", "50% off-topic, filter off", "lower"
            ),
        ),
        "one_shot.fid",
        pairs=True,
    ),
    Claim(
        "unseen",
        "Semantica abstract; §8.3, Table 2",
        "Label-grouped pairs (LG) win in distribution and lose out of distribution against "
        "label-free (k-means) pairs, for a decoder trained on digits 0-4 only.",
        (
            Arm("LG, digits 0-4", "seen_digits", eval_classes=_SEEN),
            Arm("LG, digits 5-9", "seen_digits", eval_classes=_UNSEEN),
            Arm("k-means, digits 0-4", "seen_digits_kmeans", eval_classes=_SEEN),
            Arm("k-means, digits 5-9", "seen_digits_kmeans", eval_classes=_UNSEEN),
        ),
        (
            Comparison("one_shot.fid", "LG, digits 0-4", "k-means, digits 0-4", "lower"),
            Comparison("one_shot.fid", "LG, digits 5-9", "k-means, digits 5-9", "higher"),
        ),
        "one_shot.fid",
    ),
    Claim(
        "scaling",
        "Semantica Table 1",
        "A larger decoder (about 4x the parameters) and a stronger encoder give better FID "
        "at equal decoder steps.",
        (Arm("default"), Arm("decoder 4x", "large"), Arm("weak encoder", "weak_encoder")),
        (
            Comparison("one_shot.fid", "decoder 4x", "default", "lower"),
            Comparison("one_shot.fid", "default", "weak encoder", "lower"),
        ),
        "one_shot.fid",
    ),
    Claim(
        "similarity_loss",
        "seed 000, Table 1 (FID 32.17 -> 31.61)",
        "Adding the similarity loss (lambda = 1) lowers FID, in the paper's T = 500 "
        "linear-beta eps-prediction setting and in ours.",
        (
            Arm("ddpm500", "ddpm500"),
            Arm("ddpm500 + sim", "ddpm500", _SIM),
            Arm("default"),
            Arm("default + sim", "default", _SIM),
        ),
        (
            Comparison("full.fid", "ddpm500 + sim", "ddpm500", "lower"),
            Comparison("full.fid", "default + sim", "default", "lower"),
        ),
        "full.fid",
    ),
)
BY_NAME = {c.name: c for c in CLAIMS}


# --- configs and runs --------------------------------------------------------------------


def _set(config, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


# What every arm trains with whatever the default becomes: the claims were measured with
# Semantica's eps loss (the default moved to Min-SNR-5 later). Pinned, the arms keep their
# run keys, so the committed measurements are still found.
CLAIMS_RECIPE = (("diffusion.loss", "eps"),)


def arm_config(arm: Arm, *, steps: int, seed: int, tiny: bool, cache_dir: str):
    """The training config of an arm: its variant (on the tiny base with `tiny`) with
    CLAIMS_RECIPE, its overrides, `steps` decoder steps and `seed`."""
    from configs import mnist
    from semantica_jax.workdir import flat_config

    if tiny:
        # The variant's differences from the default, applied on top of the tiny config.
        config = mnist.get_config("tiny")
        default = flat_config(mnist.get_config("default").to_dict())
        for key, value in flat_config(mnist.get_config(arm.variant).to_dict()).items():
            if key != "variant" and value != default[key]:
                _set(config, key, value)
    else:
        config = mnist.get_config(arm.variant)
    for key, value in CLAIMS_RECIPE + tuple(arm.overrides):
        _set(config, key, value)
    config.seed = int(seed)
    config.train.num_steps = int(steps)
    config.train.checkpoint_every = max(1, int(steps) // 3)
    config.train.keep_checkpoints = 4
    # One sample grid at the end (none on the tiny base: its compile would dominate).
    config.train.eval_every = 0 if tiny else int(steps)
    if cache_dir:
        config.cache_dir = cache_dir
    return config


def run_key(config) -> str:
    """Identity of a training run: what changes the trained weights, as a short name."""
    from semantica_jax.workdir import flat_config, stable_fields

    # Not what the weights depend on: evaluation knobs and where this machine keeps caches.
    flat = stable_fields(flat_config(config.to_dict()))
    blob = json.dumps(
        {k: v for k, v in flat.items() if not k.startswith(("eval.", "cache_dir"))},
        sort_keys=True,
        default=list,
    )
    return (
        f"{config.variant}-s{config.seed}-n{config.train.num_steps}-"
        + hashlib.sha256(blob.encode()).hexdigest()[:8]
    )


def _is_plain_default(arm: Arm, seed: int) -> bool:
    # Only a final-checkpoint arm: a reused run has its own checkpoint schedule.
    return (
        arm.variant == "default"
        and not arm.overrides
        and seed == 0
        and (arm.at_fractions == (1.0,))
    )


def default_run_steps(path: str) -> int:
    """The final step of the finished default run (seed 0) given by --default_workdir.

    Raises:
      ValueError: with the reason, when it is not one.
    """
    from semantica_jax import errors
    from semantica_jax import workdir as run_dir

    try:
        config = run_dir.load_config(path)
        with open(run_dir.summary_path(path)) as f:
            final = json.load(f).get("final_step")
    except (OSError, ValueError, errors.UserError) as err:
        raise ValueError(f"it is not a finished run ({err})") from err
    if config.variant != "default" or config.seed != 0 or not isinstance(final, int):
        raise ValueError(
            f"it is variant {config.variant!r}, seed {config.seed}, final step {final}; "
            "it must be a finished default run, seed 0"
        )
    return final


def recipe_differences(path: str) -> list[str]:
    """The CLAIMS_RECIPE fields in which the run at PATH differs, as 'field=value' (its
    value); [] when its weights can stand in for the default arm's."""
    from semantica_jax import workdir as run_dir

    flat = run_dir.flat_config(run_dir.load_config(path).to_dict())
    return [f"{key}={flat.get(key)!r}" for key, value in CLAIMS_RECIPE if flat.get(key) != value]


def train_arm(config, out: str) -> tuple[str, float]:
    """Trains (or resumes, or reuses) the arm's run; returns (workdir, seconds spent)."""
    from semantica_jax import train
    from semantica_jax import workdir as run_dir

    workdir = os.path.join(out, "workdirs", run_key(config))
    summary = run_dir.summary_path(workdir)
    if os.path.isfile(summary):
        with open(summary) as f:
            if json.load(f).get("final_step", -1) >= config.train.num_steps:
                return workdir, 0.0  # finished: nothing to load or compile
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    return workdir, time.perf_counter() - start


# --- measurement -------------------------------------------------------------------------


def measure(
    config,
    workdir: str,
    step: int,
    *,
    num: int,
    guidance: float,
    copies: bool,
    classes: tuple[int, ...],
    seed: int,
) -> dict[str, Any]:
    """Full-set and one-shot metrics of one checkpoint with 95% bootstrap intervals."""
    import jax
    import numpy as np

    from semantica_jax import assets, evaluate
    from semantica_jax import workdir as run_dir
    from semantica_jax.metrics import bootstrap, features, fewshot, variation
    from semantica_jax.utils import image_io, parallel

    params, step = run_dir.restore_ema_params(workdir, step)
    test = assets.embedded_split(config, assets.load_encoder(config), config.data.eval_split)
    feat_bundle = assets.feature_net(config)
    feature_fn = features.feature_fn(feat_bundle)
    subset = evaluate.balanced_subset(test.labels, num, config.seed, "--num", classes)
    labels = test.labels[subset]
    real_feats = fewshot.compute_features(feature_fn, image_io.to_model_range(test.images[subset]))
    rest = np.setdiff1d(np.arange(len(test.labels)), subset)
    rest_feats = fewshot.compute_features(feature_fn, image_io.to_model_range(test.images[rest]))
    floor = variation.real_floor(
        real_feats, min(num, len(rest)), seed, other=rest_feats, pr_k=int(config.eval.pr_k)
    )
    gen = evaluate.Generator(config, params, test, parallel.make_mesh(config.mesh.fsdp))
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 7)
    pr_k = int(config.eval.pr_k)
    result: dict[str, Any] = {
        "cpu": cpu_model(),  # where this measurement ran (claims mix sessions and machines)
        "step": int(step),
        "num_images": int(num),
        "guidance": float(guidance),
        "classes": list(classes),
        "real_floor_fid": float(floor["fid"]),
    }
    for name, k in (("full", num), ("one_shot", len(np.unique(labels)))):
        _, cond_pos, samples, feats = evaluate.protocol(
            gen,
            real_feats,
            subset,
            labels,
            k,
            guidance,
            jax.random.fold_in(rng, k),
            feature_fn,
            config.seed,
            pr_k,
        )
        block = {"fid": bootstrap.fid_interval(real_feats, feats, seed=seed)}
        block.update(bootstrap.precision_recall_intervals(real_feats, feats, pr_k, seed=seed))
        per = len(samples) // len(cond_pos)
        cond_labels = np.repeat(labels[cond_pos], per)
        correct = features.classify(feat_bundle, samples) == cond_labels
        block["class_consistency"] = bootstrap.mean_interval(correct, seed=seed)
        if per > 1:  # the full set has one sample per conditioning image
            grouped = feats.reshape(len(cond_pos), per, -1)
            block["diversity"] = bootstrap.mean_interval(
                variation.per_sample_diversity(grouped), seed=seed
            )
        result[name] = block
        if copies and name == "one_shot":
            result.update(
                _copies(
                    config, test, subset[np.repeat(cond_pos, per)], samples, feats, feature_fn, seed
                )
            )
    return result


def _copies(config, test, cond_index, samples, feats, feature_fn, seed) -> dict[str, Any]:
    """Copy rate (nearest train+test image in feature space is the sample's own
    conditioning image) and distances to the conditioning image, with intervals."""
    import numpy as np

    from semantica_jax import assets
    from semantica_jax.metrics import bootstrap, fewshot
    from semantica_jax.utils import image_io

    train_images, _ = assets.load_split(config, config.data.train_split)
    pool = np.concatenate([test.images, train_images])  # test rows first: index = test index
    pool_feats = fewshot.compute_features(feature_fn, image_io.to_model_range(pool))
    cond = image_io.to_model_range(test.images[cond_index])
    nearest = np.empty(len(feats), np.int64)
    pool_sq = np.sum(pool_feats**2, axis=1)
    for lo in range(0, len(feats), 500):
        d = pool_sq[None] - 2.0 * feats[lo : lo + 500] @ pool_feats.T
        nearest[lo : lo + 500] = np.argmin(d, axis=1)
    pixel = np.sqrt(np.mean((samples - cond) ** 2, axis=(1, 2, 3)))
    feature = np.linalg.norm(feats - pool_feats[cond_index], axis=1)
    return {
        "copy_rate": bootstrap.mean_interval(nearest == cond_index, seed=seed),
        "dist_pixel": bootstrap.mean_interval(pixel, seed=seed),
        "dist_feature": bootstrap.mean_interval(feature, seed=seed),
    }


PAIR_FIELDS = (
    "num_kept",
    "kept_fraction",
    "low_cosine",
    "high_cosine",
    "offtopic_pair_fraction_before",
    "offtopic_pair_fraction_after",
    "label_mismatch_fraction_before",
    "label_mismatch_fraction_after",
    "histogram",
)


def pair_statistics(workdir: str, copy: str) -> dict[str, Any]:
    """The arm's training pairs (`WORKDIR/pair_similarity.json`: counts, thresholds and the
    cosine histogram of the candidate pairs), kept at `copy` so that they outlive the
    git-ignored run; {} for a run without one. Returns PAIR_FIELDS."""
    from semantica_jax.utils import atomic_files

    stats = atomic_files.read_json(os.path.join(workdir, "pair_similarity.json"))
    if stats is not None and not os.path.isfile(copy):
        _write_json(copy, stats)
    stats = stats if stats is not None else atomic_files.read_json(copy)
    return {k: stats.get(k) for k in PAIR_FIELDS} if stats is not None else {}


def eval_guidance(arm: Arm, config) -> float:
    """The guidance w an arm is evaluated at (the config's unless the arm sets one)."""
    return float(config.sampler.guidance if arm.guidance is None else arm.guidance)


def measurement_keys(arm: Arm, config, *, steps: int, num: int) -> list[tuple[int, str]]:
    """(checkpoint step, measurement name) of each point of an arm's run, last one last."""
    guidance = eval_guidance(arm, config)
    classes = "".join(map(str, arm.eval_classes))
    every = config.train.checkpoint_every
    keys = []
    for fraction in arm.at_fractions:
        step = max(1, round(fraction * steps / every) * every) if fraction < 1 else steps
        # v2: FID intervals debiased (metrics/bootstrap.fid_interval).
        key = f"{run_key(config)}-step{step}-n{num}-w{guidance:g}-c{classes}-v2"
        keys.append((step, key + ("-copies" if arm.copies else "")))
    return keys


def measure_arm(claim: Claim, arm: Arm, args, steps: int) -> list[dict[str, Any]]:
    """Trains and measures one arm for every seed; returns one record per (seed, step)."""
    records = []
    for seed in range(args.seeds):
        config = arm_config(arm, steps=steps, seed=seed, tiny=args.tiny, cache_dir=args.cache_dir)
        paths = {
            step: os.path.join(args.out, "measurements", f"{key}.json")
            for step, key in measurement_keys(arm, config, steps=steps, num=args.num)
        }
        if all(os.path.isfile(p) for p in paths.values()):
            # Everything measured already (e.g. committed results): no run needed.
            workdir, train_seconds = os.path.join(args.out, "workdirs", run_key(config)), 0.0
        elif args.default_steps == steps and _is_plain_default(arm, seed):
            workdir, train_seconds = os.path.abspath(args.default_workdir), 0.0
        else:
            workdir, train_seconds = train_arm(config, args.out)
        # Only a claim that shows its pairs keeps them (each holds a histogram).
        copy = os.path.join(args.out, "pairs", f"{run_key(config)}.json")
        pairs = pair_statistics(workdir, copy) if claim.pairs else {}
        guidance = eval_guidance(arm, config)
        for step, path in paths.items():
            if os.path.isfile(path):
                with open(path) as f:
                    metrics = json.load(f)
            else:
                start = time.perf_counter()
                metrics = measure(
                    config,
                    workdir,
                    step,
                    num=args.num,
                    guidance=guidance,
                    copies=arm.copies,
                    classes=arm.eval_classes,
                    seed=seed,
                )
                metrics["eval_seconds"] = round(time.perf_counter() - start, 1)
                _write_json(path, metrics)
            records.append(
                {
                    "arm": arm.name,
                    "variant": arm.variant,
                    "overrides": [list(o) for o in arm.overrides],
                    "seed": seed,
                    "workdir": os.path.relpath(workdir, ROOT),
                    "train_seconds_this_call": round(train_seconds, 1),
                    **metrics,
                    **({"pairs": pairs} if pairs else {}),
                }
            )
    return records


# --- verdicts, outputs -------------------------------------------------------------------


def metric_of(record: dict[str, Any], metric: str) -> dict[str, Any]:
    """The interval dict of a dotted metric ('one_shot.recall', 'copy_rate')."""
    node: Any = record
    for part in metric.split("."):
        node = node[part]
    return node if isinstance(node, dict) else {"value": node, "low": node, "high": node}


def final_records(claim: Claim, records: list[dict[str, Any]], seed: int) -> dict[str, dict]:
    """arm name -> its record at the last measured step for `seed`."""
    out: dict[str, dict] = {}
    for r in records:
        if r["seed"] == seed and (r["arm"] not in out or r["step"] >= out[r["arm"]]["step"]):
            out[r["arm"]] = r
    return out


def judge(claim: Claim, records: list[dict[str, Any]], seeds: int) -> tuple[list[dict], str]:
    """Each comparison per seed (holds / opposite / overlap), and the claim's verdict."""
    from semantica_jax.metrics.bootstrap import separated

    rows, outcomes = [], []
    for seed in range(seeds):
        final = final_records(claim, records, seed)
        for c in claim.comparisons:
            a, b = metric_of(final[c.a], c.metric), metric_of(final[c.b], c.metric)
            sign = separated(a, b) * (1 if c.expect == "higher" else -1)
            outcome = {1: "holds", -1: "opposite", 0: "overlap"}[sign]
            outcomes.append(outcome)
            rows.append(
                {
                    "metric": c.metric,
                    "a": c.a,
                    "b": c.b,
                    "expect": c.expect,
                    "seed": seed,
                    "a_value": a,
                    "b_value": b,
                    "outcome": outcome,
                }
            )
    if all(o == "holds" for o in outcomes):
        verdict = "confirmed"
    elif "holds" not in outcomes and "opposite" in outcomes and "overlap" not in outcomes:
        verdict = "refuted"
    elif "holds" in outcomes and "opposite" in outcomes:
        verdict = "mixed"
    else:
        verdict = "inconclusive"
    return rows, verdict


def plot(claim: Claim, records: list[dict[str, Any]], path: str) -> None:
    """Every compared metric per arm (per step for learning curves), 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semantica_jax.utils import atomic_files

    metrics = list(dict.fromkeys([claim.plot_metric, *(c.metric for c in claim.comparisons)]))
    pairs = {r["arm"]: r["pairs"] for r in records if r.get("pairs")} if claim.pairs else {}
    panels = len(metrics) + bool(pairs)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=100)
    axes = np.atleast_1d(axes)
    if pairs:
        _plot_pairs(axes[-1], pairs)
    curves = any(len(a.at_fractions) > 1 for a in claim.arms)
    for ax, metric in zip(axes[: len(metrics)], metrics, strict=True):
        for i, arm in enumerate(claim.arms):
            mine = sorted((r for r in records if r["arm"] == arm.name), key=lambda r: r["step"])
            values = [metric_of(r, metric) for r in mine]
            xs = [r["step"] for r in mine] if curves else [i + 0.1 * r["seed"] for r in mine]
            err = [
                [v["value"] - v["low"] for v in values],
                [v["high"] - v["value"] for v in values],
            ]
            ax.errorbar(
                xs,
                [v["value"] for v in values],
                yerr=err,
                fmt="o-" if curves else "o",
                capsize=3,
                label=arm.name,
            )
        if curves:
            ax.set_xlabel("decoder step")
        else:
            ax.set_xticks(
                range(len(claim.arms)),
                [a.name for a in claim.arms],
                rotation=20,
                ha="right",
                fontsize=8,
            )
        ax.set_ylabel(f"{metric} (95% bootstrap interval)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{claim.name}: {claim.source}", fontsize=9)
    fig.tight_layout()
    atomic_files.save_figure(fig, path, format="png")


def _plot_pairs(ax, pairs: dict[str, dict[str, Any]]) -> None:
    """Cosine histogram of each arm's candidate pairs, its kept band as dotted lines."""
    for i, (name, stats) in enumerate(pairs.items()):
        edges, counts = np.asarray(stats["histogram"]["edges"]), stats["histogram"]["counts"]
        density = np.asarray(counts) / max(1, sum(counts)) / np.diff(edges)
        kept = f"{stats['kept_fraction']:.0%} kept"
        line = ax.stairs(density, edges, label=f"{name} ({kept})", linestyle=("-", "--")[i % 2])
        for t in (stats["low_cosine"], stats["high_cosine"]):
            if t is not None:
                ax.axvline(t, color=line.get_edgecolor(), linestyle=":", linewidth=1)
    ax.set_yscale("log")  # same-class pairs pile up near 1 under a label-trained encoder
    ax.set_xlabel("encoder cosine of a candidate pair (dotted: kept band)")
    ax.set_ylabel("density (log)")
    ax.legend(fontsize=7)


def _write_json(path: str, obj: Any) -> None:
    from semantica_jax.utils import atomic_files

    atomic_files.write_json(path, obj, default=float)


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """'AMD EPYC (family 26, model 2)': the model name alone does not tell Zen 4 (family
    25) from Zen 5 (family 26) on these machines."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def _fmt(v: dict[str, Any]) -> str:
    return f"{v['value']:.3g} [{v['low']:.3g}, {v['high']:.3g}]"


def _pairs_line(records: list[dict[str, Any]]) -> str:
    """'pairs kept (off-topic share before -> after): arm 42% (46% -> 20%); ...'."""
    seen = {}
    for r in records:
        if r.get("pairs") and r["arm"] not in seen:
            p = r["pairs"]
            seen[r["arm"]] = (
                f"{r['arm']} {p['kept_fraction']:.0%} ({p['offtopic_pair_fraction_before']:.0%}"
                f" -> {p['offtopic_pair_fraction_after']:.0%})"
            )
    return "pairs kept (off-topic share of pairs before -> after): " + "; ".join(seen.values())


def write_table(out: str, path: str = TABLE) -> str:
    """docs/paper_claims.md from every claim JSON in `out` (claims in spec order)."""
    from semantica_jax.utils import atomic_files

    lines = [
        "# The papers' claims, re-measured on MNIST",
        "",
        "Written by `benchmarks/paper_claims.py` from `benchmarks/results/claims/*.json`; each",
        "number is the value with its 95% bootstrap interval over the sample set. A verdict",
        "needs separated intervals (see the harness docstring); N is the number of real and",
        "of generated images per protocol, `floor` the FID of N real images against other",
        "real images.",
        "",
        "| claim | source | comparison (seed) | ours | verdict | budget | command |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for claim in CLAIMS:
        p = os.path.join(out, f"{claim.name}.json")
        if not os.path.isfile(p):
            lines.append(
                f"| {claim.name} | {claim.source} | not measured yet | | | | "
                f"`python benchmarks/paper_claims.py --claim={claim.name}` |"
            )
            continue
        with open(p) as f:
            result = json.load(f)
        rows = "<br>".join(
            f"{r['metric']}: {r['a']} {_fmt(r['a_value'])} vs {r['b']} {_fmt(r['b_value'])}"
            f" (s{r['seed']}, {r['outcome']})"
            for r in result["comparisons"]
        )
        if claim.pairs:
            rows += "<br>" + _pairs_line(result["records"])
        budget = (
            f"{result['steps']} steps, N={result['num']}, {result['seeds']} seed(s), "
            f"floor {result['real_floor_fid']:.2f}, {result['cpu']}"
        )
        lines.append(
            f"| {claim.name} | {claim.source} | {claim.statement} | {rows} | "
            f"**{result['verdict']}** | {budget} | `{result['command']}` |"
        )
    lines += ["", "Plots: `benchmarks/results/claims/<claim>.png`."]
    atomic_files.write_text(path, "\n".join(lines) + "\n")
    return path


def run_claim(claim: Claim, args) -> dict[str, Any]:
    start = time.perf_counter()
    steps = args.steps or claim.steps
    records = [r for arm in claim.arms for r in measure_arm(claim, arm, args, steps)]
    comparisons, verdict = judge(claim, records, args.seeds)
    result = {
        "claim": claim.name,
        "source": claim.source,
        "statement": claim.statement,
        "verdict": verdict,
        "comparisons": comparisons,
        "records": records,
        "steps": steps,
        "seeds": args.seeds,
        "num": args.num,
        "tiny": args.tiny,
        "real_floor_fid": records[0]["real_floor_fid"],
        "wall_seconds_this_call": round(time.perf_counter() - start, 1),
        "git_revision": git_revision(),
        "cpu": ", ".join(sorted({r.get("cpu", "not recorded") for r in records})),
        "command": "python benchmarks/paper_claims.py " + " ".join(args.argv),
    }
    _write_json(os.path.join(args.out, f"{claim.name}.json"), result)
    plot(claim, records, os.path.join(args.out, f"{claim.name}.png"))
    print(f"{claim.name}: {verdict}", flush=True)
    return result


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--claim", default="all", help=f"all or one of {', '.join(BY_NAME)}")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument(
        "--steps", type=int, default=None, help="decoder steps of every arm (default: the claim's)"
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per arm")
    p.add_argument("--num", type=int, default=500, help="N images per protocol (x10)")
    p.add_argument("--cache_dir", default="", help="'' = the config's cache dir")
    p.add_argument("--tiny", action="store_true", help="arms on the tiny config (tests)")
    p.add_argument(
        "--default_workdir",
        default="",
        help="a finished default run (e.g. workdirs/mnist_default from make demo) used for "
        "the arms that are the plain default, seed 0, at its number of steps, instead of "
        "training one",
    )
    p.add_argument("--table", default=TABLE, help="markdown table to rewrite ('' = none)")
    args = p.parse_args(argv)
    names = list(BY_NAME) if args.claim == "all" else args.claim.split(",")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.exit(
            2,
            f"error: unknown claim(s) {', '.join(unknown)}; choose from "
            f"{', '.join(BY_NAME)} or all\n",
        )
    if (
        (args.steps is not None and args.steps < 3)
        or args.seeds < 1
        or args.num < 10
        or args.num % 10
    ):
        p.exit(2, "error: --steps must be >= 3, --seeds >= 1, --num a positive multiple of 10\n")
    args.default_steps = None
    if args.default_workdir:
        try:
            args.default_steps = default_run_steps(args.default_workdir)
        except ValueError as err:
            p.exit(2, f"error: --default_workdir={args.default_workdir}: {err}\n")
        differs = recipe_differences(args.default_workdir)
        if differs:
            # Not an error: `make claims` passes the demo's run whenever there is one.
            print(
                f"note: --default_workdir={args.default_workdir} not used: it was trained with "
                f"{', '.join(differs)}, the claims with "
                f"{', '.join(f'{k}={v!r}' for k, v in CLAIMS_RECIPE)}; "
                "the default arm trains (or finds) its own run",
                file=sys.stderr,
            )
            args.default_steps = None
    args.names, args.argv = names, argv
    args.out = os.path.abspath(args.out)
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import logging

    logging.set_verbosity(logging.INFO)
    results = [run_claim(BY_NAME[name], args) for name in args.names]
    if args.table:
        write_table(args.out, args.table)
    return results


if __name__ == "__main__":
    from semantica_jax.utils import xla_cpu

    xla_cpu.apply_defaults(os.environ)  # before JAX creates its backend
    main()
