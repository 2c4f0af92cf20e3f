"""Evaluation of the frozen encoder.

* `nearest`, `knn_predict`, `knn_accuracy`: k nearest gallery rows (cosine on CLS), their
  majority class, and its accuracy on labelled queries.
* `cosine_distributions`: same-class vs different-class CLS cosine statistics (+ ROC AUC).
* `evaluate_encoder`: both, for a bundle on a gallery and a query set.
The job that trains and evaluates an encoder into a workdir is `train_encoder.py`.
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from semantica_jax.encoder.bundle import EncoderBundle
from semantica_jax.encoder.encode import encode
from semantica_jax.utils import atomic_files
from semantica_jax.utils.cosine import l2_normalize

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


# Similarities held at once by `nearest` (block x gallery size): ~64 MB of float32 (twice,
# with their negation) and ~128 MB of partition indices, whatever the gallery's size.
_BLOCK_ELEMENTS = 1 << 24


def nearest(
    gallery: np.ndarray, queries: np.ndarray, k: int, block: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar gallery rows of each query, in no particular order.

    Args:
      gallery: [N, D] embeddings; queries: [M, D] embeddings.
      k: neighbours, 1 <= k <= N.
      block: queries per similarity block (memory: block x N); None bounds it to about
        16M similarities.

    Returns:
      (int [M, k] gallery indices, float [M, k] their cosines).
    """
    if k < 1 or k > len(gallery):
        raise ValueError(f"k={k} must be in [1, gallery size {len(gallery)}]")
    gallery, queries = l2_normalize(gallery), l2_normalize(queries)
    block = block or max(1, _BLOCK_ELEMENTS // len(gallery))
    index = np.empty((len(queries), k), np.int64)
    cosine = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), block):
        sims = queries[start : start + block] @ gallery.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        index[start : start + block] = top
        cosine[start : start + block] = np.take_along_axis(sims, top, axis=1)
    return index, cosine


def knn_predict(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    queries: np.ndarray,
    k: int = 5,
    block: int | None = None,
) -> np.ndarray:
    """k-NN class prediction by cosine similarity, majority vote, ties by summed cosine.

    Args:
      gallery: [N, D] embeddings; gallery_labels: int [N].
      queries: [M, D] embeddings.
      k: neighbours.
      block: queries per similarity block (`nearest`).

    Returns:
      int [M] predicted labels.
    """
    top, top_sims = nearest(gallery, queries, k, block)
    classes, gallery_idx = np.unique(gallery_labels, return_inverse=True)
    votes = np.zeros((len(queries), len(classes)), np.float64)
    rows = np.repeat(np.arange(len(queries)), k)
    # One vote per neighbour; the 1e-3 * cosine term only breaks ties.
    np.add.at(votes, (rows, gallery_idx[top].ravel()), 1.0 + 1e-3 * top_sims.ravel())
    return classes[np.argmax(votes, axis=1)]


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
    unit = l2_normalize(cls)
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
) -> tuple[dict, np.ndarray, np.ndarray]:
    """k-NN accuracy (CLS cosine) and query-set cosine distributions.

    Returns:
      (report dict, same_cos, diff_cos).
    """
    start = time.perf_counter()
    _, gallery_cls = encode(bundle, gallery_images, with_tokens=False)
    _, query_cls = encode(bundle, query_images, with_tokens=False)
    encode_seconds = time.perf_counter() - start
    logging.info(
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
