"""Few-shot MNIST with generative augmentation (seed 004): when do variations help?

  .venv/bin/python benchmarks/augmentation.py --workdir=workdirs/mnist_unsupervised_strong \
      --label_workdir=workdirs/mnist_default --out=benchmarks/results
  .venv/bin/python benchmarks/augmentation.py --workdir=DIR --quick --out=/tmp/aug   # seconds

k labelled train images per class (k in --k, --subsets seeded subsets each) train the same
small CNN (models/feature_net.FeatureNet, --steps Adam steps of batch 64) under:
  (a) real only; (b) real + standard augmentation (augmentation.standard_augment: random
  affine and elastic, dm-pix); (c) real + M variations per image from `tools/augment.py`,
  mixed as DA-Fusion does (each draw replaced by one of its variations with p = 0.5);
  (d) (b) and (c) together; (e) an oracle with k (1 + M) real images per class.
Accuracy on the full 10k test split, mean ± std over the subsets. Ablations at k = 10: the
filter off, constant guidance w in {0, 0.5, 1} instead of SGID's, SDEdit strength 0.5 and
0.3 instead of pure noise. `--workdir` is the generator of the main rows and must be
label-free (configs/mnist.py:unsupervised_strong or :unsupervised: a SimCLR encoder and
k-means episodes) so that no label beyond the k per class reaches the classifier;
`--label_workdir` adds a clearly marked row for a generator trained on label-grouped pairs
of all 60k labels (leakage).

Variations are generated once per (generator, k, subset, setting) into OUT/augmentation/
and reused on a rerun, like every finished classifier run (OUT/augmentation_runs.json; the
keys of arms c and d name the generator's workdir, so another --workdir into the same OUT
gets its own; a cell already there never samples again). Outputs:
OUT/augmentation.json, OUT/augmentation.png (accuracy vs k, arms a-e), OUT/augmentation.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

ARMS = ("a_real", "b_standard", "c_variations", "d_both", "e_oracle")
# name -> the tools/augment.py settings that differ from the main rows' (sgid, noise, filter).
ABLATIONS = {
    "filter off": dict(tau_low=-1.0, tau_high=1.01),
    "constant w=0": dict(guidance="constant", w=0.0),
    "constant w=0.5": dict(guidance="constant", w=0.5),
    "constant w=1": dict(guidance="constant", w=1.0),
    "strength 0.5": dict(strength=0.5),
    "strength 0.3": dict(strength=0.3),
}


def few_shot_subset(labels: np.ndarray, k: int, seed: int, exclude=()) -> np.ndarray:
    """k indices per class (sorted), seeded; `exclude` indices are never chosen."""
    rng = np.random.default_rng(seed)
    banned = np.zeros(len(labels), bool)
    banned[np.asarray(exclude, np.int64)] = True
    picked = [
        rng.choice(np.flatnonzero((labels == c) & ~banned), k, replace=False)
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(picked))


def train_classifier(
    images,
    labels,
    *,
    steps: int,
    seed: int,
    standard: bool,
    variations=None,
    mix_p: float = 0.5,
    batch: int = 64,
):
    """The few-shot CNN: params after `steps` Adam steps on real (+ variation) draws.

    Args:
      images: uint8 [N, H, W, C] real labelled images; labels: int [N].
      steps: optimisation steps; seed: init, draws and augmentation.
      standard: apply `augmentation.standard_augment` to every batch.
      variations: None, or (var_images uint8 [V,...], var_source int [V]) for DA-Fusion
        mixing with probability `mix_p`.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from semantica_jax import augmentation as aug
    from semantica_jax.models.feature_net import FeatureNet
    from semantica_jax.utils import image_io

    model = FeatureNet(num_classes=int(labels.max()) + 1)
    key = jax.random.key(seed)
    params = model.init(key, jnp.zeros((1, *images.shape[1:])))["params"]
    tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
    opt = tx.init(params)

    @jax.jit
    def step_fn(params, opt, x, y, k):
        x = image_io.to_model_range(x)
        if standard:
            x = aug.standard_augment(k, x)

        def loss(p):
            logits, _ = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    rng = np.random.default_rng(seed)
    if variations is not None:
        var_images, var_source = variations
        order = np.argsort(var_source, kind="stable")
        counts = np.bincount(var_source, minlength=len(images))
        offsets = np.cumsum(counts) - counts
    for step in range(steps):
        idx = rng.integers(0, len(images), batch)
        x = images[idx]
        if variations is not None:
            use, slot = aug.dafusion_draws(rng, idx, counts, mix_p)
            x = np.where(use[:, None, None, None], var_images[order[offsets[idx] + slot]], x)
        params, opt = step_fn(params, opt, x, labels[idx], jax.random.fold_in(key, step))
    return model, params


