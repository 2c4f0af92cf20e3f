"""`main --mode=eval`: quality and diversity of the latest checkpoint's EMA model.

Writes WORKDIR/eval/metrics.json, WORKDIR/eval/guidance_sweep.{json,png} and TensorBoard
scalars. Every figure carries its N. Metrics (METHODS §5):
  * full set: each of the N real test images conditions one sample (K = N);
  * K-shot (K in config.eval.kshot; K = 10 is one-shot, one image per class): N/K samples
    of each of K conditioning images;
  * alignment (cosine conditioning vs samples, in encoder and in feature-net space),
    diversity (mean pairwise feature distance among samples of one conditioning image);
  * class consistency (overall, per class, worst class) by the feature net, and which of
    its misses the encoder explains: each conditioning image's k-NN class among the train
    embeddings (config.eval.encoder_knn_k), consistency where that class is right, and how
    often the samples follow it where it is wrong;
  * the real-data floor: the same FID/P/R between two disjoint real sets of size N.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

from semantica_jax import assets, decoder
from semantica_jax import workdir as run_dir
from semantica_jax.encoder.encode import encode
from semantica_jax.encoder.evaluate import knn_predict
from semantica_jax.metrics import features, fewshot, variation
from semantica_jax.utils import atomic_files, image_io, parallel, progress


class Generator:
    """Batched, jitted, device-sharded sampling of variations, progress through clu."""

    def __init__(self, config, params, data: assets.EmbeddedSplit, mesh):
        self.config, self.data, self.mesh = config, data, mesh
        self.params = jax.device_put(params, parallel.replicated(mesh))
        self.fn = decoder.make_variation_fn(config)
        self.batch_size = parallel.check_batch_size(
            int(config.eval.batch_size), mesh, "eval.batch_size"
        )

    def __call__(self, cond_indices: np.ndarray, guidance: float, rng: jax.Array) -> np.ndarray:
        """Samples one variation per entry of `cond_indices` -> float32 [M,H,W,C] in [-1,1].

        A guidance of 0 runs the conditional branch alone (`samplers.is_unguided`).
        """
        cond_indices = np.asarray(cond_indices)
        total = len(cond_indices)
        bs = even_batch_size(total, self.batch_size, self.mesh.size)
        out, sharding = [], parallel.batch_sharding(self.mesh)
        report = progress.loop(
            total,
            f"sampling w={guidance:g}: {total} images in batches of {bs}; progress counts images",
        )
        for b, lo in enumerate(range(0, total, bs)):
            idx = cond_indices[lo : lo + bs]
            pad = bs - len(idx)  # the last batch is padded to keep one compiled shape
            idx_full = np.concatenate([idx, np.repeat(idx[-1:], pad)]) if pad else idx
            tokens = jax.device_put(np.asarray(self.data.tokens[idx_full], np.float32), sharding)
            cls = jax.device_put(np.asarray(self.data.cls[idx_full], np.float32), sharding)
            x = self.fn(self.params, tokens, cls, jax.random.fold_in(rng, b), jnp.float32(guidance))
            out.append(np.asarray(jax.device_get(x))[: len(idx)])
            report(lo + len(idx))
        return np.concatenate(out)


def even_batch_size(total: int, max_batch: int, multiple: int = 1) -> int:
    """The batch that covers `total` items in as few batches as `max_batch` allows, evenly.

    300 images at a maximum of 200 go as 2 batches of 150 rather than 200 and a padded
    200 (a quarter of the work wasted); the batch is rounded up to a multiple of
    `multiple` (the devices it is split over), so the last batch may still be padded a
    little. Each new batch shape compiles the sampler once (a few seconds).
    """
    num_batches = -(-total // max_batch)
    per_batch = -(-total // num_batches)
    return -(-per_batch // multiple) * multiple


def balanced_subset(labels: np.ndarray, n: int, seed: int, field: str, classes=()) -> np.ndarray:
    """n indices with n / C of each of the C classes (sorted), drawn once from a seed.

    Balanced sets make the one-shot protocol (one conditioning image per class, N/C samples
    each) well defined at any N that is a multiple of C. `classes` restricts the draw to
    those labels (empty: every label present).
    """
    classes = np.unique(labels) if not len(classes) else np.unique(np.asarray(classes))
    per, rem = divmod(n, len(classes))
    if rem or per == 0:
        raise ValueError(
            f"config.{field}={n} must be a positive multiple of the {len(classes)} classes"
        )
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) < per:
            raise ValueError(
                f"config.{field}={n} needs {per} images of class {c}; the split has "
                f"{len(members)}. Lower config.{field}."
            )
        picked.append(rng.choice(members, per, replace=False))
    return np.sort(np.concatenate(picked))


def protocol(
    gen: Generator,
    real_feats: np.ndarray,
    subset: np.ndarray,
    labels: np.ndarray,
    k: int,
    guidance: float,
    rng: jax.Array,
    feature_fn,
    seed: int,
    pr_k: int,
) -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
    """One K-shot evaluation; returns (metrics, cond positions in subset, samples, feats)."""
    n = len(subset)
    per = fewshot.samples_per_conditioning(n, k)
    cond_pos = np.arange(n) if k == n else fewshot.select_conditioning(labels, k, seed)
    samples = gen(subset[np.repeat(cond_pos, per)], guidance, rng)
    feats = fewshot.compute_features(feature_fn, samples)
    m = fewshot.kshot_metrics(real_feats, feats, pr_k=pr_k)
    m.update(k=int(k), num_per_cond=int(per), num_images=int(n), guidance=float(guidance))
    return m, cond_pos, samples, feats


def evaluate(config, workdir: str) -> dict[str, Any]:
    """Evaluates WORKDIR's latest checkpoint (EMA params); returns the metrics dict."""
    t0 = time.perf_counter()
    mesh = parallel.make_mesh(config.mesh.fsdp)
    params, step = run_dir.restore_ema_params(workdir)
    # The train split too: an encoder or feature net not yet cached trains on it.
    assets.prepare_streamed_splits(config, (config.data.train_split, config.data.eval_split))
    bundle = assets.load_encoder(config)
    test = assets.embedded_split(config, bundle, config.data.eval_split)
    feat_bundle = assets.feature_net(config)
    feature_fn = features.feature_fn(feat_bundle)

    n = int(config.eval.num_images)
    subset = balanced_subset(
        test.labels, n, config.seed, "eval.num_images", tuple(config.eval.get("classes", ()))
    )
    labels = test.labels[subset]
    real = image_io.to_model_range(test.images[subset])
    real_feats = fewshot.compute_features(feature_fn, real)
    rest = np.setdiff1d(np.arange(len(test.labels)), subset)
    floor_n = min(n, len(rest))
    floor_feats = fewshot.compute_features(feature_fn, image_io.to_model_range(test.images[rest]))
    floor = variation.real_floor(
        real_feats, floor_n, config.seed, other=floor_feats, pr_k=int(config.eval.pr_k)
    )

    gen = Generator(config, params, test, mesh)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
    w = float(config.sampler.guidance)
    results: dict[str, Any] = {
        "step": int(step),
        "num_images": n,
        "sampler": dict(config.sampler),
        "feature_net_test_accuracy": feat_bundle.test_accuracy,
        "real_floor": floor,
    }
    full, full_pos, full_samples, full_feats = protocol(
        gen, real_feats, subset, labels, n, w, rng, feature_fn, config.seed, config.eval.pr_k
    )
    # Each test image conditions one sample: N / C conditioning images per class, so the
    # per-class consistency here does not hang on one image per class as the one-shot's.
    full_classes = features.classify(feat_bundle, full_samples)
    full.update(variation.class_consistency(full_classes, labels[full_pos]))
    # The class the encoder gives each conditioning image (k-NN on the train embeddings):
    # which misses it explains, and whether the samples follow it there.
    train = assets.embedded_split(config, bundle, config.data.train_split)
    encoder_class = knn_predict(
        train.cls, train.labels, test.cls[subset], k=int(config.eval.encoder_knn_k)
    )
    full.update(
        variation.encoder_attribution(full_classes, encoder_class[full_pos], labels[full_pos])
    )
    results["full_set"] = full
    num_classes, one_shot = len(np.unique(labels)), None
    for k in config.eval.kshot:
        m, cond_pos, samples, feats = protocol(
            gen,
            real_feats,
            subset,
            labels,
            int(k),
            w,
            jax.random.fold_in(rng, k),
            feature_fn,
            config.seed,
            config.eval.pr_k,
        )
        per = m["num_per_cond"]
        cond_feats = real_feats[cond_pos]
        cond_cls = test.cls[subset[cond_pos]]
        sample_cls = encode(bundle, samples, with_tokens=False)[1]
        m["alignment_encoder"] = variation.alignment(
            cond_cls, sample_cls.reshape(len(cond_pos), per, -1)
        )
        m["alignment_features"] = variation.alignment(
            cond_feats, feats.reshape(len(cond_pos), per, -1)
        )
        m["diversity"] = variation.diversity(feats.reshape(len(cond_pos), per, -1))
        classes = features.classify(feat_bundle, samples)
        m.update(variation.class_consistency(classes, np.repeat(labels[cond_pos], per)))
        m.update(
            variation.encoder_attribution(
                classes, np.repeat(encoder_class[cond_pos], per), np.repeat(labels[cond_pos], per)
            )
        )
        results[f"{k}_shot"] = m
        if k == num_classes:
            one_shot = (cond_pos, feats.reshape(len(cond_pos), per, -1))
    n_sweep = int(config.eval.sweep_num_images)
    sweep_pos = balanced_subset(labels, n_sweep, config.seed + 1, "eval.sweep_num_images")
    # What the eval sampled at its own w is reused there: the full set conditions each
    # subset image once, in order (full_pos is arange(n)), so its samples of the sweep's
    # images are that point's full set; the sweep's one-shot conditions on the eval's
    # one-shot images (when it ran one), so their first n_sweep / C samples are its own.
    sampled, one_shot_cond = {(w, "full"): full_feats[sweep_pos]}, None
    if one_shot is not None:
        cond_pos, feats = one_shot
        one_shot_cond = subset[cond_pos]
        per_sweep = n_sweep // num_classes
        sampled[(w, "one_shot")] = feats[:, :per_sweep].reshape(n_sweep, -1)
    results["guidance_sweep"] = guidance_sweep(
        config,
        gen,
        real_feats[sweep_pos],
        subset[sweep_pos],
        labels[sweep_pos],
        feature_fn,
        rng,
        one_shot_cond=one_shot_cond,
        sampled=sampled,
    )
    results["real_floor_sweep"] = variation.real_floor(
        real_feats[sweep_pos], n_sweep, config.seed, other=floor_feats, pr_k=config.eval.pr_k
    )
    results["eval_seconds"] = time.perf_counter() - t0
    _write_outputs(config, workdir, step, results)
    return results


