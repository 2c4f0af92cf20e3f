"""Evaluation of the frozen encoder and its command line job.

* `knn_accuracy`: k-NN (cosine on CLS, majority vote) accuracy of queries against a gallery.
* `cosine_distributions`: same-class vs different-class CLS cosine statistics (+ ROC AUC).
* `run_encoder_job(config, workdir)`: train into WORKDIR/encoder (or reuse it), evaluate on
  the test split with the train split as gallery, write WORKDIR/encoder_eval.json and
  WORKDIR/encoder_cosine_hist.png; afterwards the encoder is also installed in the cache
  dir under its key (if absent) so that training jobs reuse it.

Run:
  python -m semantica_jax.encoder --config=configs/encoder_mnist.py --workdir=DIR
"""

from __future__ import annotations

import json
import os
import shutil
import time

import ml_collections
import numpy as np

from semantica_jax import atomic_files, encoder
from semantica_jax.encoder import EncoderBundle, Log, log_stderr

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_predict(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    queries: np.ndarray,
    k: int = 5,
    block: int = 1024,
) -> np.ndarray:
    """k-NN class prediction by cosine similarity, majority vote, ties by summed cosine.

    Args:
      gallery: [N, D] embeddings; gallery_labels: int [N].
      queries: [M, D] embeddings.
      k: neighbours.
      block: queries per similarity block (memory: block x N floats).

    Returns:
      int [M] predicted labels.
    """
    if k < 1 or k > len(gallery):
        raise ValueError(f"k={k} must be in [1, gallery size {len(gallery)}]")
    gallery, queries = _unit(gallery), _unit(queries)
    classes, gallery_idx = np.unique(gallery_labels, return_inverse=True)
    preds = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), block):
        sims = queries[start : start + block] @ gallery.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        votes = np.zeros((len(sims), len(classes)), np.float64)
        rows = np.repeat(np.arange(len(sims)), k)
        # One vote per neighbour; the 1e-3 * cosine term only breaks ties.
        np.add.at(votes, (rows, gallery_idx[top].ravel()), 1.0 + 1e-3 * top_sims.ravel())
        preds[start : start + block] = classes[np.argmax(votes, axis=1)]
    return preds


def knn_accuracy(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    k: int = 5,
) -> float:
    """Fraction of queries whose k-NN prediction equals their label."""
    preds = knn_predict(gallery, gallery_labels, queries, k)
    return float(np.mean(preds == np.asarray(query_labels)))


