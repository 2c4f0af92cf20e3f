"""Ancestral (DDPM) and DDIM samplers in logSNR form, with classifier-free guidance.

METHODS §2.1–2.2 (forward transition and posterior), §2.3 (log-variance interpolation
gamma, default 0.2 on the forward variance), §2.4 (grid, clipping, last step returns
x_hat), §2.5 (DDIM), §3 (guidance (1 + w) eps_c - w eps_u, both branches in one batch).

Grid: `num_steps` steps uniform in t over [0, t_start]; step i goes from
t = t_start (i + 1) / N to s = t_start i / N, for i = N - 1, ..., 0; the last step
(s = 0) returns the (clipped) x_hat without noise.

Compilation: the whole loop is one `jax.jit` (a `lax.fori_loop` that traces the model
once). Static: the model function, shape, schedule, parametrisation, kind, steps, gamma,
clipping, whether guidance is on, and the x_start mode. Dynamic: params, cond, rng,
guidance w, t_start and x_start, so new EMA params, a new w or a new t_start reuse the
compiled sampler. A concrete w = 0 (a Python number or a concrete array, `is_unguided`)
takes the unguided path, which runs only the conditional branch at half the cost; any
other w runs the doubled batch, and a traced w = 0 there gives the conditional result
too (1 * c - 0 * u == c).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semantica_jax.diffusion.losses import PREDICTIONS, diffuse, predictions
from semantica_jax.diffusion.schedules import alpha_sigma, log_alpha2, log_sigma2

KINDS = ("ddpm", "ddim")

# model_fn(z_t [B',H,W,C], logsnr [B'], cond (pytree, leading B'), drop_cond [B'] bool)
ModelFn = Callable[[jax.Array, jax.Array, Any, jax.Array], jax.Array]
# apply_fn(params, z_t, logsnr, cond, drop_cond): the same with params passed explicitly.
ApplyFn = Callable[[Any, jax.Array, jax.Array, Any, jax.Array], jax.Array]


# --- single-step maths ------------------------------------------------------------------


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(-x)) for x > 0, accurate for small and large x (Maechler's switch)."""
    x = jnp.asarray(x)
    return jnp.where(x < jnp.log(2.0), jnp.log(-jnp.expm1(-x)), jnp.log1p(-jnp.exp(-x)))