def accuracy(model, params, images, labels, batch: int = 1000) -> float:
    import jax

    from semantica_jax.utils import image_io

    apply = jax.jit(lambda p, x: model.apply({"params": p}, image_io.to_model_range(x))[0])
    correct = sum(
        int(np.sum(np.argmax(apply(params, images[i : i + batch]), -1) == labels[i : i + batch]))
        for i in range(0, len(images), batch)
    )
    return correct / len(images)


def variations_for(args, workdir: str, images, labels, tag: str, **changes):
    """(images, source) of the kept variations: tools/augment.py, cached under OUT."""
    from semantica_jax.tools import augment

    settings = augment.AugmentSettings(variations=args.variations, seed=args.seed, **changes)
    name = "-".join(
        [os.path.basename(os.path.normpath(workdir)), tag]
        + [f"{k}={v}" for k, v in sorted(changes.items())]
    )
    out = os.path.join(args.out, "augmentation", name)
    if not os.path.isdir(out):
        src = os.path.join(args.out, "augmentation", f"{name}.input.npz")
        os.makedirs(os.path.dirname(src), exist_ok=True)
        np.savez(src, images=images, labels=labels)
        augment.augment(workdir, src, out, settings, log=lambda _: None)
    data = np.load(os.path.join(out, "augmented.npz"))
    keep = data["is_variation"]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return (data["images"][keep], data["source_index"][keep]), summary


def run_cell(args, cache: dict, key: str, fn) -> float:
    """One classifier accuracy, cached in OUT/augmentation_runs.json (resumable)."""
    if key not in cache:
        start = time.perf_counter()
        cache[key] = {"accuracy": fn(), "seconds": round(time.perf_counter() - start, 1)}
        from semantica_jax.utils import atomic_files

        atomic_files.write_json(os.path.join(args.out, "augmentation_runs.json"), cache)
        print(f"{key}: {cache[key]['accuracy']:.4f} ({cache[key]['seconds']} s)", flush=True)
    return cache[key]["accuracy"]


def arms_for(
    args,
    cache,
    workdir,
    tag_prefix,
    train_x,
    train_y,
    test_x,
    test_y,
    k,
    s,
    arms=ARMS,
    cached_only=False,
    **changes,
):
    """Accuracy of each arm for one (generator, k, subset, settings); with `cached_only`,
    only the arms already in the cache (nothing is sampled or trained)."""
    sub = few_shot_subset(train_y, k, seed=1000 * k + s)
    x, y = train_x[sub], train_y[sub]
    tag = f"{tag_prefix}k{k}-s{s}"
    suffix = "".join(f"-{a}={b}" for a, b in sorted(changes.items()))
    out = {}

    def fit(xs=x, ys=y, **kw):
        model, params = train_classifier(xs, ys, steps=args.steps, seed=s, **kw)
        return accuracy(model, params, test_x, test_y)

    # Arms c and d depend on the generator: their keys name it (a rerun into the same OUT
    # with another --workdir must not reuse them); a, b and e do not.
    generator = os.path.basename(os.path.normpath(workdir))

    def key_of(arm: str) -> str:
        named = f"{generator}-" if arm in ("c_variations", "d_both") else ""
        return f"{named}{tag}{suffix}-{arm}-steps{args.steps}-m{args.variations}"

    if cached_only:
        arms = [a for a in arms if key_of(a) in cache]
    var = None
    if any(a in ("c_variations", "d_both") and key_of(a) not in cache for a in arms):
        var = variations_for(args, workdir, x, y, tag, **changes)[0]
    for arm in arms:
        key = key_of(arm)
        if arm == "a_real":
            out[arm] = run_cell(args, cache, key, lambda: fit(standard=False))
        elif arm == "b_standard":
            out[arm] = run_cell(args, cache, key, lambda: fit(standard=True))
        elif arm == "c_variations":
            out[arm] = run_cell(args, cache, key, lambda: fit(standard=False, variations=var))
        elif arm == "d_both":
            out[arm] = run_cell(args, cache, key, lambda: fit(standard=True, variations=var))
        else:  # the oracle: k (1 + M) real images per class, the k above included
            extra = few_shot_subset(train_y, k * args.variations, seed=1000 * k + s, exclude=sub)
            both = np.sort(np.concatenate([sub, extra]))
            oracle = functools.partial(fit, train_x[both], train_y[both], standard=False)
            out[arm] = run_cell(args, cache, key, oracle)
    return out


