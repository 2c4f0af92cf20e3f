"""decoder.DecoderApply: the sampler's once-per-call condition cache changes no sample."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist
from semantica_jax import decoder
from semantica_jax.diffusion import samplers
from semantica_jax.models import uvit


@dataclasses.dataclass(frozen=True)
class _Uncached:
    """The decoder without `prepare`: every step re-derives its condition."""

    model: uvit.UViT

    def __call__(self, params, z_t, logsnr, cond, drop_cond):
        return self.model.apply(
            {"params": params}, z_t, logsnr, cond["tokens"], cond["cls"], drop_cond, train=False
        )


def _tiny_decoder(seed: int):
    """(tiny config, its U-ViT, params with random O(1/sqrt(fan-in)) weights added, tokens
    per conditioning image, a numpy Generator): the zero-initialised layers pass signal."""
    config = mnist.get_config("tiny")
    model = decoder.build_model(config)
    tokens_n = (config.data.image_size // config.encoder.patch_size) ** 2
    inputs = uvit.example_inputs(model.config, 2, tokens_n, config.encoder.width)
    params = model.init(jax.random.key(0, impl="unsafe_rbg"), *inputs, train=False)["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda p: p + rng.standard_normal(p.shape).astype("f4") / np.sqrt(max(p.shape[0], 1)),
        params,
    )
    return config, model, params, tokens_n, rng


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_cached_sampler_matches_the_uncached_one(kind):
    config, model, params, tokens_n, rng = _tiny_decoder(0)
    cond = {
        "tokens": rng.standard_normal((3, tokens_n, config.encoder.width)).astype("f4"),
        "cls": rng.standard_normal((3, config.encoder.width)).astype("f4"),
    }
    shape = (3, config.data.image_size, config.data.image_size, config.data.channels)
    common = dict(prediction="v", kind=kind, num_steps=4, guided=True)
    logsnr_fn = decoder.training_logsnr_fn(config)
    key = jax.random.key(3)
    cached = samplers.make_sampler(decoder.DecoderApply(model), shape, logsnr_fn, **common)
    plain = samplers.make_sampler(_Uncached(model), shape, logsnr_fn, **common)
    for w in (0.0, 1.5):
        a, b = np.asarray(cached(params, cond, key, w)), np.asarray(plain(params, cond, key, w))
        assert np.std(a) > 0.05
        np.testing.assert_allclose(a, b, atol=2e-5)
    # The null half of the prepared batch is the null condition broadcast to every row.
    prepared = decoder.DecoderApply(model).prepare(params, cond, guided=True)
    k = np.asarray(jax.tree.leaves(prepared["kv"])[0])
    assert k.shape[0] == 6 and np.all(k[3:] == k[3]) and not np.allclose(k[0], k[1])
    assert jnp.allclose(prepared["cls_term"][4], prepared["cls_term"][5])
    # null_only (denoise's unconditional branch): every row is the null condition.
    null = decoder.DecoderApply(model).prepare(params, cond, guided=False, null_only=True)
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(null["kv"])[0]), k[3:])


def test_variation_fn_runs_the_conditional_branch_alone_at_a_concrete_zero(monkeypatch):
    """w = 0 (Python or a concrete array) takes the unguided path: same samples, half the batch."""
    config, model, params, tokens_n, rng = _tiny_decoder(1)
    tokens = rng.standard_normal((3, tokens_n, config.encoder.width)).astype("f4")
    cls = rng.standard_normal((3, config.encoder.width)).astype("f4")
    seen = []
    make = samplers.make_sampler
    monkeypatch.setattr(
        samplers, "make_sampler", lambda *a, **kw: seen.append(kw["guided"]) or make(*a, **kw)
    )
    fn = decoder.make_variation_fn(config, model, num_steps=3)
    key = jax.random.key(5)
    plain = [np.asarray(fn(params, tokens, cls, key, w)) for w in (0.0, jnp.float32(0))]
    negative = {"tokens": tokens[::-1], "cls": cls[::-1]}  # enters only through w
    plain.append(np.asarray(fn(params, tokens, cls, key, 0, negative=negative)))
    guided = np.asarray(fn(params, tokens, cls, key, jnp.float32(0.5)))
    assert seen == [False, False, False, True]
    # The doubled batch with a traced w = 0 gives the same samples as the unguided path.
    doubled = samplers.make_sampler(
        decoder.DecoderApply(model),
        (3, config.data.image_size, config.data.image_size, config.data.channels),
        decoder.training_logsnr_fn(config),
        **dataclasses.asdict(decoder.SamplerSettings.from_config(config, num_steps=3)),
        guided=True,
    )
    assert np.std(plain[0]) > 0.05 and not np.allclose(plain[0], guided)
    for p in plain[1:]:
        np.testing.assert_array_equal(p, plain[0])
    zero = np.asarray(doubled(params, {"tokens": tokens, "cls": cls}, key, 0.0))
    np.testing.assert_allclose(zero, plain[0], atol=2e-5)