def posterior_mean_coefs(logsnr_t: jax.Array, logsnr_s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Coefficients (on z_t, on x) of the posterior mean of q(z_s | z_t, x), METHODS §2.2.

    mean = alpha_s ((1 - c) / alpha_t) z_t + alpha_s c x, with c = 1 - exp(l_t - l_s).
    The z_t coefficient is formed in log space: alpha_s / alpha_t alone overflows at
    the noise end where alpha_t -> 0 while exp(l_t - l_s) -> 0.
    """
    log_r = logsnr_t - logsnr_s
    coef_z = jnp.exp(log_r + 0.5 * (log_alpha2(logsnr_s) - log_alpha2(logsnr_t)))
    alpha_s, _ = alpha_sigma(logsnr_s)
    coef_x = alpha_s * -jnp.expm1(log_r)
    return coef_z, coef_x


def ddpm_log_variance(
    logsnr_t: jax.Array, logsnr_s: jax.Array, gamma: float | jax.Array
) -> jax.Array:
    """log of the ancestral step variance, METHODS §2.3.

    gamma log(c sigma_t^2) + (1 - gamma) log(c sigma_s^2): gamma = 0 is the posterior
    variance, gamma = 1 the forward-process variance sigma_{t|s}^2 = c sigma_t^2.
    """
    log_c = log1mexp(logsnr_s - logsnr_t)
    return log_c + gamma * log_sigma2(logsnr_t) + (1.0 - gamma) * log_sigma2(logsnr_s)


def ddpm_step(
    z_t: jax.Array,
    x_pred: jax.Array,
    logsnr_t: jax.Array,
    logsnr_s: jax.Array,
    gamma: float | jax.Array,
    noise: jax.Array,
) -> jax.Array:
    """One ancestral step z_t -> z_s [B, H, W, C]; logsnr_* are scalars (s < t in time)."""
    coef_z, coef_x = posterior_mean_coefs(logsnr_t, logsnr_s)
    std = jnp.exp(0.5 * ddpm_log_variance(logsnr_t, logsnr_s, gamma))
    return coef_z * z_t + coef_x * x_pred + std * noise


def ddim_step(x_pred: jax.Array, eps_pred: jax.Array, logsnr_s: jax.Array) -> jax.Array:
    """One deterministic DDIM step: z_s = alpha_s x_hat + sigma_s eps_hat (METHODS §2.5)."""
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    return alpha_s * x_pred + sigma_s * eps_pred


# --- the jitted loop -----------------------------------------------------------------------


def is_unguided(guidance: Any) -> bool:
    """Whether a guidance w is a concrete 0, so that the conditional branch alone is exact.

    A Python number or a concrete (host or device) scalar equal to 0 is; a traced w never
    is (its value is unknown when the sampler is built), so it runs the doubled batch.
    """
    try:
        return float(np.asarray(guidance)) == 0.0
    except jax.errors.TracerArrayConversionError:
        return False


@dataclasses.dataclass(frozen=True)
class _WithoutParams:
    """Adapts a 4-argument model_fn to the apply_fn form; equal (and hashed) by model_fn,
    so repeated `sample` calls with one model_fn hit the same compiled sampler."""

    model_fn: ModelFn

    def __call__(self, params, z_t, logsnr, cond, drop_cond):
        del params
        return self.model_fn(z_t, logsnr, cond, drop_cond)


def _step_condition(apply_fn, params, cond, guided: bool):
    """The condition every reverse step sees, built once before the loop.

    An apply_fn with a `prepare(params, cond, guided)` method (the decoder) returns its
    noise-independent cache, for the doubled batch when guided; otherwise cond itself,
    tiled to [cond; cond] when guided (the second half is dropped by drop_cond).
    """
    prepare = getattr(apply_fn, "prepare", None)
    if prepare is not None:
        return prepare(params, cond, guided)
    if not guided:
        return cond
    return jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a], axis=0), cond)


def _guided_output(apply_fn, params, z_t, logsnr_t, step_cond, guidance, guided):
    """Network output [B, ...] at one noise level, with classifier-free guidance.

    `step_cond` comes from `_step_condition`. Guidance is applied to the raw output: x,
    eps and v are affine in it with the same offset and the coefficients (1 + w, -w) sum
    to 1, so guiding any of them is the same (METHODS §3); doing it before any conversion
    also keeps it before clipping.
    """
    batch = z_t.shape[0]
    logsnr = jnp.full((batch,), logsnr_t, z_t.dtype)
    if not guided:
        return apply_fn(params, z_t, logsnr, step_cond, jnp.zeros((batch,), bool))
    twice = functools.partial(jnp.concatenate, axis=0)
    out = apply_fn(
        params,
        twice([z_t, z_t]),
        twice([logsnr, logsnr]),
        step_cond,
        jnp.arange(2 * batch) >= batch,  # [False] * B + [True] * B
    )
    out_cond, out_uncond = out[:batch], out[batch:]
    return (1.0 + guidance) * out_cond - guidance * out_uncond


def _run(
    params,
    cond,
    rng,
    guidance,
    t_start,
    x_start,
    *,
    apply_fn: ApplyFn,
    shape: tuple[int, ...],
    logsnr_fn: Callable,
    prediction: str,
    kind: str,
    num_steps: int,
    gamma: float,
    clip_x: bool,
    guided: bool,
    x_start_is_noisy: bool,
):
    init_rng, loop_rng = jax.random.split(rng)
    t_start = jnp.asarray(t_start, jnp.float32)
    if x_start is None:
        z = jax.random.normal(init_rng, shape, jnp.float32)
    elif x_start_is_noisy:
        z = jnp.asarray(x_start, jnp.float32)
    else:
        # SDEdit: forward-noise the given image to t_start.
        logsnr0 = jnp.full((shape[0],), logsnr_fn(t_start), jnp.float32)
        noise = jax.random.normal(init_rng, shape, jnp.float32)
        z = diffuse(jnp.asarray(x_start, jnp.float32), noise, logsnr0)
    step_cond = _step_condition(apply_fn, params, cond, guided)

    def body(j, z_t):
        i = num_steps - 1 - j
        logsnr_t = logsnr_fn(t_start * (i + 1) / num_steps)
        logsnr_s = logsnr_fn(t_start * i / num_steps)
        out = _guided_output(apply_fn, params, z_t, logsnr_t, step_cond, guidance, guided)
        logsnr_b = jnp.full((shape[0],), logsnr_t, z_t.dtype)
        x_pred, eps_pred, _ = predictions(out, z_t, logsnr_b, prediction)
        if clip_x:
            x_pred = jnp.clip(x_pred, -1.0, 1.0)
            # eps_hat consistent with the clipped x_hat (METHODS §2.4); sigma_t > 0 on
            # this grid because t >= t_start / N.
            alpha_t, sigma_t = alpha_sigma(logsnr_t)
            eps_pred = (z_t - alpha_t * x_pred) / sigma_t
        if kind == "ddpm":
            noise = jax.random.normal(jax.random.fold_in(loop_rng, i), shape, z_t.dtype)
            z_s = ddpm_step(z_t, x_pred, logsnr_t, logsnr_s, gamma, noise)
        else:
            z_s = ddim_step(x_pred, eps_pred, logsnr_s)
        return jnp.where(i == 0, x_pred, z_s)  # last step returns x_hat, no noise

    return jax.lax.fori_loop(0, num_steps, body, z)


_run_jit = jax.jit(
    _run,
    static_argnames=(
        "apply_fn",
        "shape",
        "logsnr_fn",
        "prediction",
        "kind",
        "num_steps",
        "gamma",
        "clip_x",
        "guided",
        "x_start_is_noisy",
    ),
)


def _check_static(prediction: str, kind: str, num_steps: int, gamma: float, shape) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
    if kind not in KINDS:
        raise ValueError(f"unknown sampler kind {kind!r}; choose one of {', '.join(KINDS)}")
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in [0, 1] (0 posterior, 1 forward), got {gamma}")
    if len(shape) < 2:
        raise ValueError(f"shape must be [B, ...] (e.g. [B, H, W, C]), got {shape}")


def _check_start(t_start, x_start, x_start_is_noisy: bool, shape) -> None:
    if isinstance(t_start, (int, float)) and not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if x_start is None:
        if x_start_is_noisy:
            raise ValueError("x_start_is_noisy=True needs x_start (the noisy image z_t_start)")
        if not isinstance(t_start, (int, float)):
            raise ValueError(
                "with x_start=None, pass t_start as the Python number 1.0 (sampling starts "
                "from pure noise); a t_start array is for partial denoising with x_start"
            )
        if t_start != 1.0:
            raise ValueError(
                "t_start < 1 needs x_start: partial denoising starts from a given image"
            )
    elif tuple(x_start.shape) != tuple(shape):
        raise ValueError(f"x_start has shape {tuple(x_start.shape)}, expected {tuple(shape)}")


def make_sampler(
    apply_fn: ApplyFn,
    shape: tuple[int, ...],
    logsnr_fn: Callable,
    *,
    prediction: str,
    kind: str = "ddpm",
    num_steps: int,
    gamma: float = 0.2,
    clip_x: bool = True,
    guided: bool = True,
    x_start_is_noisy: bool = False,
) -> Callable[..., jax.Array]:
    """A compiled-once sampler for one shape and setting, for training/eval loops.

    Args:
      apply_fn: `apply_fn(params, z_t [B',H,W,C], logsnr [B'], cond, drop_cond [B'] bool)
        -> output [B',H,W,C]` in the `prediction` parametrisation. Keep one object (not
        a fresh lambda per call): it is part of the compilation key.
      shape: (B, H, W, C) of the samples.
      logsnr_fn: hashable schedule, e.g. `schedules.logsnr_fn(cfg.diffusion, H)`.
      prediction: 'v' | 'eps' | 'x'.
      kind: 'ddpm' (ancestral) | 'ddim'.
      num_steps: reverse steps N.
      gamma: DDPM log-variance weight on the forward variance (0.2 = Semantica).
      clip_x: clip x_hat to [-1, 1] (and recompute eps_hat from it).
      guided: run the doubled cond/uncond batch; False runs only the conditional
        branch and ignores `guidance`.
      x_start_is_noisy: x_start is already z_{t_start} = alpha x + sigma eps.

    Returns:
      `sampler(params, cond, rng, guidance=0.0, t_start=1.0, x_start=None) -> x
      [B,H,W,C]`; params, cond, rng, guidance and t_start are traced (no recompiles),
      and x_start=None (start from N(0, I)) vs an array compiles one variant each. As
      with any jit, a change of pytree structure, dtype or weak type (jnp.full(.., 0.5)
      vs an explicit float32) in params/cond/x_start retraces.
    """
    shape = tuple(int(d) for d in shape)
    _check_static(prediction, kind, num_steps, gamma, shape)
    run = functools.partial(
        _run_jit,
        apply_fn=apply_fn,
        shape=shape,
        logsnr_fn=logsnr_fn,
        prediction=prediction,
        kind=kind,
        num_steps=int(num_steps),
        gamma=float(gamma),
        clip_x=bool(clip_x),
        guided=bool(guided),
        x_start_is_noisy=bool(x_start_is_noisy),
    )

    def sampler(params, cond, rng, guidance=0.0, t_start=1.0, x_start=None) -> jax.Array:
        _check_start(t_start, x_start, x_start_is_noisy, shape)
        return run(
            params,
            cond,
            rng,
            jnp.asarray(guidance, jnp.float32),
            jnp.asarray(t_start, jnp.float32),
            x_start,
        )

    return sampler


def sample(
    model_fn: ModelFn,
    cond: Any,
    rng: jax.Array,
    shape: tuple[int, ...],
    logsnr_fn: Callable,
    *,
    prediction: str,
    kind: str = "ddpm",
    num_steps: int,
    gamma: float = 0.2,
    guidance: float | jax.Array = 0.0,
    clip_x: bool = True,
    t_start: float | jax.Array = 1.0,
    x_start: jax.Array | None = None,
    x_start_is_noisy: bool = False,
) -> jax.Array:
    """Draws samples x [B, H, W, C] by running the reverse process (see module doc).

    Args:
      model_fn: `model_fn(z_t [B',H,W,C], logsnr [B'], cond, drop_cond [B'] bool) ->
        output [B',H,W,C]` in the `prediction` parametrisation; B' = B, or 2B with
        guidance. Compiled once per (model_fn object, shape, static settings).
      cond: pytree of arrays with leading dim B (tiled to 2B for guidance).
      rng: PRNG key; step i folds i into it.
      shape: (B, H, W, C).
      logsnr_fn: the schedule t -> logsnr (hashable; from `schedules.logsnr_fn`).
      prediction: 'v' | 'eps' | 'x', what model_fn outputs.
      kind: 'ddpm' (ancestral, variance interpolated by gamma) | 'ddim'.
      num_steps: reverse steps, uniform in t over [0, t_start].
      gamma: weight of the forward variance in the DDPM log-variance (METHODS §2.3).
      guidance: classifier-free guidance w; a concrete 0 runs only the conditional
        branch, anything else the doubled batch (w traced: no recompile per value).
      clip_x: clip x_hat to [-1, 1] before each step.
      t_start: start time in (0, 1]; < 1 needs x_start (partial denoising).
      x_start: [B, H, W, C]; a clean image to noise to t_start with the forward process
        (SDEdit, seed 001's denoising) or, with x_start_is_noisy, z_{t_start} itself.
      x_start_is_noisy: x_start is already alpha x + sigma eps at t_start.

    Returns:
      x [B, H, W, C]: the final x_hat (clipped when clip_x).
    """
    guided = not is_unguided(guidance)
    sampler = make_sampler(
        _WithoutParams(model_fn),
        shape,
        logsnr_fn,
        prediction=prediction,
        kind=kind,
        num_steps=num_steps,
        gamma=gamma,
        clip_x=clip_x,
        guided=guided,
        x_start_is_noisy=x_start_is_noisy,
    )
    return sampler(None, cond, rng, guidance, t_start, x_start)