def _stats(values: list[float], subsets: list[int] | None = None) -> dict[str, Any]:
    """Mean, std, n and the values with the subset index of each (0, 1, ... by default)."""
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": int(len(v)),
        "values": [float(x) for x in v],
        "subsets": list(range(len(v))) if subsets is None else [int(i) for i in subsets],
    }


def _row(cells: list[dict[str, float]], arms, first: int = 0) -> dict[str, Any]:
    """Per arm, the _stats over the subsets that have it (cells[i] is subset first + i)."""
    row = {}
    for a in arms:
        have = [i for i, c in enumerate(cells) if a in c]
        if have:
            row[a] = _stats([cells[i][a] for i in have], [first + i for i in have])
    return row


def _paired(plus: dict, base: dict) -> str:
    """'+0.0123 ± 0.0045 (2/3)': mean ± std of plus − base over the subsets both have (by
    subset index), and the subsets where plus was higher (both are _stats dicts)."""
    by_subset = dict(zip(base["subsets"], base["values"], strict=True))
    d = np.asarray([v - by_subset[i] for i, v in zip(plus["subsets"], plus["values"], strict=True)])
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return f"{d.mean():+.4f} ± {sd:.4f} ({int((d > 0).sum())}/{len(d)})"


def table_and_plot(result: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semantica_jax.utils import atomic_files

    lines = [
        f"Command: `{result['command']}`; CPU: {result['cpu']}; accuracy on the 10k "
        "test split, mean ± std over subsets.",
        "",
        "| generator | k | subsets | " + " | ".join(ARMS) + " |",
        "|---" * (len(ARMS) + 3) + "|",
    ]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for gen, rows in result["main"].items():
        for k, arms in rows.items():
            cells = [
                f"{arms[a]['mean']:.4f} ± {arms[a]['std']:.4f}" if a in arms else "—" for a in ARMS
            ]
            n = max((arms[a]["n"] for a in arms), default=0)
            lines.append(f"| {gen} | {k} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired differences (same subsets), mean ± std, and subsets where the variations helped:",
        "",
        "| generator | k | c − a (variations vs real) | d − b (both vs standard) |",
        "|---|---|---|---|",
    ]
    label_free = next(iter(result["main"]))
    for gen, rows in result["main"].items():
        for k, arms in rows.items():
            # Arms a and b do not use a generator: the label-free rows' runs, same subsets.
            arms = {**result["main"][label_free].get(k, {}), **arms}
            cells = []
            for plus, base in (("c_variations", "a_real"), ("d_both", "b_standard")):
                if plus not in arms or base not in arms:
                    cells.append("—")
                    continue
                cells.append(_paired(arms[plus], arms[base]))
            lines.append(f"| {gen} | {k} | " + " | ".join(cells) + " |")
    ks = sorted(int(k) for k in result["main"][label_free])
    for arm in ARMS:
        rows = result["main"][label_free]
        got = [k for k in ks if arm in rows[str(k)]]  # a row from cache may lack an arm
        means = [rows[str(k)][arm]["mean"] for k in got]
        stds = [rows[str(k)][arm]["std"] for k in got]
        ax.errorbar(got, means, yerr=stds, marker="o", capsize=3, label=arm)
    for gen in list(result["main"])[1:]:  # the label-trained generator, marked apart
        for arm in ("c_variations", "d_both"):
            rows = result["main"][gen]
            got = [k for k in ks if arm in rows.get(str(k), {})]
            ax.errorbar(
                got,
                [rows[str(k)][arm]["mean"] for k in got],
                yerr=[rows[str(k)][arm]["std"] for k in got],
                marker="x",
                linestyle="--",
                capsize=3,
                label=f"{arm}, label-trained (leaks labels)",
            )
    ax.set_xscale("log")
    ax.set_xlabel("labelled images per class k")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"few-shot MNIST, generator {label_free}\n(dashed: label-trained)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_files.save_figure(fig, os.path.join(out, "augmentation.png"), format="png")
    for field, who in (("ablations", "label-free"), ("label_ablations", "LABEL-TRAINED")):
        if not result.get(field):
            continue
        # Paired against arms a and b at k = 10 (no generator; the same subsets and seeds).
        base = result["main"][label_free].get("10", {})
        lines += [
            "",
            f"Ablations at k = 10 ({who} generator), arms c / d, paired against a / b:",
            "",
            "| setting | subsets | c_variations | d_both | c − a | d − b |",
            "|---|---|---|---|---|---|",
        ]
        for name, arms in result[field].items():
            if not {"c_variations", "d_both"} <= set(arms):
                continue  # nothing cached yet (--from_cache)
            c, d = arms["c_variations"], arms["d_both"]
            paired = [
                _paired(x, base[b]) if b in base else "—"
                for x, b in ((c, "a_real"), (d, "b_standard"))
            ]
            lines.append(
                f"| {name} | {c['n']} | {c['mean']:.4f} ± {c['std']:.4f} | "
                f"{d['mean']:.4f} ± {d['std']:.4f} | " + " | ".join(paired) + " |"
            )
    atomic_files.write_text(os.path.join(out, "augmentation.md"), "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import paper_claims  # the CPU model and git revision, as the claims report them

    from semantica_jax import assets
    from semantica_jax import workdir as run_dir
    from semantica_jax.utils import atomic_files

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="label-free generator (main rows)")
    p.add_argument("--label_workdir", default="", help="label-trained generator (marked row)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--k", default="1,5,10,50")
    p.add_argument("--subsets", type=int, default=5)
    p.add_argument(
        "--first_subset",
        type=int,
        default=0,
        help="compute subsets from this one on (to split a run across processes, each into "
        "its own OUT; their augmentation_runs.json caches then merge into one)",
    )
    p.add_argument(
        "--label_subsets",
        type=int,
        default=0,
        help="subsets of the --label_workdir rows (0: --subsets); each row reports its n",
    )
    p.add_argument(
        "--label_from_cache",
        action="store_true",
        help="the --label_workdir rows from cached cells only (that generator need not exist; "
        "each row reports the subsets it has)",
    )
    p.add_argument(
        "--from_cache",
        action="store_true",
        help="every row from cached cells only: nothing is sampled or trained (a report of a "
        "run still under way; each row names the subsets it has)",
    )
    p.add_argument(
        "--ablation_subsets", type=int, default=0, help="subsets of the ablations (0: --subsets)"
    )
    p.add_argument("--variations", type=int, default=10)
    p.add_argument("--steps", type=int, default=1000, help="classifier steps (every arm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_ablations", action="store_true")
    p.add_argument(
        "--ablations",
        default=",".join(ABLATIONS),
        help="comma-separated ablation names to run (default: all of ABLATIONS)",
    )
    p.add_argument(
        "--label_ablations",
        default="",
        help="ablations also run on the --label_workdir generator (comma-separated)",
    )
    p.add_argument("--quick", action="store_true", help="k=1, one subset, tiny budgets")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.k, args.subsets, args.variations, args.steps, args.no_ablations = "1", 1, 2, 20, True
    ks = [int(k) for k in args.k.split(",")]
    # Checked before any work: a typo must not surface after the main arms' hour of runs.
    chosen = [a.strip() for a in args.ablations.split(",") if a.strip()]
    label_chosen = [a.strip() for a in args.label_ablations.split(",") if a.strip()]
    unknown = [a for a in chosen + label_chosen if a not in ABLATIONS]
    if unknown:
        p.error(f"unknown --ablations {unknown}; choose from {list(ABLATIONS)}")
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    config = run_dir.load_config(args.workdir)
    train_x, train_y = assets.load_split(config, config.data.train_split)
    test_x, test_y = assets.load_split(config, config.data.eval_split)
    cache_path = os.path.join(args.out, "augmentation_runs.json")
    cache = json.load(open(cache_path)) if os.path.isfile(cache_path) else {}
    start = time.perf_counter()
    generators = {f"label-free ({os.path.basename(os.path.normpath(args.workdir))})": args.workdir}
    if args.label_workdir:
        generators[
            "LABEL-TRAINED, leaks 60k labels "
            f"({os.path.basename(os.path.normpath(args.label_workdir))})"
        ] = args.label_workdir
    result: dict[str, Any] = {"main": {}, "ablations": {}}
    label_subsets = args.label_subsets or args.subsets
    ablation_subsets = args.ablation_subsets or args.subsets
    for g, (gen_name, workdir) in enumerate(generators.items()):
        arms = ARMS if g == 0 else ("c_variations", "d_both")
        subsets = args.subsets if g == 0 else label_subsets
        cached_only = args.from_cache or (g > 0 and args.label_from_cache)
        rows = {}
        for k in ks:
            cells = [
                arms_for(
                    args,
                    cache,
                    workdir,
                    f"g{g}-",
                    train_x,
                    train_y,
                    test_x,
                    test_y,
                    k,
                    s,
                    arms=arms,
                    cached_only=cached_only,
                )
                for s in range(args.first_subset, subsets)
            ]
            rows[str(k)] = _row(cells, arms, args.first_subset)
        result["main"][gen_name] = rows

    def ablation(
        workdir: str, prefix: str, changes: dict, subsets: int, cached_only: bool = False
    ) -> dict[str, Any]:
        """Arms c and d at k = 10 with the tool settings `changes`, over `subsets` subsets."""
        cells = [
            arms_for(
                args,
                cache,
                workdir,
                prefix,
                train_x,
                train_y,
                test_x,
                test_y,
                10,
                s,
                arms=("c_variations", "d_both"),
                cached_only=cached_only,
                **changes,
            )
            for s in range(args.first_subset, subsets)
        ]
        return _row(cells, ("c_variations", "d_both"), args.first_subset)

    if not args.no_ablations:
        for name in chosen:
            result["ablations"][name] = ablation(
                args.workdir, "g0-", ABLATIONS[name], ablation_subsets, args.from_cache
            )
    if args.label_workdir and label_chosen:
        result["label_ablations"] = {
            name: ablation(
                args.label_workdir,
                "g1-",
                ABLATIONS[name],
                min(label_subsets, ablation_subsets),
                args.from_cache or args.label_from_cache,
            )
            for name in label_chosen
        }
    result.update(
        k=ks,
        subsets=args.subsets,
        label_subsets=label_subsets if args.label_workdir else 0,
        ablation_subsets=ablation_subsets,
        variations=args.variations,
        classifier_steps=args.steps,
        wall_seconds_this_call=round(time.perf_counter() - start, 1),
        cpu=paper_claims.cpu_model(),
        git_revision=paper_claims.git_revision(),
        command="python benchmarks/augmentation.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    )
    atomic_files.write_json(os.path.join(args.out, "augmentation.json"), result)
    table_and_plot(result, args.out)
    return result


if __name__ == "__main__":
    from semantica_jax.utils import xla_cpu

    xla_cpu.apply_defaults(os.environ)  # before JAX creates its backend
    main()
