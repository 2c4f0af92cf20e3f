"""The one L2 normalisation and cosine similarity, for numpy and jax arrays alike."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x: Any):
    """jax.numpy for jax arrays (traced ones included), numpy otherwise."""
    return jnp if isinstance(x, jax.Array) else np


def l2_normalize(x: Any, eps: float = 1e-12) -> Any:
    """x / max(||x||, eps) along the last axis: [..., D] -> [..., D].

    Written as x * rsqrt(max(sum x², eps²)) so that its gradient is finite at x = 0.
    Returns the array kind it is given (numpy or jax).
    """
    xp = _xp(x)
    squared = xp.sum(x * x, axis=-1, keepdims=True)
    return x / xp.sqrt(xp.maximum(squared, eps * eps))


def rowwise_cosine(a: Any, b: Any) -> Any:
    """cos(a_i, b_i) of matching rows: a, b [..., D] -> [...]."""
    return _xp(a).sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of all row pairs: a [N, D], b [M, D] -> float32 numpy [N, M]."""
    a = l2_normalize(np.asarray(a, np.float32))
    b = l2_normalize(np.asarray(b, np.float32))
    return (a @ b.T).astype(np.float32)
