"""Alignment and diversity of image variations, and the real-data floor of FID/P/R.

- alignment: how close the variations stay to their conditioning image (mean cosine in a
  given embedding space; the caller computes it in encoder space and in feature-network
  space). A copier scores 1.
- diversity: how different the variations of one conditioning image are from each other
  (mean pairwise feature distance, averaged over conditioning images). A copier scores 0.
- class_consistency: the share of variations a classifier assigns to their conditioning
  image's class, overall and per class (the worst class bounds what a few-shot user of
  the variations can trust).
- real_floor: FID/precision/recall between two disjoint real sets of the same size N, the
  best a generator can hope for at that N (FID is biased upward at small N); report it next
  to every FID.
"""

import numpy as np

from semantica_jax.metrics.fewshot import kshot_metrics
from semantica_jax.utils.cosine import l2_normalize


def _check_grouped(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(
            f"{name} must be grouped per conditioning image, [K,S,F]; got {x.shape}. "
            "Reshape conditioning-major samples [K*S,F] with x.reshape(K, S, -1)."
        )
    return x


def alignment(cond_emb: np.ndarray, sample_emb: np.ndarray, eps: float = 1e-12) -> float:
    """Mean cosine similarity between each conditioning image and its variations.

    Args:
      cond_emb: [K,E] embeddings of the K conditioning images.
      sample_emb: [K,S,E] embeddings of their S variations each (same space).
      eps: guards the normalisation of all-zero embeddings.

    Returns:
      mean over k, s of cos(cond_emb[k], sample_emb[k, s]), in [-1, 1].
    """
    cond_emb = np.asarray(cond_emb, dtype=np.float64)
    sample_emb = _check_grouped(sample_emb, "sample_emb")
    if cond_emb.ndim != 2 or cond_emb.shape != (sample_emb.shape[0], sample_emb.shape[2]):
        raise ValueError(
            f"cond_emb has shape {cond_emb.shape}; expected (K, E) = "
            f"{(sample_emb.shape[0], sample_emb.shape[2])} to match sample_emb {sample_emb.shape}."
        )
    cond_unit, sample_unit = l2_normalize(cond_emb, eps), l2_normalize(sample_emb, eps)
    return float(np.mean(np.einsum("ke,kse->ks", cond_unit, sample_unit)))


def class_consistency(predicted: np.ndarray, labels: np.ndarray) -> dict:
    """Share of variations whose predicted class is their conditioning image's class.

    Args:
      predicted: [N] int class predicted for each variation (e.g. `features.classify`).
      labels: [N] int class of each variation's conditioning image.

    Returns:
      {"class_consistency": mean over all N, "class_consistency_per_class": {str(class):
      mean over the variations of that class}, "class_consistency_min": the lowest of
      those, "class_consistency_min_class": its class (str)}.
    """
    predicted = np.asarray(predicted).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if predicted.shape != labels.shape or not len(labels):
        raise ValueError(
            f"predicted {predicted.shape} and labels {labels.shape} must be the same "
            "non-empty length: one predicted class per variation"
        )
    hit = predicted == labels
    per = {str(c): float(np.mean(hit[labels == c])) for c in np.unique(labels)}
    worst = min(per, key=per.get)
    return {
        "class_consistency": float(np.mean(hit)),
        "class_consistency_per_class": per,
        "class_consistency_min": per[worst],
        "class_consistency_min_class": worst,
    }


def encoder_attribution(
    predicted: np.ndarray, encoder_predicted: np.ndarray, labels: np.ndarray
) -> dict:
    """Which class-consistency misses the encoder explains: where the frozen encoder puts a
    conditioning image among another class, a decoder that follows its conditioning cannot
    keep the class.

    Args:
      predicted: [N] int class predicted for each variation (e.g. `features.classify`).
      encoder_predicted: [N] int class the encoder gives each variation's conditioning image
        (k-NN on its embedding, `encoder.evaluate.knn_predict`).
      labels: [N] int class of each variation's conditioning image.

    Returns:
      {"encoder_knn_accuracy": share of variations whose conditioning image the encoder
      puts in its class, "encoder_knn_accuracy_per_class": {str(class): that share},
      "class_consistency_encoder_right": class consistency over those variations (nan if
      none), "class_consistency_encoder_right_per_class": {str(class): the same},
      "encoder_wrong_share": share of the other variations, "follows_encoder_where_wrong":
      share of those whose class is the encoder's (nan if none)}.
    """
    predicted, encoder_predicted, labels = (
        np.asarray(a).reshape(-1) for a in (predicted, encoder_predicted, labels)
    )
    if not (predicted.shape == encoder_predicted.shape == labels.shape) or not len(labels):
        raise ValueError(
            f"predicted {predicted.shape}, encoder_predicted {encoder_predicted.shape} and "
            f"labels {labels.shape} must be the same non-empty length: one per variation"
        )
    right = encoder_predicted == labels
    enc = class_consistency(encoder_predicted, labels)
    out = {
        "encoder_knn_accuracy": enc["class_consistency"],
        "encoder_knn_accuracy_per_class": enc["class_consistency_per_class"],
        "class_consistency_encoder_right": float("nan"),
        "class_consistency_encoder_right_per_class": {},
        "encoder_wrong_share": float(np.mean(~right)),
        "follows_encoder_where_wrong": float("nan"),
    }
    if right.any():
        kept = class_consistency(predicted[right], labels[right])
        out["class_consistency_encoder_right"] = kept["class_consistency"]
        out["class_consistency_encoder_right_per_class"] = kept["class_consistency_per_class"]
    if (~right).any():
        out["follows_encoder_where_wrong"] = float(
            np.mean(predicted[~right] == encoder_predicted[~right])
        )
    return out


def mean_pairwise_distance(feats: np.ndarray) -> float:
    """Mean Euclidean distance over all unordered pairs of rows of feats [S,F], S >= 2.

    Differences are taken directly (not via the Gram matrix) so that identical rows give
    exactly 0; memory stays [S,F].
    """
    feats = np.asarray(feats, dtype=np.float64)
    s = feats.shape[0]
    if s < 2:
        raise ValueError(f"diversity needs >= 2 samples per conditioning image; got {s}.")
    total = 0.0
    for i in range(s - 1):
        total += np.linalg.norm(feats[i + 1 :] - feats[i], axis=1).sum()
    return total / (s * (s - 1) / 2)


def diversity(sample_feats: np.ndarray) -> float:
    """Mean pairwise feature distance among the variations of each conditioning image.

    Args:
      sample_feats: [K,S,F] features of S >= 2 variations of each of K conditioning images.

    Returns:
      mean over k of the mean pairwise distance among sample_feats[k] (0 for copies).
    """
    sample_feats = _check_grouped(sample_feats, "sample_feats")
    return float(np.mean([mean_pairwise_distance(group) for group in sample_feats]))


def per_sample_diversity(sample_feats: np.ndarray) -> np.ndarray:
    """Each variation's mean distance to the other variations of its conditioning image.

    Args:
      sample_feats: [K,S,F] features, S >= 2.

    Returns:
      float64 [K*S]; its mean is `diversity(sample_feats)` (equal group sizes), and its
      rows are what a bootstrap over the samples resamples.
    """
    sample_feats = _check_grouped(sample_feats, "sample_feats").astype(np.float64)
    k, s, _ = sample_feats.shape
    if s < 2:
        raise ValueError(f"diversity needs >= 2 samples per conditioning image; got {s}.")
    out = np.empty((k, s), np.float64)
    for g, group in enumerate(sample_feats):
        for i in range(s):
            out[g, i] = np.linalg.norm(group - group[i], axis=1).sum() / (s - 1)
    return out.reshape(-1)


def real_floor(
    feats: np.ndarray,
    n: int,
    seed: int,
    *,
    other: np.ndarray | None = None,
    pr_k: int = 3,
    block_size: int = 1000,
) -> dict[str, float]:
    """FID/precision/recall between two disjoint real sets of size n.

    Args:
      feats: [M,F] real features. Without `other`, two disjoint random subsets of n rows
        are drawn from it (needs M >= 2n).
      n: size of each set (use the N of the evaluation it is reported next to).
      seed: seed of the random subsets.
      other: optional [M',F] features of a disjoint real set (e.g. a train slice when
        feats is the test split); then n rows are drawn from each of feats and other.
      pr_k: k of precision/recall.
      block_size: rows per distance block.

    Returns:
      {'fid', 'precision', 'recall', 'n'}.
    """
    feats = np.asarray(feats)
    rng = np.random.default_rng(seed)
    if other is None:
        if feats.shape[0] < 2 * n:
            raise ValueError(
                f"real_floor needs 2n = {2 * n} rows to draw two disjoint sets; got "
                f"{feats.shape[0]}. Lower n or pass a disjoint set as `other`."
            )
        order = rng.permutation(feats.shape[0])
        set_a, set_b = feats[order[:n]], feats[order[n : 2 * n]]
    else:
        other = np.asarray(other)
        if min(feats.shape[0], other.shape[0]) < n:
            raise ValueError(
                f"real_floor needs n = {n} rows in each set; got {feats.shape[0]} and "
                f"{other.shape[0]}."
            )
        set_a = feats[rng.choice(feats.shape[0], n, replace=False)]
        set_b = other[rng.choice(other.shape[0], n, replace=False)]
    metrics = kshot_metrics(set_a, set_b, pr_k=pr_k, block_size=block_size)
    metrics["n"] = n
    return metrics
