"""Generative augmentation (seed 004, SGID): the pure parts, by formula.

* Guidance from similarity. SGID sets its guidance with f(s) = -4 s² + 2 s + 1 of a
  similarity s in [0, 0.5] (f(0) = 1, f(0.25) = 1.25, f(0.5) = 1). Our s is an image-image
  cosine in the frozen encoder's CLS space, between an image and its class prototype, whose
  range [lo, hi] differs from SGID's; METHODS §9 maps it affinely first:
  s' = 0.5 clip((s - lo) / (hi - lo), 0, 1), w = max(0, w0 f(s')).
* Class prototypes: for image i of class c, the mean CLS of the *other* labelled images of c
  (leave-one-out); an image alone in its class is its own prototype (s = 1).
* The filter: keep a variation iff low <= cos(CLS(variation), CLS(source)) < high (low:
  a percentile of same-class real-pair cosines; high: drops near-copies).
* DA-Fusion mixing: each training draw is replaced by one of its variations with
  probability p (0.5).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from semantica_jax.data import image_augment
from semantica_jax.utils.cosine import l2_normalize, rowwise_cosine


def sgid_f(s: np.ndarray | float) -> np.ndarray:
    """SGID's guidance curve f(s) = -4 s² + 2 s + 1 (elementwise)."""
    s = np.asarray(s, np.float64)
    return -4.0 * s * s + 2.0 * s + 1.0


def rescale_similarity(s: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    """s' = 0.5 clip((s - lo) / (hi - lo), 0, 1): a cosine range onto SGID's [0, 0.5]."""
    if not hi > lo:
        raise ValueError(f"similarity range needs hi > lo, got lo={lo}, hi={hi}")
    return 0.5 * np.clip((np.asarray(s, np.float64) - lo) / (hi - lo), 0.0, 1.0)


def guidance_from_similarity(
    s: np.ndarray | float, *, w0: float, lo: float, hi: float
) -> np.ndarray:
    """w = max(0, w0 f(s')) with s' = rescale_similarity(s, lo, hi); in [w0, 1.25 w0]."""
    return np.maximum(0.0, w0 * sgid_f(rescale_similarity(s, lo, hi)))


def prototype_similarity(cls: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine of each image's CLS to its leave-one-out class prototype.

    Args:
      cls: [N, D] CLS embeddings; labels: int [N].

    Returns:
      float64 [N]: cos(cls_i, mean of cls_j over j != i with labels_j == labels_i); 1.0
      for an image alone in its class.
    """
    cls = np.asarray(cls, np.float64)
    labels = np.asarray(labels)
    if cls.ndim != 2 or labels.shape != (cls.shape[0],):
        raise ValueError(f"need cls [N, D] and labels [N]; got {cls.shape}, {labels.shape}")
    out = np.ones(len(labels), np.float64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 2:
            continue
        total = cls[rows].sum(axis=0)
        others = (total[None] - cls[rows]) / (len(rows) - 1)
        out[rows] = rowwise_cosine(cls[rows], others)
    return out


def accept_variations(
    variation_cls: np.ndarray, source_cls: np.ndarray, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """(keep bool [M], cosines float64 [M]): low <= cos(variation_cls[m], source_cls[m]) <
    high, with the cosines themselves (the provenance); both inputs [M, D]."""
    cos = rowwise_cosine(np.asarray(variation_cls, np.float64), np.asarray(source_cls, np.float64))
    return (cos >= low) & (cos < high), cos


def same_class_cosine_percentile(
    cls: np.ndarray, labels: np.ndarray, q: float, max_pairs: int = 20_000, seed: int = 0
) -> float:
    """The q-th percentile (0-100) of the CLS cosine of distinct same-class image pairs.

    All pairs when there are at most `max_pairs`, else a seeded uniform draw of them.

    Raises:
      ValueError: no class has two images.
    """
    unit = l2_normalize(np.asarray(cls, np.float64))
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    cosines = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 2:
            continue
        i, j = np.triu_indices(len(rows), k=1)
        if len(i) > max_pairs:
            pick = rng.choice(len(i), max_pairs, replace=False)
            i, j = i[pick], j[pick]
        cosines.append(np.sum(unit[rows[i]] * unit[rows[j]], axis=-1))
    if not cosines:
        raise ValueError("a same-class cosine needs a class with at least two images")
    return float(np.percentile(np.concatenate(cosines), q))


def dafusion_draws(
    rng: np.random.Generator, source_index: np.ndarray, num_variations: np.ndarray, p: float
) -> tuple[np.ndarray, np.ndarray]:
    """DA-Fusion mixing for one batch of draws.

    Args:
      rng: numpy generator.
      source_index: int [B] the real images drawn.
      num_variations: int [N_real] kept variations per real image.
      p: probability of replacing a draw by one of its variations.

    Returns:
      (use_variation bool [B], variation_slot int [B]): where use_variation, the draw is
      variation number variation_slot of its source (uniform among its kept ones); a
      source without a kept variation stays real.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"mixing probability must be in [0, 1], got {p}")
    source_index = np.asarray(source_index)
    available = np.asarray(num_variations)[source_index]
    use = (rng.random(len(source_index)) < p) & (available > 0)
    slot = np.floor(rng.random(len(source_index)) * np.maximum(available, 1)).astype(np.int64)
    return use, np.where(use, slot, 0)


# --- standard augmentation (the baseline generative augmentation must beat) ---------------

# The few-shot baseline: rotation ±10°, shift ±10%, scale 0.9-1.1, then an elastic
# deformation with Simard et al. (2003)'s MNIST field (sigma 4 px, alpha 34 px).
STANDARD_JITTER = image_augment.Jitter(
    rotation_deg=10.0, scale=0.1, shift=0.1, elastic_alpha=34.0, elastic_sigma=4.0
)


def standard_augment(key, images, elastic: bool = True):
    """Random affine (+ elastic) per image (dm-pix, `data.image_augment`): images
    [B, H, W, C] float in [-1, 1] (background -1) -> the same shape. Jit- and
    vmap-friendly; one key per batch."""
    jitter = STANDARD_JITTER if elastic else dataclasses.replace(STANDARD_JITTER, elastic_alpha=0.0)
    return image_augment.jitter_images(key, images, jitter)
