"""models/vit.py: the encoder's ViT."""

import jax.numpy as jnp
import numpy as np
import pytest

from semantica_jax.models.vit import ViTConfig


def test_vit_shapes_and_cls_is_layer_normed(make_bundle, small_vit):
    bundle = make_bundle(small_vit, 0)
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 28, 28, 1)), jnp.float32)
    tokens, cls = bundle.model.apply({"params": bundle.params}, images)
    assert tokens.shape == (3, 49, 16) and cls.shape == (3, 16)
    # Final LayerNorm at init (scale 1, bias 0): each CLS vector has mean 0 and variance 1.
    np.testing.assert_allclose(np.mean(cls, axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.var(cls, axis=-1), 1.0, rtol=1e-3)
    emb = bundle.model.apply({"params": bundle.params}, cls, method=bundle.model.embed)
    assert emb.shape == (3, 8)
    with pytest.raises(ValueError, match="expects images"):
        bundle.model.apply({"params": bundle.params}, jnp.zeros((1, 32, 32, 1)))


def test_vit_config_rejects_bad_sizes(tiny_encoder_cfg):
    cfg = tiny_encoder_cfg(patch_size=5)
    with pytest.raises(ValueError, match="patch_size=5 does not divide"):
        ViTConfig.from_config(cfg, 28, 1)
