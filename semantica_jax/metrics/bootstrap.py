"""Percentile bootstrap intervals for statistics of one or more samples.

Each sample (an array whose first axis indexes independent draws: images, triplets,
feature rows) is resampled with replacement on its own, the statistic recomputed on the
resampled arrays, and the interval read off the percentiles of those recomputations. The
point estimate is the statistic of the original arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def bootstrap_interval(
    statistic: Callable[..., float],
    *samples: np.ndarray,
    num_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    debias: bool = False,
) -> dict[str, Any]:
    """The statistic with its percentile bootstrap interval.

    With `debias`, the interval is shifted by the bootstrap bias estimate (mean of the
    replicates minus the statistic), for statistics that resampling with replacement
    biases, such as FID (repeated rows shrink the effective sample and inflate it).

    Args:
      statistic: f(*samples) -> float.
      samples: arrays [N_i, ...], each resampled along axis 0 independently of the others.
      num_resamples: bootstrap replicates B.
      level: coverage of the interval, e.g. 0.95.
      seed: numpy seed of the resampling.

    Returns:
      {"value": f(*samples), "low", "high": the (1 ± level)/2 percentiles, "level",
       "num_resamples", "n": [N_i]}.

    Raises:
      ValueError: no sample, an empty sample, level outside (0, 1) or B < 2.
    """
    if not samples or any(len(s) == 0 for s in samples):
        raise ValueError("bootstrap_interval needs at least one non-empty sample")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if num_resamples < 2:
        raise ValueError(f"num_resamples must be >= 2, got {num_resamples}")
    rng = np.random.default_rng(seed)
    samples = tuple(np.asarray(s) for s in samples)
    replicates = np.empty(num_resamples, np.float64)
    for b in range(num_resamples):
        drawn = [s[rng.integers(0, len(s), len(s))] for s in samples]
        replicates[b] = float(statistic(*drawn))
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    value = float(statistic(*samples))
    bias = float(np.mean(replicates)) - value if debias else 0.0
    return {
        "value": value,
        "low": float(low - bias),
        "high": float(high - bias),
        "bias": bias,
        "level": float(level),
        "num_resamples": int(num_resamples),
        "n": [int(len(s)) for s in samples],
    }


def separated(a: dict[str, Any], b: dict[str, Any]) -> int:
    """+1 if interval a lies wholly above b, -1 if wholly below, 0 if they overlap."""
    if a["low"] > b["high"]:
        return 1
    if a["high"] < b["low"]:
        return -1
    return 0


def mean_interval(values: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    """Mean of per-item values [N] (e.g. 0/1 correctness) with its bootstrap interval."""
    return bootstrap_interval(lambda v: float(np.mean(v)), np.asarray(values, np.float64), **kwargs)


def fid_interval(real: np.ndarray, fake: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    """FID of fake [M,F] against real [N,F] features; both sets resampled.

    Resampling with replacement repeats rows, which inflates every replicate's FID (by
    ~15 at N = 500 on MNIST); the interval is shifted back by that bootstrap bias
    estimate (`debias`), so it brackets the measured FID with the bootstrap's spread.
    """
    from semantica_jax.metrics.fid import frechet_distance

    return bootstrap_interval(frechet_distance, real, fake, debias=True, **kwargs)


def precision_recall_intervals(
    real: np.ndarray, fake: np.ndarray, k: int = 3, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    """Improved precision and recall with intervals over the evaluated points.

    The two k-NN manifolds are built once from the full sets; precision is the mean of the
    fake points' membership in the real manifold and recall the mean of the real points'
    membership in the fake one, so each is bootstrapped as a mean of 0/1 indicators
    (resampling the manifolds themselves would put duplicates at radius 0).
    """
    from semantica_jax.metrics.precision_recall import in_manifold, knn_sq_radii

    fake_in_real = in_manifold(fake, real, knn_sq_radii(real, k))
    real_in_fake = in_manifold(real, fake, knn_sq_radii(fake, k))
    return {
        "precision": mean_interval(fake_in_real, **kwargs),
        "recall": mean_interval(real_in_fake, **kwargs),
    }