def _stats(values: np.ndarray) -> dict:
    return {
        "count": int(len(values)),
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "quantiles": {f"q{round(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES},
    }


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted 1/2."""
    scores = np.concatenate([positive, negative])
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def cosine_distributions(
    cls: np.ndarray, labels: np.ndarray, num_pairs: int = 20000, seed: int = 0
) -> tuple[dict, np.ndarray, np.ndarray]:
    """CLS cosine of random same-class and different-class pairs.

    Args:
      cls: [N, D] embeddings; labels: int [N].
      num_pairs: pairs drawn of each kind (i != j).
      seed: numpy seed.

    Returns:
      (report {same, different: mean/std/quantiles, auc}, same_cos [P], diff_cos [P]).
    """
    rng = np.random.default_rng(seed)
    unit = _unit(cls)
    classes, label_idx = np.unique(np.asarray(labels), return_inverse=True)
    counts = np.bincount(label_idx)
    order = np.argsort(label_idx, kind="stable")
    offsets = np.cumsum(counts) - counts
    usable = np.flatnonzero(counts >= 2)
    if len(classes) < 2 or not len(usable):
        raise ValueError("cosine_distributions needs >= 2 classes and a class with >= 2 images")
    # Same-class pairs are rare with many classes: draw a class, then two distinct members.
    pick = rng.choice(usable, size=num_pairs)
    first = rng.integers(0, counts[pick])
    second = (first + rng.integers(1, counts[pick])) % counts[pick]
    same_a, same_b = order[offsets[pick] + first], order[offsets[pick] + second]
    # Different-class pairs: uniform pairs, rejecting same-class ones.
    a = rng.integers(0, len(label_idx), size=4 * num_pairs + 100)
    b = rng.integers(0, len(label_idx), size=4 * num_pairs + 100)
    keep = label_idx[a] != label_idx[b]
    diff_a, diff_b = a[keep][:num_pairs], b[keep][:num_pairs]
    same_cos = np.sum(unit[same_a] * unit[same_b], axis=1)
    diff_cos = np.sum(unit[diff_a] * unit[diff_b], axis=1)
    report = {
        "same": _stats(same_cos),
        "different": _stats(diff_cos),
        "auc_same_vs_different": roc_auc(same_cos, diff_cos),
    }
    return report, same_cos, diff_cos


def save_cosine_histogram(same_cos: np.ndarray, diff_cos: np.ndarray, path: str) -> None:
    """Writes overlaid histograms of the two cosine distributions as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    bins = np.linspace(-1.0, 1.0, 81)
    ax.hist(same_cos, bins=bins, alpha=0.6, density=True, label="same class")
    ax.hist(diff_cos, bins=bins, alpha=0.6, density=True, label="different class")
    ax.set_xlabel("cosine(CLS_a, CLS_b)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    atomic_files.save_figure(fig, path, format="png")


def evaluate_encoder(
    bundle: EncoderBundle,
    gallery_images: np.ndarray,
    gallery_labels: np.ndarray,
    query_images: np.ndarray,
    query_labels: np.ndarray,
    *,
    k: int = 5,
    seed: int = 0,
    log: Log = log_stderr,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """k-NN accuracy (CLS cosine) and query-set cosine distributions.

    Returns:
      (report dict, same_cos, diff_cos).
    """
    start = time.perf_counter()
    _, gallery_cls = encoder.encode(bundle, gallery_images, with_tokens=False)
    _, query_cls = encoder.encode(bundle, query_images, with_tokens=False)
    encode_seconds = time.perf_counter() - start
    log(
        f"encoder eval: encoded {len(gallery_cls) + len(query_cls)} images in "
        f"{encode_seconds:.1f} s"
    )
    accuracy = knn_accuracy(gallery_cls, gallery_labels, query_cls, query_labels, k)
    dists, same_cos, diff_cos = cosine_distributions(query_cls, query_labels, seed=seed)
    report = {
        f"knn{k}_accuracy": accuracy,
        "k": k,
        "gallery_size": int(len(gallery_cls)),
        "query_size": int(len(query_cls)),
        "cosine": dists,
        "encode_seconds": round(encode_seconds, 2),
    }
    return report, same_cos, diff_cos


def _install_in_cache(source: str, config: ml_collections.ConfigDict, log: Log) -> None:
    """Copies a trained encoder dir into <cache_dir>/encoder/<key> if that is still empty."""
    target = os.path.join(os.path.abspath(config.cache_dir), "encoder", encoder.encoder_key(config))
    if os.path.exists(target):
        return
    tmp = ""
    try:
        tmp = atomic_files.temp_dir_beside(target)
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if atomic_files.publish_dir(tmp, target):
            log(f"encoder: installed in cache {target}")
    except OSError:
        pass  # another process installed it first
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run_encoder_job(config: ml_collections.ConfigDict, workdir: str, log: Log = log_stderr) -> dict:
    """Trains (or reuses WORKDIR/encoder) and evaluates; returns the evaluation report."""
    from semantica_jax.data import mnist as mnist_data

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    atomic_files.write_json(
        os.path.join(workdir, "config.json"), config.to_dict(), sort_keys=True, default=list
    )
    data_dir = mnist_data.resolve_data_dir(config)

    def split(name):
        return mnist_data.load_split(
            config.data.dataset,
            name,
            data_dir,
            config.data.image_size,
            config.data.channels,
            config.data.max_examples,
        )

    train_images, train_labels = split(config.data.train_split)
    enc_dir = os.path.join(workdir, "encoder")
    vit = encoder.ViTConfig.from_config(
        config.encoder, config.data.image_size, config.data.channels
    )
    if os.path.isdir(enc_dir):
        log(f"encoder: {enc_dir} exists; evaluating it (delete it to retrain)")
        bundle = encoder.load_encoder(enc_dir, expected=vit)
    else:
        bundle = encoder.train_and_save(config, enc_dir, train_images, train_labels, log=log)
        _install_in_cache(enc_dir, config, log)
    test_images, test_labels = split(config.data.eval_split)
    report, same_cos, diff_cos = evaluate_encoder(
        bundle, train_images, train_labels, test_images, test_labels, seed=config.seed, log=log
    )
    with open(os.path.join(enc_dir, "encoder.json")) as f:
        report["train"] = json.load(f).get("train", {})
    report.update(key=bundle.key, params_hash=bundle.params_hash, encoder_dir=enc_dir)
    atomic_files.write_json(
        os.path.join(workdir, "encoder_eval.json"), report, sort_keys=True, default=list
    )
    save_cosine_histogram(same_cos, diff_cos, os.path.join(workdir, "encoder_cosine_hist.png"))
    cos = report["cosine"]
    accuracy = report[f"knn{report['k']}_accuracy"]
    log(
        f"encoder eval: k-NN(k={report['k']}) accuracy {accuracy:.4f}  "
        f"cos same {cos['same']['mean']:.3f}±{cos['same']['std']:.3f}  "
        f"different {cos['different']['mean']:.3f}±{cos['different']['std']:.3f}  "
        f"AUC {cos['auc_same_vs_different']:.4f}  -> {workdir}/encoder_eval.json"
    )
    return report


def run() -> None:
    """absl entry point of `python -m semantica_jax.encoder`."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "encoder config file, e.g. configs/encoder_mnist.py", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "where the encoder and its evaluation are written")
    flags.mark_flags_as_required(["config", "workdir"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        # Progress goes to stderr via `log`; Orbax logs every save/restore at INFO.
        logging.set_verbosity(logging.WARNING)
        run_encoder_job(flags.FLAGS.config, flags.FLAGS.workdir)

    app.run(main)
