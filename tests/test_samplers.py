"""Samplers driven by EXACT denoisers of known data (METHODS §2–§3).

For Gaussian data x ~ N(mu, Sigma) per pixel vector, E[x | z_t] is linear in z_t; for
the two-point data x = +-a it is a tanh(a alpha z / sigma^2). A correct sampler fed these
must reproduce the data moments up to its discretisation error.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semantica_jax.diffusion import losses, samplers, schedules

SCHED = schedules.CosineSchedule(-15.0, 15.0, 0.0)
MU = np.array([0.5, -0.2])
COV = np.array([[0.09, 0.03], [0.03, 0.04]])


def _gaussian_model(prediction, mu=MU, cov=COV):
    """model_fn whose output is the exact E[x | z_t] for x ~ N(mu, cov) over channels.

    In the eigenbasis cov = U diag(d) U^T the posterior mean is per-coordinate:
    E[x | z] = mu + U diag(alpha d / (alpha^2 d + sigma^2)) U^T (z - alpha mu).
    """
    d, u = np.linalg.eigh(np.asarray(cov, np.float64))
    mu, d, u = (jnp.asarray(a, jnp.float32) for a in (mu, d, u))

    def model_fn(z, logsnr, cond, drop_cond):
        alpha, sigma = schedules.alpha_sigma(logsnr[:, None, None, None])
        coords = (z - alpha * mu) @ u
        x_pred = mu + (alpha * d / (alpha**2 * d + sigma**2) * coords) @ u.T
        return _to_prediction(x_pred, z, logsnr, prediction)

    return model_fn


def _to_prediction(x_pred, z, logsnr, prediction):
    """Expresses an exact x_hat in the requested parametrisation (METHODS §1.5)."""
    if prediction == "x":
        return x_pred
    alpha, sigma = schedules.alpha_sigma(logsnr[:, None, None, None])
    if prediction == "v":
        return (alpha * z - x_pred) / sigma
    return (z - alpha * x_pred) / sigma


def _two_point_model(a, prediction="x"):
    def model_fn(z, logsnr, cond, drop_cond):
        alpha, sigma = schedules.alpha_sigma(logsnr[:, None, None, None])
        x_pred = a * jnp.tanh(a * alpha * z / sigma**2)
        return _to_prediction(x_pred, z, logsnr, prediction)

    return model_fn


def _moments(x):
    flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return flat.mean(0), np.cov(flat, rowvar=False)


# --- single-step maths ------------------------------------------------------------------


def test_posterior_mean_and_variance_match_monte_carlo():
    # q(z_s | z_t, x) for fixed x: draw (z_s, z_t) from the forward process, regress.
    rng = np.random.default_rng(0)
    lt, ls, x = -1.0, 1.5, 0.7
    a = lambda lam: math.sqrt(1 / (1 + math.exp(-lam)))
    s = lambda lam: math.sqrt(1 / (1 + math.exp(lam)))
    n = 400_000
    z_s = a(ls) * x + s(ls) * rng.standard_normal(n)
    alpha_ts = a(lt) / a(ls)
    sigma_ts = math.sqrt(s(lt) ** 2 - alpha_ts**2 * s(ls) ** 2)  # METHODS §2.1
    z_t = alpha_ts * z_s + sigma_ts * rng.standard_normal(n)
    slope, intercept = np.polyfit(z_t, z_s, 1)
    resid_var = np.var(z_s - (slope * z_t + intercept))

    coef_z, coef_x = samplers.posterior_mean_coefs(jnp.float32(lt), jnp.float32(ls))
    assert float(coef_z) == pytest.approx(slope, abs=3e-3)
    assert float(coef_x) * x == pytest.approx(intercept, abs=3e-3)
    post_var = math.exp(float(samplers.ddpm_log_variance(lt, ls, 0.0)))
    assert post_var == pytest.approx(resid_var, rel=1e-2)
    # gamma = 1 is the forward variance sigma_{t|s}^2; gamma = 0.2 the closed form.
    fwd_var = math.exp(float(samplers.ddpm_log_variance(lt, ls, 1.0)))
    assert fwd_var == pytest.approx(sigma_ts**2, rel=1e-5)
    c = -math.expm1(lt - ls)
    std = math.exp(0.5 * float(samplers.ddpm_log_variance(lt, ls, 0.2)))
    assert std == pytest.approx(math.sqrt(c) * s(lt) ** 0.2 * s(ls) ** 0.8, rel=1e-5)


def test_step_coefficients_finite_at_the_ends():
    coef_z, coef_x = samplers.posterior_mean_coefs(jnp.float32(-15.0), jnp.float32(-10.0))
    want = math.exp(-5.0) * math.sqrt((1 / (1 + math.exp(10))) / (1 / (1 + math.exp(15))))
    assert float(coef_z) == pytest.approx(want, rel=1e-4)
    logvar = samplers.ddpm_log_variance(jnp.float32(14.0), jnp.float32(15.0), 0.2)
    assert np.isfinite(float(logvar))
    x = jnp.array([1e-7, 1e-3, 0.5, 1.0, 30.0])
    np.testing.assert_allclose(
        samplers.log1mexp(x), np.log1p(-np.exp(-np.asarray(x, float))), rtol=1e-5
    )


# --- whole samplers against exact denoisers ---------------------------------------------


def _affine_reference(n_steps, kind, gamma, mu, var):
    """float64 propagation of (mean, var) for 1-D Gaussian data through the discrete
    sampler with the exact denoiser, straight from the METHODS §2 formulas."""
    lam = lambda t: float(schedules.cosine_logsnr(np.float64(t)))
    sig = lambda v: 1 / (1 + math.exp(-v))
    m, v = 0.0, 1.0
    for i in range(n_steps - 1, -1, -1):
        lt, ls = lam((i + 1) / n_steps), lam(i / n_steps)
        at, st = math.sqrt(sig(lt)), math.sqrt(sig(-lt))
        as_, ss = math.sqrt(sig(ls)), math.sqrt(sig(-ls))
        gain = at * var / (at**2 * var + st**2)  # x_hat = mu + gain (z - at mu)
        if i == 0:
            return mu + gain * (m - at * mu), gain**2 * v
        if kind == "ddpm":
            c = -math.expm1(lt - ls)
            coef_z, coef_x = as_ * (1 - c) / at, as_ * c
            noise_var = c * st ** (2 * gamma) * ss ** (2 * (1 - gamma))
        else:
            coef_z, coef_x, noise_var = ss / st, as_ - ss * at / st, 0.0
        slope = coef_z + coef_x * gain
        m = slope * m + coef_x * (mu - gain * at * mu)
        v = slope**2 * v + noise_var


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_few_steps_match_the_discrete_recursion(kind):
    # With 6 steps the sampler is far from the data, but exactly as far as the float64
    # recursion of METHODS §2.2-2.5 says: this pins every step coefficient.
    mu, var = 0.3, 0.05
    model = _gaussian_model("v", mu=[mu], cov=[[var]])
    x = samplers.sample(
        model,
        None,
        jax.random.key(1),
        (50_000, 1, 1, 1),
        SCHED,
        prediction="v",
        kind=kind,
        num_steps=6,
        gamma=0.2,
        clip_x=False,
    )
    want_mean, want_var = _affine_reference(6, kind, 0.2, mu, var)
    assert abs(want_var / var - 1) > 0.05  # the check below is not vacuous
    assert float(np.mean(x)) == pytest.approx(want_mean, abs=3e-3)
    assert float(np.var(x)) == pytest.approx(want_var, rel=0.015)


def test_ddim_is_the_exact_deterministic_map():
    # Starting from a given z_1 (x_start_is_noisy), DDIM on Gaussian data is affine:
    # x = m + sqrt(v) z_1 with (m, v) from the recursion started at (0, 1).
    mu, var = 0.3, 0.05
    z1 = jax.random.normal(jax.random.key(2), (64, 1, 1, 1))
    model = _gaussian_model("v", mu=[mu], cov=[[var]])
    x = samplers.sample(
        model,
        None,
        jax.random.key(3),
        z1.shape,
        SCHED,
        prediction="v",
        kind="ddim",
        num_steps=8,
        clip_x=False,
        x_start=z1,
        x_start_is_noisy=True,
    )
    m, v = _affine_reference(8, "ddim", 0.0, mu, var)
    np.testing.assert_allclose(x, m + math.sqrt(v) * np.asarray(z1), atol=2e-5)


def _ddim_clip_reference(z1, n_steps, x_raw_fn, recompute_eps):
    """float64 DDIM with clipping (METHODS §2.4-2.5): x_hat = clip(.), eps_hat =
    (z_t - alpha_t x_hat) / sigma_t, z_s = alpha_s x_hat + sigma_s eps_hat, last step
    returns x_hat. recompute_eps=False keeps the unclipped eps_hat (the wrong variant)."""
    z = np.asarray(z1, np.float64)
    for i in range(n_steps - 1, -1, -1):
        lt = float(schedules.cosine_logsnr(np.float64((i + 1) / n_steps)))
        ls = float(schedules.cosine_logsnr(np.float64(i / n_steps)))
        at, st = math.sqrt(1 / (1 + math.exp(-lt))), math.sqrt(1 / (1 + math.exp(lt)))
        as_, ss = math.sqrt(1 / (1 + math.exp(-ls))), math.sqrt(1 / (1 + math.exp(ls)))
        x_raw = x_raw_fn(z)
        x_hat = np.clip(x_raw, -1.0, 1.0)
        eps_hat = (z - at * (x_hat if recompute_eps else x_raw)) / st
        z = x_hat if i == 0 else as_ * x_hat + ss * eps_hat
    return z


def test_ddim_clips_x_and_recomputes_eps_from_it():
    # x_hat = 0.6 z leaves [-1, 1] early in the chain; the end points stay inside, so the
    # result depends on eps_hat having been recomputed from the clipped x_hat.
    n_steps = 5
    z1 = np.linspace(-2.0, 2.0, 16, dtype=np.float32).reshape(16, 1, 1, 1)

    def model_fn(z, logsnr, cond, drop_cond):
        return _to_prediction(0.6 * z, z, logsnr, "v")

    got = samplers.sample(
        model_fn,
        None,
        jax.random.key(0),
        z1.shape,
        SCHED,
        prediction="v",
        kind="ddim",
        num_steps=n_steps,
        clip_x=True,
        x_start=jnp.asarray(z1),
        x_start_is_noisy=True,
    )
    want = _ddim_clip_reference(z1, n_steps, lambda z: 0.6 * z, recompute_eps=True)
    wrong = _ddim_clip_reference(z1, n_steps, lambda z: 0.6 * z, recompute_eps=False)
    assert np.max(np.abs(want - wrong)) > 0.05  # the two variants are distinguishable
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("kind,num_steps,prediction", [("ddpm", 1024, "v"), ("ddim", 512, "x")])
def test_gaussian_2d_moments_are_reproduced(kind, num_steps, prediction):
    model = _gaussian_model(prediction)
    x = samplers.sample(
        model,
        None,
        jax.random.key(0),
        (50_000, 1, 1, 2),
        SCHED,
        prediction=prediction,
        kind=kind,
        num_steps=num_steps,
        clip_x=False,
    )
    mean, cov = _moments(x)
    np.testing.assert_allclose(mean, MU, atol=0.004)
    np.testing.assert_allclose(np.diag(cov), np.diag(COV), rtol=0.02)
    assert cov[0, 1] == pytest.approx(COV[0, 1], rel=0.03)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_two_point_mixture_is_reproduced(kind):
    # Samples land on +-a, so the variance has almost no Monte-Carlo noise; 10k samples
    # pin the balance of the two points to +-0.005 (one standard error).
    a = 0.8
    x = samplers.sample(
        _two_point_model(a, "v"),
        None,
        jax.random.key(5),
        (2_500, 2, 2, 1),
        SCHED,
        prediction="v",
        kind=kind,
        num_steps=256,
        clip_x=True,
    )
    x = np.asarray(x, np.float64).ravel()
    assert abs(x.mean()) < 0.02
    assert x.var() == pytest.approx(a**2, rel=0.02)
    assert np.mean(np.abs(np.abs(x) - a) < 0.02) > 0.97  # mass sits on the two points
    assert np.mean(x > 0) == pytest.approx(0.5, abs=0.01)


# --- guidance ------------------------------------------------------------------------------


def _guided_pair_model(trace_batches):
    """Exact denoiser whose data mean is cond['mu'] (conditional) or -0.5 (dropped)."""

    def model_fn(z, logsnr, cond, drop_cond):
        trace_batches.append(z.shape[0])
        mu = jnp.where(drop_cond, -0.5, cond["mu"])[:, None, None, None]
        alpha, sigma = schedules.alpha_sigma(logsnr[:, None, None, None])
        var = 0.04
        return mu + alpha * var / (alpha**2 * var + sigma**2) * (z - alpha * mu)

    return model_fn


def test_guidance_zero_is_the_conditional_branch_and_w_pushes_away():
    batch = 4000
    cond = {"mu": jnp.full((batch,), 0.5)}
    shape = (batch, 1, 1, 1)
    seen = []
    model = _guided_pair_model(seen)
    common = dict(prediction="x", kind="ddim", num_steps=32, clip_x=False)
    rng = jax.random.key(7)
    plain = samplers.sample(model, cond, rng, shape, SCHED, guidance=0.0, **common)
    assert seen == [batch]  # w = 0: conditional branch only
    # The doubled-batch path with a traced w = 0 gives the same samples.
    guided = samplers.make_sampler(
        lambda p, *args: model(*args), shape, SCHED, guided=True, **common
    )
    doubled_zero = guided(None, cond, rng, guidance=0.0)
    assert seen[-1] == 2 * batch
    np.testing.assert_allclose(doubled_zero, plain, atol=1e-6)
    np.testing.assert_allclose(np.mean(plain), 0.5, atol=0.01)

    means = [float(np.mean(guided(None, cond, rng, guidance=w))) for w in (0.5, 1.0, 2.0)]
    assert means[0] > 0.5 + 0.1  # pushed beyond the conditional mean, away from -0.5
    assert means[0] < means[1] < means[2]
    # Exact: x_hat_w = x_c + w (x_c - x_u), and at the last step x_c - x_u is
    # (1 - alpha gain)(mu_c - mu_u) ~ 1, so the mean moves by about w.
    assert means[1] == pytest.approx(0.5 + 1.0, abs=0.05)


# --- partial denoising ---------------------------------------------------------------------


def _dist_to_data(x, a):
    x = np.asarray(x, np.float64)
    return float(np.mean(np.minimum(np.abs(x - a), np.abs(x + a))))


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_sdedit_lands_closer_to_the_data(kind):
    a, shape = 0.8, (4000, 2, 2, 1)
    k_sign, k_pert, k_run = jax.random.split(jax.random.key(11), 3)
    x0 = a * jnp.sign(jax.random.normal(k_sign, shape))
    x_start = x0 + 0.25 * jax.random.normal(k_pert, shape)  # off the data manifold
    out = samplers.sample(
        _two_point_model(a),
        None,
        k_run,
        shape,
        SCHED,
        prediction="x",
        kind=kind,
        num_steps=32,
        t_start=0.4,
        x_start=x_start,
    )
    before, after = _dist_to_data(x_start, a), _dist_to_data(out, a)
    assert before > 0.15 and after < 0.02 * before
    # From t_start = 0.4 the global structure (the sign) is mostly kept (chance: 0.5).
    assert np.mean(np.sign(out) == np.sign(x0)) > 0.75


def test_denoising_an_already_noisy_image():
    a, shape, t0 = 0.8, (4000, 2, 2, 1), 0.3
    k_sign, k_noise, k_run = jax.random.split(jax.random.key(12), 3)
    x0 = a * jnp.sign(jax.random.normal(k_sign, shape))
    logsnr0 = jnp.full((shape[0],), SCHED(t0))
    z = losses.diffuse(x0, jax.random.normal(k_noise, shape), logsnr0)
    out = samplers.sample(
        _two_point_model(a),
        None,
        k_run,
        shape,
        SCHED,
        prediction="x",
        kind="ddpm",
        num_steps=32,
        t_start=t0,
        x_start=z,
        x_start_is_noisy=True,
    )
    assert _dist_to_data(out, a) < 0.01
    # The exact reverse process draws the sign from the posterior p = P(+a | z_t0), so
    # it agrees with the truth with probability E[p^2 + (1 - p)^2] under the true x0.
    alpha, sigma = (float(v) for v in schedules.alpha_sigma(SCHED(t0)))
    p_plus = 1 / (1 + np.exp(-2 * a * alpha * np.asarray(z, np.float64) / sigma**2))
    p_true = np.where(np.asarray(x0) > 0, p_plus, 1 - p_plus)
    want = np.mean(p_true * p_true + (1 - p_true) * (1 - p_true))
    assert 0.6 < want < 0.99
    assert np.mean(np.sign(out) == np.sign(x0)) == pytest.approx(want, abs=0.015)


# --- compilation and arguments -------------------------------------------------------------


def test_compiles_once_per_shape():
    traces = []

    def apply_fn(params, z, logsnr, cond, drop_cond):
        traces.append(1)  # runs only while tracing
        return params["scale"] * z + cond["bias"][:, None, None, None]

    shape = (8, 4, 4, 1)
    sampler = samplers.make_sampler(
        apply_fn, shape, SCHED, prediction="eps", kind="ddpm", num_steps=3
    )
    x_start = jnp.zeros(shape)
    for k in range(3):
        sampler(
            {"scale": jnp.float32(0.1 * k)},
            {"bias": jnp.full((8,), 0.1 * k, jnp.float32)},
            jax.random.key(k),
            guidance=0.5 + k,
            t_start=0.5 + 0.1 * k,
            x_start=x_start,
        )
    assert len(traces) == 1
    # A fresh make_sampler with equal settings reuses the same compiled loop.
    samplers.make_sampler(
        apply_fn,
        shape,
        schedules.CosineSchedule(-15.0, 15.0, 0.0),
        prediction="eps",
        kind="ddpm",
        num_steps=3,
    )({"scale": jnp.float32(1.0)}, {"bias": jnp.zeros(8)}, jax.random.key(9), 1.0, 0.9, x_start)
    assert len(traces) == 1


def test_sample_reuses_compilation_across_calls():
    traces = []

    def model_fn(z, logsnr, cond, drop_cond):
        traces.append(1)
        return 0.5 * z

    for k in range(2):
        samplers.sample(
            model_fn,
            None,
            jax.random.key(k),
            (2, 3, 3, 1),
            SCHED,
            prediction="v",
            kind="ddim",
            num_steps=2,
            guidance=0.3 * (k + 1),
        )
    assert len(traces) == 1


def test_bad_arguments_are_named():
    model = _two_point_model(0.5)
    kw = dict(prediction="x", num_steps=2)
    with pytest.raises(ValueError, match="t_start < 1 needs x_start"):
        samplers.sample(model, None, jax.random.key(0), (2, 1, 1, 1), SCHED, t_start=0.5, **kw)
    with pytest.raises(ValueError, match="unknown sampler kind 'euler'"):
        samplers.sample(model, None, jax.random.key(0), (2, 1, 1, 1), SCHED, kind="euler", **kw)
    with pytest.raises(ValueError, match="x_start has shape"):
        samplers.sample(
            model,
            None,
            jax.random.key(0),
            (2, 1, 1, 1),
            SCHED,
            t_start=0.5,
            x_start=jnp.zeros((3, 1, 1, 1)),
            **kw,
        )
    with pytest.raises(ValueError, match="gamma must be in"):
        samplers.sample(model, None, jax.random.key(0), (2, 1, 1, 1), SCHED, gamma=2.0, **kw)


def test_is_unguided_only_for_a_concrete_zero():
    for w in (0, 0.0, -0.0, np.float32(0), jnp.float32(0), jnp.zeros(())):
        assert samplers.is_unguided(w)
    for w in (0.5, -1, jnp.float32(1e-8)):
        assert not samplers.is_unguided(w)
    # Traced, its value is unknown when the sampler is built: the doubled batch.
    assert not jax.jit(lambda w: jnp.float32(samplers.is_unguided(w)))(0.0)
