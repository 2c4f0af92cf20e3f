"""Values of the logSNR schedules (METHODS §1.1–1.4, §8) and their inverses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mnist import get_config
from semantica_jax.diffusion import schedules

T_GRID = jnp.linspace(0.0, 1.0, 2001)


def _cosine_reference(t, lmin, lmax):
    """float64 textbook form -2 log tan(a t + b) (no end-point rewriting)."""
    b = np.arctan(np.exp(-lmax / 2))
    a = np.arctan(np.exp(-lmin / 2)) - b
    return -2 * np.log(np.tan(a * np.asarray(t, np.float64) + b))


@pytest.mark.parametrize("lmin,lmax", [(-15.0, 15.0), (-20.0, 20.0), (-10.0, 5.0)])
def test_cosine_endpoints_values_and_monotone(lmin, lmax):
    logsnr = schedules.cosine_logsnr(T_GRID, lmin, lmax)
    assert float(logsnr[0]) == pytest.approx(lmax, abs=1e-5)
    assert float(logsnr[-1]) == pytest.approx(lmin, abs=1e-5)
    np.testing.assert_allclose(logsnr, _cosine_reference(T_GRID, lmin, lmax), atol=2e-5)
    assert np.all(np.diff(np.asarray(logsnr)) < 0)  # strictly decreasing


def test_untruncated_limit_is_minus_two_log_tan():
    # With huge bounds the truncation vanishes: lambda(t) = -2 log tan(pi t / 2).
    t = jnp.array([0.1, 0.25, 0.5, 0.75, 0.9])
    got = schedules.cosine_logsnr(t, -60.0, 60.0)
    np.testing.assert_allclose(got, -2 * np.log(np.tan(np.pi * np.asarray(t) / 2)), atol=1e-5)
    assert float(schedules.cosine_logsnr(0.5, -60.0, 60.0)) == pytest.approx(0.0, abs=1e-6)


def test_cosine_inverse_roundtrip():
    sched = schedules.CosineSchedule(-15.0, 15.0, shift=-1.3)
    np.testing.assert_allclose(sched.t_from_logsnr(sched(T_GRID)), T_GRID, atol=2e-6)
    lam = jnp.linspace(-16.3, 13.7, 301)
    np.testing.assert_allclose(sched(sched.t_from_logsnr(lam)), lam, rtol=1e-5, atol=1e-4)


def test_gradient_finite_at_both_ends():
    grad = jax.vmap(jax.grad(lambda t: schedules.cosine_logsnr(t, -15.0, 15.0)))
    g = grad(jnp.array([0.0, 1e-6, 0.5, 1.0 - 1e-6, 1.0]))
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g) < 0)
    # lambda'(t) = -4 a / sin(2 (a t + b)); at t = 0.5 the sine is ~1.
    a = math.atan(math.exp(7.5)) - math.atan(math.exp(-7.5))
    b = math.atan(math.exp(-7.5))
    assert float(g[2]) == pytest.approx(-4 * a / math.sin(2 * (0.5 * a + b)), rel=1e-5)


@pytest.mark.parametrize("noise_res,image_res", [(32, 256), (28, 28), (64, 28), (7, 28)])
def test_shift_is_exactly_two_log_ratio_after_truncation(noise_res, image_res):
    shift = 2 * math.log(noise_res / image_res)
    assert schedules.resolution_shift(noise_res, image_res) == pytest.approx(shift, abs=1e-12)
    shifted = schedules.shifted_cosine_logsnr(
        T_GRID,
        logsnr_min=-15.0,
        logsnr_max=15.0,
        noise_resolution=noise_res,
        image_resolution=image_res,
    )
    np.testing.assert_allclose(
        shifted - schedules.cosine_logsnr(T_GRID, -15.0, 15.0), shift, atol=1e-5
    )
    # Range is [lmin + shift, lmax + shift]: the shift is not squeezed into the bounds.
    assert float(shifted[0]) == pytest.approx(15.0 + shift, abs=1e-5)
    assert float(shifted[-1]) == pytest.approx(-15.0 + shift, abs=1e-5)


def test_semantica_256_example_values():
    # METHODS §1.2: 256^2 with +-15 and noise_d 32 -> 10.84, -4.16, -19.16.
    sched = schedules.CosineSchedule(-15.0, 15.0, schedules.resolution_shift(32, 256))
    np.testing.assert_allclose(
        sched(jnp.array([0.0, 0.5, 1.0])), [10.841, -4.159, -19.159], atol=1e-3
    )


@pytest.mark.parametrize("interpolation", ["pseudocode", "eq6"])
def test_interpolated_orientation_and_values(interpolation):
    lo, hi = schedules.resolution_shift(32, 512), schedules.resolution_shift(256, 512)
    got = schedules.interpolated_cosine_logsnr(
        T_GRID,
        logsnr_min=-15.0,
        logsnr_max=15.0,
        noise_resolution=32,
        noise_resolution_high=256,
        image_resolution=512,
        interpolation=interpolation,
    )
    base = _cosine_reference(T_GRID, -15.0, 15.0)
    t = np.asarray(T_GRID, np.float64)
    low, high = base + lo, base + hi
    want = t * low + (1 - t) * high if interpolation == "pseudocode" else t * high + (1 - t) * low
    np.testing.assert_allclose(got, want, atol=3e-5)
    # Pseudo-code puts the strong (more negative) shift at t -> 1, Eq. 6 at t -> 0.
    end_shift = lo if interpolation == "pseudocode" else hi
    assert float(got[-1]) == pytest.approx(-15.0 + end_shift, abs=1e-4)
    assert np.all(np.diff(np.asarray(got)) < 0)
    sched = schedules.InterpolatedCosineSchedule(-15.0, 15.0, lo, hi, interpolation)
    np.testing.assert_allclose(sched.t_from_logsnr(got), T_GRID, atol=2e-6)


def test_ddpm_linear_reproduces_alpha_bar_on_grid():
    num, b0, b1 = 500, 1e-4, 0.02
    alpha_bar = np.cumprod(1 - np.linspace(b0, b1, num))
    sched = schedules.DDPMLinearSchedule(num, b0, b1, logsnr_max=15.0)
    t = jnp.arange(1, num + 1) / num
    np.testing.assert_allclose(sched(t), np.log(alpha_bar / (1 - alpha_bar)), atol=2e-4)
    alpha, _ = schedules.alpha_sigma(sched(t))
    np.testing.assert_allclose(np.asarray(alpha) ** 2, alpha_bar, rtol=1e-4)
    # METHODS §8: alpha_bar_T ~ 0.0064 at T = 500.
    assert alpha_bar[-1] == pytest.approx(0.00635, abs=5e-5)
    assert float(sched(1.0)) == pytest.approx(
        math.log(alpha_bar[-1] / (1 - alpha_bar[-1])), abs=1e-4
    )
    # t = 0 is finite and equals logsnr_max; the function is strictly decreasing.
    dense = sched(T_GRID)
    assert float(dense[0]) == pytest.approx(15.0, abs=1e-3)
    assert np.all(np.diff(np.asarray(dense)) < 0)
    # Between grid points log alpha_bar is linear in t.
    mid = sched.log_alpha_bar(jnp.array([(10 + 0.5) / num]))
    np.testing.assert_allclose(mid, 0.5 * (np.log(alpha_bar[9]) + np.log(alpha_bar[10])), rtol=1e-5)
    np.testing.assert_allclose(sched.t_from_logsnr(dense), T_GRID, atol=1e-5)


def test_alpha_sigma_identities_and_stable_ends():
    lam = jnp.array([-200.0, -80.0, -15.0, -1.0, 0.0, 2.5, 15.0, 80.0, 200.0])
    alpha, sigma = schedules.alpha_sigma(lam)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    mid = slice(2, 7)  # where float32 resolves both
    np.testing.assert_allclose(np.log(alpha[mid] ** 2 / sigma[mid] ** 2), lam[mid], atol=1e-4)
    log_s2, log_a2 = schedules.log_sigma2(lam), schedules.log_alpha2(lam)
    assert np.all(np.isfinite(log_s2)) and np.all(np.isfinite(log_a2))
    # At +200, sigma^2 = e^-200 underflows but its log is exactly -200.
    assert float(log_s2[-1]) == pytest.approx(-200.0, rel=1e-6)
    np.testing.assert_allclose(log_a2 - log_s2, lam, rtol=1e-6, atol=1e-6)


def test_logsnr_fn_from_config_variants():
    cfg = get_config("default")
    sched = schedules.logsnr_fn(cfg.diffusion, cfg.data.image_size)
    assert sched == schedules.CosineSchedule(-15.0, 15.0, 0.0)  # noise_res 28 = image 28
    assert hash(sched) == hash(schedules.logsnr_fn(cfg.diffusion, 28))  # a usable jit key
    np.testing.assert_allclose(sched(T_GRID), schedules.cosine_logsnr(T_GRID), atol=0)
    shifted = schedules.logsnr_fn(cfg.diffusion, 56)
    assert float(shifted(0.5)) == pytest.approx(2 * math.log(0.5), abs=1e-5)

    ddpm = get_config("ddpm500")
    sched = schedules.logsnr_fn(ddpm.diffusion, 28)
    assert isinstance(sched, schedules.DDPMLinearSchedule)
    assert sched.num_timesteps == 500 and sched.logsnr_max == 15.0

    interp = get_config("default")
    interp.diffusion.schedule = "cosine_interpolated"
    interp.diffusion.noise_resolution_high = 56
    sched = schedules.logsnr_fn(interp.diffusion, 28)
    assert float(sched(0.0)) == pytest.approx(15.0 + 2 * math.log(2), abs=1e-5)
    assert float(sched(1.0)) == pytest.approx(-15.0, abs=1e-5)


def test_bad_config_errors_name_the_problem():
    cfg = get_config("default")
    cfg.diffusion.schedule = "cosine"
    with pytest.raises(ValueError, match="unknown diffusion.schedule 'cosine'"):
        schedules.logsnr_fn(cfg.diffusion, 28)
    cfg = get_config("default")
    cfg.diffusion.logsnr_min, cfg.diffusion.logsnr_max = 15.0, -15.0
    with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
        schedules.logsnr_fn(cfg.diffusion, 28)
    cfg = get_config("default")
    cfg.diffusion.noise_resolution = 0
    with pytest.raises(ValueError, match="resolutions must be positive"):
        schedules.logsnr_fn(cfg.diffusion, 28)
    cfg = get_config("default")
    cfg.diffusion.schedule, cfg.diffusion.interpolation = "cosine_interpolated", "eq7"
    with pytest.raises(ValueError, match="unknown interpolation 'eq7'"):
        schedules.logsnr_fn(cfg.diffusion, 28)
    with pytest.raises(ValueError, match="raise diffusion.logsnr_max"):
        schedules.DDPMLinearSchedule(500, 1e-4, 0.02, logsnr_max=5.0)
