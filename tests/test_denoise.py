"""tools/denoise.py: denoising from a noise level, against exact denoisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from semantica_jax import errors
from semantica_jax.diffusion import schedules
from semantica_jax.diffusion.losses import diffuse
from semantica_jax.tools import denoise as denoise_lib
from semantica_jax.utils import image_io

SIZE = 28  # MNIST config


CELL = SIZE + 2  # image_io.make_grid's default padding


def _output(x_hat, z_t, logsnr, prediction):
    """x_hat in the network's `prediction` parametrisation at z_t, logsnr [B]."""
    alpha, sigma = schedules.alpha_sigma(logsnr[:, None, None, None])
    eps_hat = (z_t - alpha * x_hat) / sigma
    return {"x": x_hat, "eps": eps_hat, "v": alpha * eps_hat - sigma * x_hat}[prediction]


def _gaussian_apply(prediction):
    """Exact E[x | z_t] for x ~ N(MU, TAU^2): MU + a TAU^2 (z - a MU) / (a^2 TAU^2 + s^2)."""

    def apply_fn(params, z_t, logsnr, cond, drop_cond):
        alpha, sigma = schedules.alpha_sigma(logsnr[:, None, None, None])
        gain = alpha * TAU**2 / (alpha**2 * TAU**2 + sigma**2)
        return _output(MU + gain * (z_t - alpha * MU), z_t, logsnr, prediction)

    return apply_fn


_GAUSSIAN = {p: _gaussian_apply(p) for p in ("x", "v", "eps")}  # one object per jit key


def _gaussian_data(rng, shape=(64, 8, 8, 1)):
    return MU + TAU * jax.random.normal(rng, shape)


SCHEDULE = schedules.CosineSchedule(-15.0, 15.0, 0.0)
MU, TAU = 0.1, 0.3  # data: every pixel i.i.d. N(MU, TAU^2)


def test_noise_level_is_the_vp_state():
    # alpha y = alpha x + sigma n needs alpha s = sigma; t_start must sit at lambda.
    for s in (0.01, 0.2, 0.5, 1.0, 3.0):
        level = denoise_lib.noise_level(s, SCHEDULE)
        assert level.logsnr == pytest.approx(-2 * np.log(s))
        assert level.alpha * s == pytest.approx(level.sigma, rel=1e-12)
        assert level.alpha**2 + level.sigma**2 == pytest.approx(1.0)
        assert float(SCHEDULE(level.t_start)) == pytest.approx(level.logsnr, abs=1e-3)
    assert (
        denoise_lib.noise_level(0.01, SCHEDULE).t_start
        < 0.5
        < denoise_lib.noise_level(3.0, SCHEDULE).t_start
    )
    x, n = jnp.full((1, 2, 2, 1), 0.3), jnp.full((1, 2, 2, 1), -0.7)
    level = denoise_lib.noise_level(0.5, SCHEDULE)
    z = level.alpha * (x + 0.5 * n)
    np.testing.assert_allclose(z, diffuse(x, n, jnp.full((1,), level.logsnr)), atol=1e-6)
    for bad, words in ((0.0, "positive"), (-1.0, "positive"), (1e-5, "outside"), (1e4, "outside")):
        with pytest.raises(errors.UserError, match=words):
            denoise_lib.noise_level(bad, SCHEDULE)


