"""Forward process, the x / eps / v parametrisations and the diffusion loss.

METHODS §1.5 (v = alpha eps - sigma x and its inverses) and §1.6 (the loss; Semantica's
"v-prediction with loss in epsilon space" is `prediction='v', loss='eps'`). `loss='min_snr'`
is Min-SNR-gamma weighting (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
Strategy", ICCV 2023, arXiv 2303.09556): x-space weight min(SNR, gamma), i.e. the eps loss
with the low-noise steps (SNR > gamma) down-weighted by gamma / SNR. Not Semantica's.

Shapes: images [B, H, W, C]; logsnr [B] (one noise level per example).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from semantica_jax.diffusion.schedules import alpha_sigma

PREDICTIONS = ("v", "eps", "x")
LOSSES = ("eps", "v", "x", "snr_trunc", "min_snr")


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _per_example(logsnr: jax.Array, ndim: int) -> jax.Array:
    """logsnr [B] -> [B, 1, ..., 1] broadcastable against a rank-`ndim` image batch."""
    logsnr = jnp.asarray(logsnr)
    if logsnr.ndim != 1:
        raise ValueError(f"logsnr must have shape [B], got {logsnr.shape}")
    return logsnr.reshape(logsnr.shape + (1,) * (ndim - 1))


def diffuse(x: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
    """Forward process z_t = alpha x + sigma eps (METHODS §0).

    Args:
      x: clean images [B, H, W, C].
      eps: standard normal noise [B, H, W, C].
      logsnr: [B].

    Returns:
      z_t [B, H, W, C].
    """
    alpha, sigma = alpha_sigma(_per_example(logsnr, x.ndim))
    return alpha * x + sigma * eps


def v_target(x: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
    """v = alpha eps - sigma x [B, H, W, C] (METHODS §1.5)."""
    alpha, sigma = alpha_sigma(_per_example(logsnr, x.ndim))
    return alpha * eps - sigma * x


def predictions(
    output: jax.Array, z_t: jax.Array, logsnr: jax.Array, prediction: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Converts a network output to all three parametrisations (METHODS §1.5).

    Args:
      output: network output [B, H, W, C] in the `prediction` parametrisation.
      z_t: the network's noisy input [B, H, W, C].
      logsnr: [B].
      prediction: 'v' | 'eps' | 'x', what `output` is.

    Returns:
      (x_pred, eps_pred, v_pred), each [B, H, W, C]. From v all three are stable; from
      eps, x_pred divides by alpha; from x, eps_pred divides by sigma (use those only
      away from the end where the divisor vanishes, or after clipping x).
    """
    _check("prediction", prediction, PREDICTIONS)
    alpha, sigma = alpha_sigma(_per_example(logsnr, z_t.ndim))
    if prediction == "v":
        v_pred = output
        x_pred = alpha * z_t - sigma * v_pred
        eps_pred = sigma * z_t + alpha * v_pred
    elif prediction == "eps":
        eps_pred = output
        x_pred = (z_t - sigma * eps_pred) / alpha
        v_pred = (eps_pred - sigma * z_t) / alpha
    else:
        x_pred = output
        eps_pred = (z_t - alpha * x_pred) / sigma
        v_pred = (alpha * z_t - x_pred) / sigma
    return x_pred, eps_pred, v_pred


def _log_x_weight(space: str, logsnr: jax.Array, min_snr_gamma: float = 5.0) -> jax.Array:
    """log w with ||error in `space`||^2 = w * ||error in x||^2 at fixed z_t.

    From x = alpha z - sigma v and eps = sigma z + alpha v: dx = -sigma dv,
    d eps = alpha dv, so w_eps = SNR, w_v = 1 + SNR, w_x = 1 (METHODS §1.6);
    snr_trunc is max(SNR, 1) (Google's 'snr_trunc'); min_snr is min(SNR, gamma).
    """
    if space == "eps":
        return logsnr
    if space == "v":
        return jax.nn.softplus(logsnr)
    if space == "x":
        return jnp.zeros_like(logsnr)
    if space == "min_snr":
        return jnp.minimum(logsnr, math.log(min_snr_gamma))
    return jnp.maximum(logsnr, 0.0)  # snr_trunc


def diffusion_loss(
    output: jax.Array,
    x: jax.Array,
    eps: jax.Array,
    logsnr: jax.Array,
    prediction: str,
    loss: str,
    min_snr_gamma: float = 5.0,
) -> jax.Array:
    """Per-example MSE of the prediction, measured in the `loss` space (METHODS §1.6).

    The residual is taken in the network's own parametrisation (no division by a
    vanishing alpha or sigma) and rescaled by an exact weight computed in log space:
    loss = w_loss / w_prediction * mean(residual^2), with the x-space weights of
    `_log_x_weight`. For example v-prediction with the loss in eps space is
    alpha^2 ||v - v_pred||^2 = ||eps - eps_pred||^2 = SNR ||x - x_pred||^2.

    Args:
      output: network output [B, H, W, C] in the `prediction` parametrisation.
      x: clean images [B, H, W, C].
      eps: the noise that made z_t = alpha x + sigma eps, [B, H, W, C].
      logsnr: [B].
      prediction: 'v' | 'eps' | 'x'.
      loss: 'eps' | 'v' | 'x' | 'snr_trunc' | 'min_snr'.
      min_snr_gamma: gamma of `loss='min_snr'` (> 0; Hang et al. use 5).

    Returns:
      [B]: mean over pixels and channels of each example's weighted squared error.
    """
    _check("prediction", prediction, PREDICTIONS)
    _check("loss", loss, LOSSES)
    if output.shape != x.shape or eps.shape != x.shape:
        raise ValueError(
            f"output {output.shape}, x {x.shape} and eps {eps.shape} must have one shape"
        )
    if prediction == "v":
        target = v_target(x, eps, logsnr)
    elif prediction == "eps":
        target = eps
    else:
        target = x
    axes = tuple(range(1, x.ndim))
    mse = jnp.mean(jnp.square(output - target), axis=axes)
    logsnr = jnp.asarray(logsnr, mse.dtype)
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
    log_weight = _log_x_weight(loss, logsnr, min_snr_gamma) - _log_x_weight(prediction, logsnr)
    return jnp.exp(log_weight) * mse
