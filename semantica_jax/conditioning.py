"""Conditioning controls: several reference images as one condition, a blend of two, and a
negative image in place of the null condition.

The decoder conditions on encoder tokens [T, D] (cross-attention) and a CLS vector [D]
(FiLM). A condition here is the dict the sampler takes (`decoder.make_variation_fn`):
  {'tokens': [B, T', D], 'cls': [B, D]}, optionally with
  'token_logw': [B, T'], the log attention weight of every token (0 = plain), added to the
    logits of each cross-attention, and
  'negative': {'tokens': [B, T'', D], 'cls': [B, D]}, the condition classifier-free
    guidance steers away from instead of the learned null ((1 + w) c - w neg).
T' may be n * T (n references): the decoder tiles its null sequence n times, which
attention treats exactly as the null itself. Everything is jnp and traced, so a new alpha,
scale or set of images of the same count never recompiles the sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def combine(tokens: jax.Array, cls: jax.Array) -> dict[str, jax.Array]:
    """n references -> one condition: tokens concatenated, CLS averaged.

    Args:
      tokens: [n, T, D]; cls: [n, D] (the encoder's outputs for the n images).

    Returns:
      {'tokens': [1, n T, D], 'cls': [1, D]}; n = 1 gives the image's own condition.
    """
    n, t, d = tokens.shape
    return {"tokens": tokens.reshape(1, n * t, d), "cls": jnp.mean(cls, axis=0, keepdims=True)}


def blend(tokens: jax.Array, cls: jax.Array, alpha: jax.Array | float) -> dict[str, jax.Array]:
    """Interpolates the conditions of two images a, b by alpha (0 = a, 1 = b).

    Cross-attention sees the tokens of both, each image's keys weighted by 1 - alpha and
    alpha (log weights added to the logits: every query spreads its attention over a and b
    in that proportion of their unnormalised weights); at alpha = 0 or 1 the other image's
    weights are exactly zero. The CLS is interpolated on the sphere's chord and rescaled:
    normalise((1 - alpha) a / |a| + alpha b / |b|) * ((1 - alpha) |a| + alpha |b|).

    Args:
      tokens: [2, T, D]; cls: [2, D] (image a first); alpha: scalar in [0, 1] (traced).

    Returns:
      {'tokens': [1, 2T, D], 'cls': [1, D], 'token_logw': [1, 2T]}.
    """
    alpha = jnp.asarray(alpha, jnp.float32)
    t = tokens.shape[1]
    norms = jnp.linalg.norm(cls, axis=-1, keepdims=True)
    unit = cls / jnp.maximum(norms, 1e-12)
    weights = jnp.stack([1.0 - alpha, alpha])
    direction = jnp.sum(weights[:, None] * unit, axis=0)
    direction = direction / jnp.maximum(jnp.linalg.norm(direction), 1e-12)
    mixed_cls = direction * jnp.sum(weights * norms[:, 0])
    logw = jnp.repeat(jnp.log(weights), t)  # log 0 = -inf: that image's keys get no weight
    out = combine(tokens, cls)
    return dict(out, cls=mixed_cls[None].astype(cls.dtype), token_logw=logw[None])


def with_negative(cond: dict, tokens: jax.Array, cls: jax.Array) -> dict:
    """`cond` guided away from a negative image: tokens [1, T, D], cls [1, D] (or [n, ...],
    combined). The negative replaces the null condition in classifier-free guidance."""
    negative = combine(tokens, cls) if tokens.shape[0] > 1 else {"tokens": tokens, "cls": cls}
    return dict(cond, negative=negative)


def repeat(cond: dict, num: int) -> dict:
    """Every leaf of a condition for one sample ([1, ...]) repeated to [num, ...]."""
    return jax.tree.map(lambda a: jnp.repeat(a, num, axis=0), cond)


def match_tokens(tokens: jax.Array, count: int) -> jax.Array:
    """[B, T, D] tiled along T to `count` tokens (a whole multiple of T): the same
    condition for attention, so conditions of different reference counts share a batch."""
    t = tokens.shape[1]
    if count % t:
        raise ValueError(f"cannot tile {t} condition tokens to {count}")
    return jnp.tile(tokens, (1, count // t, 1))
