"""conditioning.py through the real sampler: several references, blends, a negative image,
all checked by value against the plain calls they must reduce to."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist
from semantica_jax import conditioning, decoder
from semantica_jax.diffusion import samplers
from semantica_jax.models import uvit

NUM = 3


@pytest.fixture(scope="module")
def setup():
    """(variation_fn, params, tokens [4, T, D], cls [4, D]) for the tiny decoder with random
    O(1/sqrt(fan-in)) weights, so that the zero-initialised layers pass the condition."""
    config = mnist.get_config("tiny")
    model = decoder.build_model(config)
    t = (config.data.image_size // config.encoder.patch_size) ** 2
    inputs = uvit.example_inputs(model.config, 2, t, config.encoder.width)
    params = model.init(jax.random.key(0), *inputs, train=False)["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda p: p + rng.standard_normal(p.shape).astype("f4") / np.sqrt(max(p.shape[0], 1)),
        params,
    )
    fn = decoder.make_variation_fn(config, model, kind="ddim", num_steps=3)
    tokens = rng.standard_normal((4, t, config.encoder.width)).astype("f4")
    cls = rng.standard_normal((4, config.encoder.width)).astype("f4")
    return fn, params, tokens, cls


def _sample(setup, cond, w=1.0, **kw):
    fn, params, _, _ = setup
    cond = conditioning.repeat(cond, NUM)
    extra = {k: cond[k] for k in ("token_logw", "negative") if k in cond}
    out = fn(params, cond["tokens"], cond["cls"], jax.random.key(7), jnp.float32(w), **kw, **extra)
    return np.asarray(out)


def _single(setup, i):
    _, _, tokens, cls = setup
    return {"tokens": jnp.asarray(tokens[i : i + 1]), "cls": jnp.asarray(cls[i : i + 1])}


def test_combine_of_one_reference_is_the_plain_call(setup):
    _, _, tokens, cls = setup
    plain = _sample(setup, _single(setup, 0))
    assert plain.std() > 0.05
    np.testing.assert_array_equal(_sample(setup, conditioning.combine(tokens[:1], cls[:1])), plain)


def test_a_reference_given_twice_is_the_reference(setup):
    """2T tokens (the null tiled to 2T too) attend exactly as T: duplicated keys."""
    _, _, tokens, cls = setup
    twice = conditioning.combine(np.concatenate([tokens[:1]] * 2), np.concatenate([cls[:1]] * 2))
    assert twice["tokens"].shape[1] == 2 * tokens.shape[1]
    np.testing.assert_allclose(_sample(setup, twice), _sample(setup, _single(setup, 0)), atol=2e-5)


def test_combining_several_references_changes_the_samples(setup):
    _, _, tokens, cls = setup
    both = _sample(setup, conditioning.combine(tokens[:2], cls[:2]))
    for i in (0, 1):
        assert np.abs(both - _sample(setup, _single(setup, i))).mean() > 1e-3
    np.testing.assert_allclose(conditioning.combine(tokens[:2], cls[:2])["cls"][0], cls[:2].mean(0))


def test_blend_ends_are_the_single_images(setup):
    _, _, tokens, cls = setup
    blend = lambda a: conditioning.blend(jnp.asarray(tokens[:2]), jnp.asarray(cls[:2]), a)  # noqa: E731
    np.testing.assert_allclose(
        _sample(setup, blend(0.0)), _sample(setup, _single(setup, 0)), atol=2e-5
    )
    np.testing.assert_allclose(
        _sample(setup, blend(1.0)), _sample(setup, _single(setup, 1)), atol=2e-5
    )
    middle = _sample(setup, blend(0.5))
    for i in (0, 1):
        assert np.abs(middle - _sample(setup, _single(setup, i))).mean() > 1e-3


def test_blend_cls_is_normalised_interpolation():
    cls = jnp.asarray([[3.0, 0.0], [0.0, 1.0]])
    tokens = jnp.zeros((2, 4, 2))
    out = conditioning.blend(tokens, cls, 0.5)
    np.testing.assert_allclose(out["cls"][0], np.array([1.0, 1.0]) / np.sqrt(2) * 2.0, atol=1e-6)
    np.testing.assert_allclose(out["token_logw"][0], np.log([0.5] * 4 + [0.5] * 4), atol=1e-6)
    assert out["tokens"].shape == (1, 8, 2)


def test_negative_replaces_the_null_condition(setup):
    _, params, _, _ = setup
    model = decoder.build_model(mnist.get_config("tiny"))
    apply = decoder.DecoderApply(model)
    pos, neg = _single(setup, 0), _single(setup, 1)
    # A negative equal to the condition cancels guidance: (1 + w) c - w c = c.
    same = _sample(setup, conditioning.with_negative(pos, pos["tokens"], pos["cls"]), w=2.0)
    np.testing.assert_allclose(same, _sample(setup, pos, w=0.0), atol=2e-5)
    # The guided batch's second half is the negative's condition where it was the null's.
    plain = apply.prepare(params, pos, guided=True)
    steered = apply.prepare(params, conditioning.with_negative(pos, **neg), guided=True)
    alone = apply.prepare(params, neg, guided=False)
    for a, b, c in zip(
        jax.tree.leaves(plain), jax.tree.leaves(steered), jax.tree.leaves(alone), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a)[:1], np.asarray(b)[:1])
        np.testing.assert_allclose(np.asarray(b)[1:], np.asarray(c), atol=1e-6)
    # And the samples move away from the plain guided ones.
    away = _sample(setup, conditioning.with_negative(pos, **neg), w=2.0)
    assert np.abs(away - _sample(setup, pos, w=2.0)).mean() > 1e-3


def test_new_values_never_recompile(setup):
    _, _, tokens, cls = setup
    images = np.zeros((NUM, 28, 28, 1), np.float32)
    cond = lambda a: conditioning.blend(jnp.asarray(tokens[:2]), jnp.asarray(cls[:2]), a)  # noqa: E731
    _sample(setup, cond(0.1), w=0.5, t_start=0.5, x_start=images)
    before = samplers._run_jit._cache_size()
    for a, w, t0 in ((0.3, 1.0, 0.7), (0.9, 2.0, 0.2)):
        _sample(setup, cond(a), w=w, t_start=t0, x_start=images)
    assert samplers._run_jit._cache_size() == before  # new alpha, w, t0: no compile
    neg = _single(setup, 2)
    _sample(setup, conditioning.with_negative(_single(setup, 0), **neg), w=1.0)
    middle = samplers._run_jit._cache_size()
    _sample(setup, conditioning.with_negative(_single(setup, 1), **_single(setup, 3)), w=3.0)
    assert samplers._run_jit._cache_size() == middle  # new images and scale: none either


def test_token_counts_that_are_not_whole_references_are_refused(setup):
    _, _, tokens, _ = setup
    with pytest.raises(ValueError, match="cannot tile"):
        conditioning.match_tokens(jnp.asarray(tokens[:1, :5]), tokens.shape[1])
