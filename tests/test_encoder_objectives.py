"""encoder/objectives.py: the losses and pair sampling, by value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semantica_jax.data import image_augment
from semantica_jax.encoder import objectives


def test_contrastive_loss_equals_formula():
    a = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    b = jnp.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    same = jnp.array([1, 0, 0, 1])
    got = np.asarray(objectives.contrastive_loss(a, b, same, margin=2.0, eps=0.0))
    d = np.sqrt(2.0)
    # same: D^2 / 2 ; different: max(0, m - D)^2 / 2 ; coinciding different pair: m^2 / 2.
    np.testing.assert_allclose(got, [1.0, 0.5 * (2.0 - d) ** 2, 2.0, 0.0], rtol=1e-6)
    got_m1 = np.asarray(objectives.contrastive_loss(a, b, same, margin=1.0, eps=0.0))
    np.testing.assert_allclose(got_m1[1], 0.0)  # D = sqrt(2) > m = 1: no push.
    # D = sqrt(D^2 + eps) keeps the gradient finite where embeddings coincide.
    grad = jax.grad(lambda x: objectives.contrastive_loss(x, b, same, 1.0).sum())(a)
    assert np.all(np.isfinite(grad))


def test_in_batch_contrastive_loss_matches_pairwise_formula():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(7, 5))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 1, 0, 2, 1, 0, 2])
    margin = 1.2
    pos, neg = [], []
    for i in range(7):
        for j in range(i + 1, 7):
            dist = np.sqrt(np.sum((emb[i] - emb[j]) ** 2) + 1e-12)
            if labels[i] == labels[j]:
                pos.append(0.5 * dist**2)
            else:
                neg.append(0.5 * max(0.0, margin - dist) ** 2)
    want = 0.5 * np.mean(pos) + 0.5 * np.mean(neg)
    got, metrics = objectives.in_batch_contrastive_loss(
        jnp.asarray(emb, jnp.float32), jnp.asarray(labels), margin
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    cos = emb @ emb.T
    same_cos = [cos[i, j] for i in range(7) for j in range(i + 1, 7) if labels[i] == labels[j]]
    np.testing.assert_allclose(float(metrics["cos_same"]), np.mean(same_cos), rtol=1e-5)


def test_nt_xent_equals_formula():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(6, 4)).astype(np.float32)
    tau = 0.5
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = []
    for i in range(6):
        pos = (i + 3) % 6
        logits = np.array([z[i] @ z[j] / tau for j in range(6) if j != i])
        want.append(np.log(np.sum(np.exp(logits))) - z[i] @ z[pos] / tau)
    got = np.asarray(objectives.nt_xent_loss(jnp.asarray(emb), tau))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sample_pairs_are_balanced_and_correct():
    labels = np.array([3, 3, 7, 7, 7, 9, 9, 3])
    index = objectives.build_class_index(labels)
    anchor, partner, same = objectives.sample_pairs(jax.random.key(0), index, 64)
    anchor, partner, same = map(np.asarray, (anchor, partner, same))
    assert same.sum() == 32
    np.testing.assert_array_equal(labels[anchor] == labels[partner], same)
    with pytest.raises(ValueError, match="at least 2 classes"):
        objectives.build_class_index(np.zeros(5, int))


def test_view_jitter_keeps_range_and_shape_moves_pixels_and_names_bad_fields(bars):
    import ml_collections

    from configs import mnist

    images, _ = bars(4, seed=0)
    x = jnp.asarray(images.astype(np.float32) / 127.5 - 1)
    cfg = mnist.get_config().encoder
    jitter = objectives.view_jitter(cfg)
    assert jitter == image_augment.Jitter(15.0, 0.1, 0.1, 0.0, 4.0, 0.1)  # the old views
    # A config from before the aug_* fields gets the same jitter.
    old = ml_collections.ConfigDict({k: v for k, v in cfg.items() if not k.startswith("aug_")})
    assert objectives.view_jitter(old) == jitter
    out = np.asarray(image_augment.jitter_images(jax.random.key(0), x, jitter))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert np.mean(np.abs(out - np.asarray(x))) > 0.05
    zero = image_augment.jitter_images(jax.random.key(0), x, image_augment.Jitter())
    np.testing.assert_allclose(np.asarray(zero), np.asarray(x), atol=1e-5)  # identity is exact
    with cfg.unlocked():
        cfg.aug_scale = 1.5
    with pytest.raises(ValueError, match=r"config.encoder.aug_scale=1.5 must be in \[0, 1\)"):
        objectives.view_jitter(cfg)


def test_encoder_key_ignores_view_fields_at_their_old_values():
    from configs import mnist
    from semantica_jax.encoder import bundle

    config = mnist.get_config("unsupervised")
    key = bundle.encoder_key(config)
    without = mnist.get_config("unsupervised")
    with without.unlocked():
        for field in objectives.VIEW_FIELDS:
            del without.encoder[field]
    assert bundle.encoder_key(without) == key  # encoders cached before the fields existed
    with config.unlocked():
        config.encoder.aug_elastic = 34.0
    assert bundle.encoder_key(config) != key
