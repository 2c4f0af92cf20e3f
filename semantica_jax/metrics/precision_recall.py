"""Improved precision and recall (Kynkäänniemi et al. 2019; METHODS §5.1), blocked, in JAX.

Each point of a set gets a radius: the distance to its k-th nearest *other* point of the
same set. A query point is "in the manifold" of a set if it lies within the radius of at
least one of its points (membership uses <=). Then

  precision = fraction of generated points inside the real manifold   (quality)
  recall    = fraction of real points inside the generated manifold   (diversity)

All distances are *squared* Euclidean distances (monotone, so the same answer), computed
as |u|^2 - 2 u.v + |v|^2 clipped at 0, a block of rows at a time so that memory is
[block_size, N] rather than [N, N]. Radii and membership tests use the same formula, so a
point copied exactly into the other set is inside its own radius.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _sq_dists(a: jax.Array, b: jax.Array, b_sq_norm: jax.Array) -> jax.Array:
    """Squared distances [B,N] between rows of a [B,F] and rows of b [N,F]."""
    # HIGHEST: on GPU/TPU the default f32 matmul runs in TF32/bf16, whose error would
    # swamp the small k-NN distances that decide membership.
    cross = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    a_sq_norm = jnp.sum(a * a, axis=1)
    return jnp.maximum(a_sq_norm[:, None] - 2.0 * cross + b_sq_norm[None, :], 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _block_kth_sq_dist(block: jax.Array, feats: jax.Array, k: int) -> jax.Array:
    """[B] squared distance from each row of block [B,F] to its k-th neighbour in feats.

    The block rows are rows of feats, so the sorted row holds the point itself at index 0
    (distance 0) and index k is the k-th neighbour excluding self, as in the official code.
    """
    d = _sq_dists(block, feats, jnp.sum(feats * feats, axis=1))
    neg_smallest, _ = jax.lax.top_k(-d, k + 1)
    return -neg_smallest[:, k]


@jax.jit
def _block_membership(block: jax.Array, ref: jax.Array, ref_sq_radii: jax.Array) -> jax.Array:
    """[B] bool: whether each row of block [B,F] lies within some ref point's radius."""
    d = _sq_dists(block, ref, jnp.sum(ref * ref, axis=1))
    return jnp.any(d <= ref_sq_radii[None, :], axis=1)


def _as_features(feats: np.ndarray, name: str) -> jax.Array:
    """Checks a feature matrix [N,F] and returns it as a float32 JAX array."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty feature matrix [N,F]; got {feats.shape}.")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"{name} contains NaN or Inf; check the feature network's inputs.")
    return jnp.asarray(feats, dtype=jnp.float32)


def _check_block_size(block_size: int) -> None:
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size}.")


def _map_row_blocks(fn, rows: jax.Array, block_size: int) -> np.ndarray:
    """Applies fn(block [block_size,F]) -> [block_size] over rows [N,F], returns [N].

    The last block is zero-padded to block_size so that fn compiles once per shape.
    """
    n = rows.shape[0]
    block_size = min(block_size, n)
    outputs = []
    for start in range(0, n, block_size):
        block = rows[start : start + block_size]
        valid = block.shape[0]
        if valid < block_size:
            block = jnp.pad(block, ((0, block_size - valid), (0, 0)))
        outputs.append(np.asarray(fn(block))[:valid])
    return np.concatenate(outputs)


def knn_sq_radii(feats: np.ndarray, k: int = 3, block_size: int = 1000) -> np.ndarray:
    """Squared k-NN radii of a feature set.

    Args:
      feats: [N,F] features, N > k.
      k: neighbourhood size (3 in the paper).
      block_size: rows per distance block (memory ~ block_size * N floats).

    Returns:
      float32 [N]: squared distance from each point to its k-th nearest other point.
    """
    feats = _as_features(feats, "feats")
    _check_block_size(block_size)
    if k < 1 or feats.shape[0] <= k:
        raise ValueError(
            f"k-NN radii need 1 <= k < N; got k={k} with N={feats.shape[0]} points. "
            "Use more samples or a smaller k."
        )
    return _map_row_blocks(lambda b: _block_kth_sq_dist(b, feats, k), feats, block_size)


def knn_radii(feats: np.ndarray, k: int = 3, block_size: int = 1000) -> np.ndarray:
    """k-NN radii [N] (plain Euclidean distances) of feats [N,F]; see `knn_sq_radii`."""
    return np.sqrt(knn_sq_radii(feats, k, block_size))


def in_manifold(
    query: np.ndarray, ref: np.ndarray, ref_sq_radii: np.ndarray, block_size: int = 1000
) -> np.ndarray:
    """Which query points lie inside the k-NN manifold of a reference set.

    Args:
      query: [M,F] points to test.
      ref: [N,F] reference points.
      ref_sq_radii: [N] squared radii of ref (from `knn_sq_radii(ref)`).
      block_size: query rows per distance block.

    Returns:
      bool [M]: True where |q - r|^2 <= ref_sq_radii[r] for some r.
    """
    query = _as_features(query, "query")
    ref = _as_features(ref, "ref")
    _check_block_size(block_size)
    if query.shape[1] != ref.shape[1]:
        raise ValueError(
            f"feature widths differ: query {query.shape} vs ref {ref.shape}; "
            "use the same feature network for both sets."
        )
    radii = jnp.asarray(ref_sq_radii, jnp.float32)
    if radii.shape != (ref.shape[0],):
        raise ValueError(f"ref_sq_radii has shape {radii.shape}; expected ({ref.shape[0]},).")
    return _map_row_blocks(lambda b: _block_membership(b, ref, radii), query, block_size)


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, block_size: int = 1000
) -> tuple[float, float]:
    """Improved precision and recall of fake [M,F] against real [N,F] features.

    Args:
      real: [N,F] features of real images, N > k.
      fake: [M,F] features of generated images, M > k.
      k: neighbourhood size for the radii (3, the official default).
      block_size: rows per distance block.

    Returns:
      (precision, recall) as Python floats in [0, 1].
    """
    real_sq_radii = knn_sq_radii(real, k, block_size)
    fake_sq_radii = knn_sq_radii(fake, k, block_size)
    precision = in_manifold(fake, real, real_sq_radii, block_size).mean()
    recall = in_manifold(real, fake, fake_sq_radii, block_size).mean()
    return float(precision), float(recall)