@pytest.mark.parametrize("prediction", ["x", "v"])
def test_one_step_from_the_noise_level_is_the_wiener_filter(prediction):
    # One step from t_start returns x_hat(z_t_start) = E[x | y] for the right level only.
    s = 0.5
    x = _gaussian_data(jax.random.PRNGKey(0))
    y = denoise_lib.add_noise(x, s, jax.random.PRNGKey(1))
    restored = denoise_lib.denoise(
        _GAUSSIAN[prediction],
        None,
        y,
        s,
        jax.random.PRNGKey(2),
        SCHEDULE,
        prediction=prediction,
        num_steps=1,
        clip_x=False,
    )
    wiener = MU + TAU**2 / (TAU**2 + s**2) * (y - MU)
    np.testing.assert_allclose(restored, wiener, atol=2e-5)
    mse_noisy = float(jnp.mean((y - x) ** 2))
    mse_restored = float(jnp.mean((restored - x) ** 2))
    assert mse_noisy == pytest.approx(s**2, rel=0.15)
    assert mse_restored == pytest.approx(TAU**2 * s**2 / (TAU**2 + s**2), rel=0.15)
    assert mse_restored < 0.4 * mse_noisy


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_multistep_denoising_with_an_exact_denoiser_is_closer_to_the_clean_image(kind):
    s = 0.5
    x = _gaussian_data(jax.random.PRNGKey(3))
    y = denoise_lib.add_noise(x, s, jax.random.PRNGKey(4))
    restored = denoise_lib.denoise(
        _GAUSSIAN["v"],
        None,
        y,
        s,
        jax.random.PRNGKey(5),
        SCHEDULE,
        prediction="v",
        kind=kind,
        num_steps=16,
    )
    mse_noisy = float(jnp.mean((y - x) ** 2))
    mse_restored = float(jnp.mean((restored - x) ** 2))
    # A posterior sample (ddpm) has MSE 2 * posterior variance = 0.13 here; ddim is lower.
    assert mse_restored < 0.7 * mse_noisy, (mse_restored, mse_noisy)


def test_null_condition_forces_the_unconditional_branch():
    # Data = one fixed image x0 when unconditional: exact x_hat = x0. The conditional
    # branch answers -x0, so any step run with drop_cond False would show.
    x0 = jnp.linspace(-0.8, 0.8, 16).reshape(1, 4, 4, 1)

    def apply_fn(params, z_t, logsnr, cond, drop_cond):
        x_hat = jnp.where(drop_cond[:, None, None, None], x0, -x0)
        return _output(jnp.broadcast_to(x_hat, z_t.shape), z_t, logsnr, "v")

    y = denoise_lib.add_noise(jnp.tile(x0, (2, 1, 1, 1)), 0.5, jax.random.PRNGKey(6))
    kwargs = dict(prediction="v", num_steps=4, cond=jnp.zeros((2, 3)))
    null = denoise_lib.denoise(apply_fn, None, y, 0.5, jax.random.PRNGKey(7), SCHEDULE, **kwargs)
    np.testing.assert_allclose(null, jnp.tile(x0, (2, 1, 1, 1)), atol=1e-5)
    conditional = denoise_lib.denoise(
        apply_fn, None, y, 0.5, jax.random.PRNGKey(7), SCHEDULE, null_condition=False, **kwargs
    )
    np.testing.assert_allclose(conditional, -jnp.tile(x0, (2, 1, 1, 1)), atol=1e-5)


def test_denoise_cli_writes_three_panels(tool_workdir, tool_inputs, tmp_path, run_tool, ok):
    out = tmp_path / "denoised.png"
    proc = ok(
        run_tool(
            "denoise",
            f"--workdir={tool_workdir}",
            f"--image={tool_inputs['png']}",
            "--noise=0.5",
            "--steps=2",
            f"--out={out}",
        )
    )
    assert "null condition" in proc.stderr and "MSE vs clean" in proc.stdout
    panels = np.asarray(Image.open(out))
    assert panels.shape == (CELL + 2, 3 * CELL + 2)
    clean, _ = image_io.load_image(tool_inputs["png"], SIZE, 1)
    np.testing.assert_array_equal(panels[2 : 2 + SIZE, 2 : 2 + SIZE], clean[..., 0])
    noisy = panels[2 : 2 + SIZE, 2 + CELL : 2 + CELL + SIZE].astype(np.float32) / 127.5 - 1
    # The noisy panel is clip(x + 0.5 n): its residual has std near 0.5 before clipping.
    residual = noisy - (clean[..., 0].astype(np.float32) / 127.5 - 1)
    assert 0.25 < residual.std() < 0.55
