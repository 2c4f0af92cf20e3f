"""Two-alternative forced choice (2AFC): how often a distance picks the closer alternative.

A triplet (reference, x0, x1) comes with its ground truth g ∈ {0, 1}, the index of the
alternative that is closer to the reference (by construction, or a human majority vote as
in NIGHTS; METHODS §6.3). With d0 = d(ref, x0) and d1 = d(ref, x1) a method is right when
it calls the same alternative closer; a tie is half right:

  accuracy = mean[(d0 < d1)(1 - g) + (d1 < d0) g + ½ (d0 = d1)]

Chance is 0.5. For a similarity s (higher = closer) pass d = -s. The interval is the
percentile bootstrap of the mean over triplets (`metrics/bootstrap.py`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semantica_jax.metrics import bootstrap


def correct(d0: Any, d1: Any, g: Any) -> np.ndarray:
    """Per-triplet credit in {0, ½, 1}: d0, d1 float [N] (distances), g int [N] in {0, 1}."""
    d0, d1 = np.asarray(d0, np.float64), np.asarray(d1, np.float64)
    g = np.asarray(g)
    if not (d0.shape == d1.shape == g.shape) or d0.ndim != 1:
        raise ValueError(f"d0, d1, g must be [N] each, got {d0.shape}, {d1.shape}, {g.shape}")
    if not np.isin(g, (0, 1)).all():
        raise ValueError("g must hold 0 (x0 is closer) or 1 (x1 is closer)")
    if not (np.isfinite(d0).all() and np.isfinite(d1).all()):
        raise ValueError("distances must be finite")
    g = g.astype(np.float64)
    return (d0 < d1) * (1.0 - g) + (d1 < d0) * g + 0.5 * (d0 == d1)


def accuracy(d0: Any, d1: Any, g: Any) -> float:
    """The 2AFC accuracy of distances d0, d1 [N] against ground truth g [N] (see above)."""
    credit = correct(d0, d1, g)
    if not len(credit):
        raise ValueError("no triplets")
    return float(credit.mean())


def summary(
    d0: Any, d1: Any, g: Any, *, level: float = 0.95, num_resamples: int = 1000, seed: int = 0
) -> dict[str, float | int]:
    """{'accuracy', 'ci_low', 'ci_high', 'n'} of one method on one set of triplets.

    The interval is `bootstrap.mean_interval` of the per-triplet credits: `num_resamples`
    resamples of the triplets with replacement, `level` coverage, numpy seed `seed`.
    """
    credit = correct(d0, d1, g)
    if not len(credit):
        raise ValueError("no triplets")
    result = bootstrap.mean_interval(credit, num_resamples=num_resamples, level=level, seed=seed)
    return {
        "accuracy": result["value"],
        "ci_low": result["low"],
        "ci_high": result["high"],
        "n": len(credit),
    }