def guidance_sweep(
    config, gen, real_feats, subset, labels, feature_fn, rng, one_shot_cond=None, sampled=None
) -> list[dict]:
    """FID/P/R of the full set and the one-shot for each w in config.eval.guidance_sweep.

    Full set: one sample of each `subset` image (test indices, labels `labels`); one-shot:
    len(subset) / C samples of each of the C images `one_shot_cond` (test indices, one
    per class; default: `fewshot.select_conditioning` among the subset). Both against
    `real_feats` [len(subset), F], the subset's features. `sampled` {(w, 'full' |
    'one_shot'): features [len(subset), F]}: sets already sampled in that order (the
    eval's own at its guidance), used instead of sampling them again.
    """
    num_classes = len(np.unique(labels))
    if one_shot_cond is None:
        one_shot_cond = subset[fewshot.select_conditioning(labels, num_classes, config.seed)]
    per = fewshot.samples_per_conditioning(len(subset), len(one_shot_cond))
    conds = {"full": subset, "one_shot": np.repeat(one_shot_cond, per)}
    sampled = sampled or {}
    rows = []
    for i, w in enumerate(config.eval.guidance_sweep):
        w, key = float(w), jax.random.fold_in(rng, 1000 + i)
        m = {}
        for j, (name, cond) in enumerate(conds.items()):
            feats = sampled.get((w, name))
            if feats is None:
                samples = gen(cond, w, jax.random.fold_in(key, j))
                feats = fewshot.compute_features(feature_fn, samples)
            m[name] = fewshot.kshot_metrics(real_feats, feats, pr_k=config.eval.pr_k)
        full, one = m["full"], m["one_shot"]
        rows.append(
            {
                "guidance": w,
                "fid": full["fid"],
                "precision": full["precision"],
                "recall": full["recall"],
                "one_shot_fid": one["fid"],
                "one_shot_precision": one["precision"],
                "one_shot_recall": one["recall"],
                "num_images": len(subset),
            }
        )
        logging.info("guidance sweep: %s", rows[-1])
    return rows


