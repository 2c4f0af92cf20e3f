"""Noise schedules as continuous logSNR functions of time t in [0, 1].

Conventions (METHODS §0): t = 0 is data, t = 1 is (almost) pure noise, the process is
variance preserving, z_t = alpha_t x + sigma_t eps with alpha^2 + sigma^2 = 1, and
logsnr = log(alpha^2 / sigma^2) decreases in t.

Every schedule is a frozen dataclass: callable `t [...] -> logsnr [...]`, hashable by
value (so it can be a static argument of `jax.jit` without recompiling for an equal
schedule) and with `t_from_logsnr` as its inverse.

- `CosineSchedule`: truncated cosine logSNR (METHODS §1.1) plus a resolution shift
  added after truncation (§1.2).
- `InterpolatedCosineSchedule`: t-weighted mix of two shifted cosines (§1.3).
- `DDPMLinearSchedule`: seed 000's discrete schedule (T steps, linear betas) made
  continuous by linear interpolation of log(alpha_bar) between t = i / T (§8).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

SCHEDULES = ("cosine_shifted", "cosine_interpolated", "ddpm_linear")
INTERPOLATIONS = ("pseudocode", "eq6")


# --- alpha, sigma from logSNR (METHODS §1.4) -------------------------------------------


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
    """alpha = sqrt(sigmoid(logsnr)), sigma = sqrt(sigmoid(-logsnr)), same shape as logsnr.

    sigmoid saturates cleanly in both directions, so both are finite for any logsnr.
    """
    logsnr = jnp.asarray(logsnr)
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def log_alpha2(logsnr: jax.Array) -> jax.Array:
    """log alpha^2 = log_sigmoid(logsnr); exact where sigmoid would round to 0 or 1."""
    return jax.nn.log_sigmoid(jnp.asarray(logsnr))


def log_sigma2(logsnr: jax.Array) -> jax.Array:
    """log sigma^2 = log_sigmoid(-logsnr); exact where sigmoid would round to 0 or 1."""
    return jax.nn.log_sigmoid(-jnp.asarray(logsnr))


def resolution_shift(noise_resolution: float, image_resolution: float) -> float:
    """logSNR shift 2 log(noise_resolution / image_resolution) of METHODS §1.2.

    The factor is 2: s x s average pooling divides the noise std by s, i.e. the SNR by s^2.
    """
    if noise_resolution <= 0 or image_resolution <= 0:
        raise ValueError(
            f"resolutions must be positive, got noise_resolution={noise_resolution}, "
            f"image_resolution={image_resolution}"
        )
    return 2.0 * math.log(noise_resolution / image_resolution)


# --- truncated cosine (METHODS §1.1) ---------------------------------------------------


def _check_range(logsnr_min: float, logsnr_max: float) -> None:
    if not logsnr_min < logsnr_max:
        raise ValueError(
            f"need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}; "
            "swap them (logsnr_max is the value at t = 0, the data end)"
        )


def cosine_logsnr(t: jax.Array, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> jax.Array:
    """Truncated cosine logSNR -2 log tan(a t + b), a reparametrisation of t.

    b = arctan(exp(-logsnr_max / 2)), a = arctan(exp(-logsnr_min / 2)) - b, so
    logsnr(0) = logsnr_max and logsnr(1) = logsnr_min.

    Args:
      t: times in [0, 1], any shape.
      logsnr_min: value at t = 1.
      logsnr_max: value at t = 0.

    Returns:
      logsnr, same shape as t.
    """
    _check_range(logsnr_min, logsnr_max)
    t = jnp.asarray(t, dtype=jnp.result_type(t, jnp.float32))
    b = math.atan(math.exp(-0.5 * logsnr_max))
    # arctan(exp(logsnr_min / 2)) = pi/2 - (a + b): the angle left at the noise end.
    b_noise = math.atan(math.exp(0.5 * logsnr_min))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    # tan(a t + b) near t = 1 sits next to the pole at pi/2; written there as
    # 1 / tan(b_noise + a (1 - t)), both angles are small and nothing cancels, so each
    # end is as exact as float arithmetic allows.
    near_data = -2.0 * jnp.log(jnp.tan(b + a * t))
    near_noise = 2.0 * jnp.log(jnp.tan(b_noise + a * (1.0 - t)))
    return jnp.where(t < 0.5, near_data, near_noise)


def cosine_t_from_logsnr(
    logsnr: jax.Array, logsnr_min: float = -15.0, logsnr_max: float = 15.0
) -> jax.Array:
    """Inverse of `cosine_logsnr`: t = (arctan(exp(-logsnr / 2)) - b) / a.

    Values outside [logsnr_min, logsnr_max] map outside [0, 1] (not clipped).
    """
    _check_range(logsnr_min, logsnr_max)
    logsnr = jnp.asarray(logsnr, dtype=jnp.result_type(logsnr, jnp.float32))
    b = math.atan(math.exp(-0.5 * logsnr_max))
    b_noise = math.atan(math.exp(0.5 * logsnr_min))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    # Mirror form for negative logsnr so that arctan never returns a value near pi/2.
    t_pos = (jnp.arctan(jnp.exp(-0.5 * logsnr)) - b) / a
    t_neg = 1.0 - (jnp.arctan(jnp.exp(0.5 * logsnr)) - b_noise) / a
    return jnp.where(logsnr >= 0, t_pos, t_neg)


def shifted_cosine_logsnr(
    t: jax.Array,
    *,
    logsnr_min: float,
    logsnr_max: float,
    noise_resolution: float,
    image_resolution: float,
) -> jax.Array:
    """Cosine logSNR truncated to [logsnr_min, logsnr_max], then shifted (METHODS §1.2).

    The range becomes [logsnr_min + shift, logsnr_max + shift] with
    shift = 2 log(noise_resolution / image_resolution).
    """
    shift = resolution_shift(noise_resolution, image_resolution)
    return cosine_logsnr(t, logsnr_min, logsnr_max) + shift


def interpolated_cosine_logsnr(
    t: jax.Array,
    *,
    logsnr_min: float,
    logsnr_max: float,
    noise_resolution: float,
    noise_resolution_high: float,
    image_resolution: float,
    interpolation: str = "pseudocode",
) -> jax.Array:
    """Interpolated shifted cosine of METHODS §1.3.

    With low = shifted by noise_resolution and high = shifted by noise_resolution_high:
    'pseudocode' (default): t * low + (1 - t) * high (as in the paper's pseudo-code);
    'eq6': t * high + (1 - t) * low (as in the paper's Eq. 6 transcriptions).
    """
    return InterpolatedCosineSchedule(
        logsnr_min=logsnr_min,
        logsnr_max=logsnr_max,
        shift_low=resolution_shift(noise_resolution, image_resolution),
        shift_high=resolution_shift(noise_resolution_high, image_resolution),
        interpolation=interpolation,
    )(t)


# --- seed 000's discrete schedule (METHODS §8) -----------------------------------------


def ddpm_linear_log_alpha_bar(
    num_timesteps: int = 500, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """log alpha_bar_i = sum_{j <= i} log(1 - beta_j) for i = 1..T, float64 [T].

    beta_j = linspace(beta_start, beta_end, T); alpha_bar is a product (not the sum that
    seed 000 prints).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    return np.cumsum(np.log1p(-betas))


def _logsnr_from_log_alpha2(log_a2: jax.Array) -> jax.Array:
    # logsnr = log(a / (1 - a)) with a = exp(log_a2); expm1 keeps 1 - a exact near a = 1.
    return log_a2 - jnp.log(-jnp.expm1(log_a2))


def ddpm_linear_logsnr(
    t: jax.Array,
    num_timesteps: int = 500,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    logsnr_max: float = 15.0,
) -> jax.Array:
    """Seed 000's discrete schedule as a continuous logSNR(t); see `DDPMLinearSchedule`."""
    return DDPMLinearSchedule(num_timesteps, beta_start, beta_end, logsnr_max)(t)


# --- schedule objects ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
    """Truncated cosine logSNR plus a constant shift (METHODS §1.1–1.2).

    Attributes:
      logsnr_min: truncation at t = 1, before the shift.
      logsnr_max: truncation at t = 0, before the shift.
      shift: added after truncation; `resolution_shift(noise_d, image_d)`.
    """

    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift: float = 0.0

    def __post_init__(self):
        _check_range(self.logsnr_min, self.logsnr_max)

    def __call__(self, t: jax.Array) -> jax.Array:
        """t [...] in [0, 1] -> logsnr [...]."""
        return cosine_logsnr(t, self.logsnr_min, self.logsnr_max) + self.shift

    def t_from_logsnr(self, logsnr: jax.Array) -> jax.Array:
        """logsnr [...] -> t [...]; exact inverse of __call__."""
        return cosine_t_from_logsnr(
            jnp.asarray(logsnr) - self.shift, self.logsnr_min, self.logsnr_max
        )


@dataclasses.dataclass(frozen=True)
class InterpolatedCosineSchedule:
    """Mix of two shifted cosines weighted by t (METHODS §1.3).

    Attributes:
      logsnr_min, logsnr_max: truncation of both cosines, before their shifts.
      shift_low: shift of the `low` schedule (built with noise_resolution).
      shift_high: shift of the `high` schedule (built with noise_resolution_high).
      interpolation: 'pseudocode' -> t * low + (1 - t) * high;
        'eq6' -> t * high + (1 - t) * low.
    """

    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift_low: float = 0.0
    shift_high: float = 0.0
    interpolation: str = "pseudocode"

    def __post_init__(self):
        _check_range(self.logsnr_min, self.logsnr_max)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; choose one of "
                f"{', '.join(INTERPOLATIONS)}"
            )

    def __call__(self, t: jax.Array) -> jax.Array:
        """t [...] in [0, 1] -> logsnr [...]."""
        base = cosine_logsnr(t, self.logsnr_min, self.logsnr_max)
        t = jnp.asarray(t, base.dtype)
        # The cosine is shared, so the mix is base + (t-weighted mix of the two shifts).
        if self.interpolation == "pseudocode":
            at_one, at_zero = self.shift_low, self.shift_high
        else:
            at_one, at_zero = self.shift_high, self.shift_low
        return base + t * at_one + (1.0 - t) * at_zero

    def t_from_logsnr(self, logsnr: jax.Array, iterations: int = 40) -> jax.Array:
        """Inverse by bisection on [0, 1] (no closed form); clipped to [0, 1].

        Assumes logsnr(t) is decreasing, which holds when |shift_high - shift_low| < 2 pi
        (the cosine's slope is at least 4a ~ 2 pi in magnitude).
        """
        logsnr = jnp.asarray(logsnr, jnp.float32)

        def halve(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = self(mid) > logsnr  # logsnr(mid) too high -> answer is later
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(
            0, iterations, halve, (jnp.zeros_like(logsnr), jnp.ones_like(logsnr))
        )
        return 0.5 * (lo + hi)


@dataclasses.dataclass(frozen=True)
class DDPMLinearSchedule:
    """Seed 000's T-step linear-beta schedule through the continuous logSNR interface.

    Grid: t_i = i / T for i = 1..T carries alpha_bar_i = prod_{j <= i} (1 - beta_j)
    exactly, so logsnr(i / T) = log(alpha_bar_i / (1 - alpha_bar_i)). Between grid points
    log alpha_bar is interpolated linearly in t (alpha_bar is a product of per-step
    factors, so its log is the natural additive quantity). At t = 0 (i = 0) the clean
    data has alpha_bar = 1 and infinite logSNR; we put logsnr(0) = logsnr_max instead
    (log alpha_bar_0 = log_sigmoid(logsnr_max), about -3e-7 for 15), which keeps the
    function finite, continuous and strictly decreasing so that t ~ U(0, 1) and the
    sampler's final step at t = 0 both work, and leaves every grid point i >= 1 exact.

    Attributes:
      num_timesteps: T.
      beta_start, beta_end: first and last beta.
      logsnr_max: logsnr at t = 0; must exceed logsnr(1 / T) (log(1/beta_start - 1)).
    """

    num_timesteps: int = 500
    beta_start: float = 1e-4
    beta_end: float = 0.02
    logsnr_max: float = 15.0

    def __post_init__(self):
        first = math.log(1.0 / self.beta_start - 1.0) if 0 < self.beta_start < 1 else math.inf
        if not self.logsnr_max > first:
            raise ValueError(
                f"ddpm_linear: logsnr_max={self.logsnr_max} must exceed logsnr at t = 1/T "
                f"({first:.3f} for beta_start={self.beta_start}); raise diffusion.logsnr_max"
            )

    def log_alpha_bar_table(self) -> np.ndarray:
        """log alpha_bar at t = i / T for i = 0..T, float64 [T + 1] (i = 0 see class doc)."""
        table = ddpm_linear_log_alpha_bar(self.num_timesteps, self.beta_start, self.beta_end)
        start = -math.log1p(math.exp(-self.logsnr_max))  # log_sigmoid(logsnr_max)
        return np.concatenate([[start], table])

    def log_alpha_bar(self, t: jax.Array) -> jax.Array:
        """t [...] in [0, 1] -> log alpha_bar(t) [...], piecewise linear in t."""
        t = jnp.asarray(t, dtype=jnp.result_type(t, jnp.float32))
        table = self.log_alpha_bar_table()
        grid = np.arange(self.num_timesteps + 1) / self.num_timesteps
        return jnp.interp(t, jnp.asarray(grid, t.dtype), jnp.asarray(table, t.dtype))

    def __call__(self, t: jax.Array) -> jax.Array:
        """t [...] in [0, 1] -> logsnr [...]."""
        return _logsnr_from_log_alpha2(self.log_alpha_bar(t))

    def t_from_logsnr(self, logsnr: jax.Array) -> jax.Array:
        """logsnr [...] -> t [...]; exact inverse of the interpolation, clipped to [0, 1]."""
        log_a2 = log_alpha2(jnp.asarray(logsnr, jnp.float32))
        table = self.log_alpha_bar_table()
        grid = np.arange(self.num_timesteps + 1) / self.num_timesteps
        # jnp.interp needs increasing abscissae: walk the (decreasing) table backwards.
        return jnp.interp(
            log_a2, jnp.asarray(table[::-1], log_a2.dtype), jnp.asarray(grid[::-1], log_a2.dtype)
        )


Schedule = CosineSchedule | InterpolatedCosineSchedule | DDPMLinearSchedule


def logsnr_fn(cfg_diffusion: ml_collections.ConfigDict, image_size: int) -> Schedule:
    """Builds the schedule named by `cfg_diffusion.schedule` (configs/mnist.py `diffusion`).

    Args:
      cfg_diffusion: the config's `diffusion` section (read, never mutated).
      image_size: H = W of the images the model sees (sets the resolution shift).

    Returns:
      A hashable callable `t [...] -> logsnr [...]` with a `t_from_logsnr` inverse.
    """
    kind = cfg_diffusion.schedule
    if kind == "cosine_shifted":
        return CosineSchedule(
            logsnr_min=float(cfg_diffusion.logsnr_min),
            logsnr_max=float(cfg_diffusion.logsnr_max),
            shift=resolution_shift(cfg_diffusion.noise_resolution, image_size),
        )
    if kind == "cosine_interpolated":
        return InterpolatedCosineSchedule(
            logsnr_min=float(cfg_diffusion.logsnr_min),
            logsnr_max=float(cfg_diffusion.logsnr_max),
            shift_low=resolution_shift(cfg_diffusion.noise_resolution, image_size),
            shift_high=resolution_shift(cfg_diffusion.noise_resolution_high, image_size),
            interpolation=cfg_diffusion.interpolation,
        )
    if kind == "ddpm_linear":
        return DDPMLinearSchedule(
            num_timesteps=int(cfg_diffusion.num_timesteps),
            beta_start=float(cfg_diffusion.beta_start),
            beta_end=float(cfg_diffusion.beta_end),
            logsnr_max=float(cfg_diffusion.logsnr_max),
        )
    raise ValueError(f"unknown diffusion.schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


def t_from_logsnr(schedule: Callable, logsnr: jax.Array) -> jax.Array:
    """Inverse of any schedule built here: `schedule.t_from_logsnr(logsnr)`."""
    if not hasattr(schedule, "t_from_logsnr"):
        raise TypeError(
            f"{type(schedule).__name__} has no t_from_logsnr; build the schedule with "
            "logsnr_fn(...) or one of CosineSchedule / InterpolatedCosineSchedule / "
            "DDPMLinearSchedule"
        )
    return schedule.t_from_logsnr(logsnr)
