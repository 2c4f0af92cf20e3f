"""Semantica's K-shot protocol for image variations (seed 002 §7; METHODS §5.3).

From N real test images pick K conditioning images, generate N/K variations of each (N
samples in all), then compare the N real images with the N samples by FID, precision and
recall. A model that merely copies its conditioning image scores well on the full-set
protocol (K = N) but gets near-zero K-shot recall for small K, which is the point.

The orchestration is made of pure functions around two callables so that it can be tested
with fake models:

  generate_fn(cond_indices int [K], num_per_cond: int, rng: jax key) -> images [K*S,H,W,C]
      in [-1, 1], conditioning-major: sample s of conditioning image i at row i*S + s.
  feature_fn(images [B,H,W,C] in [-1, 1]) -> feats [B,F].
"""

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from semantica_jax.metrics.fid import frechet_distance
from semantica_jax.metrics.precision_recall import precision_recall

GenerateFn = Callable[[np.ndarray, int, jax.Array], np.ndarray]
FeatureFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class KShotResult:
    """What one K-shot evaluation produced.

    Attributes:
      metrics: {'fid', 'precision', 'recall', 'k', 'num_per_cond', 'num_images'}.
      cond_indices: int [K] indices (into the N real images) of the conditioning images.
      samples: [K*S,H,W,C] generated images, conditioning-major.
      sample_feats: [K*S,F] their features.
    """

    metrics: dict[str, float]
    cond_indices: np.ndarray
    samples: np.ndarray
    sample_feats: np.ndarray


def select_conditioning(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Picks K conditioning images among N.

    When K equals the number of classes in `labels`, exactly one image per class is taken
    (the one-shot setting of the paper: "one image per class"); otherwise K distinct images
    uniformly at random. The result is sorted by index, so it does not depend on the order
    in which the random draws were made.

    Args:
      labels: int [N] class labels (np.zeros(N) for unlabelled data: always random
        unless K == 1).
      k: number of conditioning images, 1 <= k <= N.
      seed: seed of the selection (numpy Generator).

    Returns:
      int32 [K] sorted indices into the N images.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [N]; got shape {labels.shape}.")
    n = labels.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}]; got k={k}.")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if k == classes.shape[0]:
        picks = [rng.choice(np.flatnonzero(labels == c)) for c in classes]
        return np.sort(np.asarray(picks, dtype=np.int32))
    return np.sort(rng.choice(n, size=k, replace=False).astype(np.int32))


def samples_per_conditioning(num_images: int, k: int) -> int:
    """N/K, the number of variations per conditioning image; N must be a multiple of K."""
    if k < 1 or num_images % k:
        raise ValueError(
            f"K-shot needs N divisible by K so that every conditioning image gets N/K samples; "
            f"got N={num_images}, K={k}. Choose eval.num_images as a multiple of every K."
        )
    return num_images // k


def compute_features(feature_fn: FeatureFn, images: np.ndarray) -> np.ndarray:
    """feature_fn(images) as a numpy [N,F] array, with a shape check."""
    feats = np.asarray(feature_fn(images))
    if feats.ndim != 2 or feats.shape[0] != images.shape[0]:
        raise ValueError(
            f"feature_fn returned shape {feats.shape} for {images.shape[0]} images; "
            "it must return one feature vector per image, [B,F]."
        )
    return feats


def kshot_metrics(
    real_feats: np.ndarray, gen_feats: np.ndarray, *, pr_k: int = 3, block_size: int = 1000
) -> dict[str, float]:
    """FID, precision and recall between N real and N generated feature vectors.

    Args:
      real_feats: [N,F] features of the N real test images.
      gen_feats: [M,F] features of the generated samples (M = N in the protocol).
      pr_k: k of the precision/recall k-NN radii.
      block_size: rows per distance block for precision/recall.

    Returns:
      {'fid': float, 'precision': float, 'recall': float}.
    """
    precision, recall = precision_recall(real_feats, gen_feats, k=pr_k, block_size=block_size)
    return {
        "fid": frechet_distance(real_feats, gen_feats),
        "precision": precision,
        "recall": recall,
    }


def generate_variations(
    generate_fn: GenerateFn, cond_indices: np.ndarray, num_per_cond: int, rng: jax.Array
) -> np.ndarray:
    """Calls generate_fn and checks it returned [K*S,...] conditioning-major samples."""
    samples = np.asarray(generate_fn(cond_indices, num_per_cond, rng))
    expected = cond_indices.shape[0] * num_per_cond
    if samples.shape[0] != expected:
        raise ValueError(
            f"generate_fn returned {samples.shape[0]} images for {cond_indices.shape[0]} "
            f"conditioning images x {num_per_cond} samples; expected {expected}."
        )
    return samples


def run_kshot(
    real_images: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    generate_fn: GenerateFn,
    feature_fn: FeatureFn,
    rng: jax.Array,
    seed: int = 0,
    real_feats: np.ndarray | None = None,
    pr_k: int = 3,
    block_size: int = 1000,
) -> KShotResult:
    """Runs the K-shot protocol end to end.

    Args:
      real_images: [N,H,W,C] real test images in [-1, 1] (only used for features when
        real_feats is not given; generate_fn indexes the same N images).
      labels: int [N] labels of the real images (one-shot selection when K = #classes).
      k: number of conditioning images K; N must be a multiple of K.
      generate_fn: see module docstring.
      feature_fn: see module docstring.
      rng: JAX key for sampling.
      seed: seed of the conditioning selection.
      real_feats: optional precomputed [N,F] features of real_images (reused across K).
      pr_k: k of precision/recall.
      block_size: rows per distance block for precision/recall.

    Returns:
      A KShotResult.
    """
    num_images = real_images.shape[0]
    if np.asarray(labels).shape[0] != num_images:
        raise ValueError(
            f"labels has {np.asarray(labels).shape[0]} entries for {num_images} real images."
        )
    num_per_cond = samples_per_conditioning(num_images, k)
    cond_indices = select_conditioning(labels, k, seed)
    if real_feats is None:
        real_feats = compute_features(feature_fn, real_images)
    samples = generate_variations(generate_fn, cond_indices, num_per_cond, rng)
    sample_feats = compute_features(feature_fn, samples)
    metrics = kshot_metrics(real_feats, sample_feats, pr_k=pr_k, block_size=block_size)
    metrics.update(k=k, num_per_cond=num_per_cond, num_images=num_images)
    return KShotResult(metrics, cond_indices, samples, sample_feats)