def _write_outputs(config, workdir: str, step: int, results: dict[str, Any]) -> None:
    if jax.process_index() != 0:
        return
    out = run_dir.eval_dir(workdir)
    os.makedirs(out, exist_ok=True)
    atomic_files.write_json(os.path.join(out, "metrics.json"), results, default=float)
    sweep = results["guidance_sweep"]
    atomic_files.write_json(os.path.join(out, "guidance_sweep.json"), sweep, default=float)
    plot_guidance_sweep(
        results["guidance_sweep"],
        os.path.join(out, "guidance_sweep.png"),
        floor_fid=results["real_floor_sweep"]["fid"],
    )
    writer = metric_writers.create_default_writer(os.path.join(out, "tb"), asynchronous=False)
    scalars = {f"eval/real_floor/{k}": v for k, v in results["real_floor"].items()}
    for name in ["full_set"] + [f"{k}_shot" for k in config.eval.kshot]:
        for k, v in results[name].items():
            if isinstance(v, dict):  # class_consistency_per_class: one scalar per class
                scalars.update({f"eval/{name}/{k}/{c}": x for c, x in v.items()})
            elif not isinstance(v, str):  # class_consistency_min_class is in the JSON only
                scalars[f"eval/{name}/{k}"] = v
    writer.write_scalars(step, scalars)
    writer.close()


def plot_guidance_sweep(rows: list[dict], path: str, floor_fid: float | None = None) -> None:
    """FID, precision, recall and one-shot recall against w, as a PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [r["guidance"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(ws, [r["fid"] for r in rows], "o-", label="FID (full set)")
    ax1.plot(ws, [r["one_shot_fid"] for r in rows], "s--", label="FID (one-shot)")
    ax1.set_xlabel("guidance w")
    ax1.set_ylabel("MNIST FID")
    if floor_fid is not None:
        ax1.axhline(floor_fid, color="gray", linestyle=":", label="real-data floor")
    ax1.legend()
    for key, style in (("precision", "o-"), ("recall", "s-"), ("one_shot_recall", "^--")):
        ax2.plot(ws, [r[key] for r in rows], style, label=key.replace("_", " "))
    ax2.set_xlabel("guidance w")
    ax2.set_ylim(0, 1.02)
    ax2.legend()
    fig.suptitle(f"guidance sweep (N = {rows[0]['num_images']})")
    fig.tight_layout()
    atomic_files.save_figure(fig, path, dpi=100)
