"""Parametrisation conversions and loss weights (METHODS §1.5–1.6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semantica_jax.diffusion import losses, schedules

SHAPE = (6, 4, 4, 3)
LOGSNR = jnp.array([-12.0, -4.0, -0.5, 0.0, 3.0, 9.0])


def _batch(seed=0):
    kx, ke, ko = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.uniform(kx, SHAPE, minval=-1.0, maxval=1.0)
    eps = jax.random.normal(ke, SHAPE)
    other = jax.random.normal(ko, SHAPE)  # an imperfect network output
    return x, eps, other


def _bcast(a):
    return np.asarray(a, np.float64).reshape(-1, 1, 1, 1)


def test_diffuse_and_v_target_match_formulas():
    x, eps, _ = _batch()
    alpha, sigma = (_bcast(a) for a in schedules.alpha_sigma(LOGSNR))
    z = losses.diffuse(x, eps, LOGSNR)
    np.testing.assert_allclose(z, alpha * np.asarray(x) + sigma * np.asarray(eps), atol=1e-6)
    v = losses.v_target(x, eps, LOGSNR)
    np.testing.assert_allclose(v, alpha * np.asarray(eps) - sigma * np.asarray(x), atol=1e-6)


def test_true_targets_are_recovered_from_each_parametrisation():
    x, eps, _ = _batch()
    z = losses.diffuse(x, eps, LOGSNR)
    v = losses.v_target(x, eps, LOGSNR)
    mid = slice(1, 5)  # eps->x divides by alpha, x->eps by sigma: moderate logsnr only
    for prediction, output in (("v", v), ("eps", eps), ("x", x)):
        x_pred, eps_pred, v_pred = losses.predictions(output, z, LOGSNR, prediction)
        sl = slice(None) if prediction == "v" else mid
        np.testing.assert_allclose(x_pred[sl], x[sl], atol=2e-5, err_msg=prediction)
        np.testing.assert_allclose(eps_pred[sl], eps[sl], atol=2e-5, err_msg=prediction)
        np.testing.assert_allclose(v_pred[sl], v[sl], atol=2e-5, err_msg=prediction)


def test_conversions_invert_each_other_for_any_output():
    _, _, out = _batch()
    z = jax.random.normal(jax.random.key(3), SHAPE)
    logsnr = LOGSNR[1:5]
    out, z = out[1:5], z[1:5]
    x_pred, eps_pred, v_pred = losses.predictions(out, z, logsnr, "v")
    for prediction, output in (("eps", eps_pred), ("x", x_pred)):
        back = losses.predictions(output, z, logsnr, prediction)
        for got, want in zip(back, (x_pred, eps_pred, v_pred), strict=True):
            np.testing.assert_allclose(got, want, atol=2e-5, err_msg=prediction)
    # The implied x and eps always reproduce z: z = alpha x_hat + sigma eps_hat.
    np.testing.assert_allclose(losses.diffuse(x_pred, eps_pred, logsnr), z, atol=1e-5)


@pytest.mark.parametrize("prediction", ["v", "eps", "x"])
@pytest.mark.parametrize("loss", list(losses.LOSSES))
def test_perfect_prediction_has_zero_loss(prediction, loss):
    x, eps, _ = _batch()
    target = {"v": losses.v_target(x, eps, LOGSNR), "eps": eps, "x": x}[prediction]
    value = losses.diffusion_loss(target, x, eps, LOGSNR, prediction, loss)
    assert value.shape == (SHAPE[0],)
    np.testing.assert_array_equal(value, 0.0)


def test_eps_space_loss_of_v_prediction_equals_weighted_forms():
    x, eps, v_hat = _batch()
    z = losses.diffuse(x, eps, LOGSNR)
    v = losses.v_target(x, eps, LOGSNR)
    got = np.asarray(losses.diffusion_loss(v_hat, x, eps, LOGSNR, "v", "eps"), np.float64)
    alpha, _ = schedules.alpha_sigma(LOGSNR)
    mse = lambda a, b: np.mean((np.asarray(a, np.float64) - np.asarray(b)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(got, np.asarray(alpha, np.float64) ** 2 * mse(v, v_hat), rtol=1e-5)
    x_pred, eps_pred, _ = losses.predictions(v_hat, z, LOGSNR, "v")
    np.testing.assert_allclose(got, mse(eps, eps_pred), rtol=1e-4)
    snr = np.exp(np.asarray(LOGSNR, np.float64))
    np.testing.assert_allclose(got[1:], snr[1:] * mse(x, x_pred)[1:], rtol=1e-3)


@pytest.mark.parametrize("loss", list(losses.LOSSES))
def test_loss_space_is_independent_of_the_parametrisation(loss):
    # One network belief, expressed as v, eps or x, must give one loss value.
    x, eps, v_hat = _batch(1)
    logsnr = LOGSNR[1:5]
    x, eps, v_hat = x[1:5], eps[1:5], v_hat[1:5]
    z = losses.diffuse(x, eps, logsnr)
    x_pred, eps_pred, _ = losses.predictions(v_hat, z, logsnr, "v")
    ref = losses.diffusion_loss(v_hat, x, eps, logsnr, "v", loss)
    for prediction, output in (("eps", eps_pred), ("x", x_pred)):
        got = losses.diffusion_loss(output, x, eps, logsnr, prediction, loss)
        np.testing.assert_allclose(got, ref, rtol=2e-4, err_msg=prediction)


def test_loss_weights_relative_to_x_space():
    x, eps, x_hat = _batch(2)
    x_mse = np.mean((np.asarray(x_hat) - np.asarray(x)) ** 2, axis=(1, 2, 3))
    snr = np.exp(np.asarray(LOGSNR, np.float64))
    want = {
        "x": x_mse,
        "eps": snr * x_mse,
        "v": (1 + snr) * x_mse,
        "snr_trunc": np.maximum(snr, 1) * x_mse,
        "min_snr": np.minimum(snr, 5.0) * x_mse,
    }
    for loss, value in want.items():
        got = losses.diffusion_loss(x_hat, x, eps, LOGSNR, "x", loss)
        np.testing.assert_allclose(got, value, rtol=1e-5, err_msg=loss)


def test_min_snr_is_the_eps_loss_capped_at_gamma():
    # Hang et al. 2023: eps-loss weight min(SNR, gamma) / SNR, i.e. the eps loss where
    # SNR <= gamma and gamma / SNR of it above (low noise).
    x, eps, v_hat = _batch(3)
    logsnr = jnp.array([-4.0, 0.0, np.log(2.0), np.log(8.0), 6.0, 12.0])
    eps_loss = np.asarray(losses.diffusion_loss(v_hat, x, eps, logsnr, "v", "eps"), np.float64)
    snr = np.exp(np.asarray(logsnr, np.float64))
    for gamma in (1.0, 5.0):
        got = losses.diffusion_loss(v_hat, x, eps, logsnr, "v", "min_snr", min_snr_gamma=gamma)
        want = eps_loss * np.minimum(1.0, gamma / snr)
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=str(gamma))
    # gamma = 5 (the default): untouched up to SNR 2, 5/8 of it at SNR 8.
    got = np.asarray(losses.diffusion_loss(v_hat, x, eps, logsnr, "v", "min_snr"))
    np.testing.assert_allclose(got[:3], eps_loss[:3], rtol=1e-5)
    np.testing.assert_allclose(got[3], eps_loss[3] * 5 / 8, rtol=1e-5)
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        losses.diffusion_loss(v_hat, x, eps, logsnr, "v", "min_snr", min_snr_gamma=0.0)


def test_extreme_logsnr_stays_finite():
    x, eps, out = _batch()
    logsnr = jnp.array([-40.0, -25.0, -19.2, 19.2, 25.0, 40.0])
    for prediction in ("v", "eps", "x"):
        value = losses.diffusion_loss(out, x, eps, logsnr, prediction, "eps")
        assert np.all(np.isfinite(value)), prediction
    # v-prediction with eps loss: weight alpha^2 -> 0 at the noise end, 1 at the data end.
    value = losses.diffusion_loss(out, x, eps, logsnr, "v", "eps")
    v = losses.v_target(x, eps, logsnr)
    mse = np.mean((np.asarray(out) - np.asarray(v)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(value, np.asarray(jax.nn.sigmoid(logsnr)) * mse, rtol=1e-5)


def test_bad_arguments_are_named():
    x, eps, out = _batch()
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        losses.predictions(out, x, LOGSNR, "score")
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        losses.diffusion_loss(out, x, eps, LOGSNR, "v", "l1")
    with pytest.raises(ValueError, match=r"logsnr must have shape \[B\]"):
        losses.diffuse(x, eps, LOGSNR[:, None])
    with pytest.raises(ValueError, match="must have one shape"):
        losses.diffusion_loss(out[:, :2], x, eps, LOGSNR, "v", "eps")
