"""The MNIST-FID feature classifier: training, features, caching (synthetic data, tmp dirs)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semantica_jax.metrics import features

TINY = features.FeatureNetSettings(
    conv_channels=(4,),
    embed_dim=8,
    num_classes=2,
    num_steps=40,
    batch_size=16,
    learning_rate=1e-2,
    warmup_steps=2,
    max_shift=1,
    log_every=20,
)


def _bundle(params, settings=TINY) -> features.FeatureNetBundle:
    return features.FeatureNetBundle(params, features.build_model(settings), "", settings, 0.0)


def test_training_improves_accuracy(two_class_images):
    images, labels = two_class_images(256, seed=0)
    test_images, test_labels = two_class_images(128, seed=1)
    state = features.create_train_state(TINY, images.shape[1:], jax.random.key(TINY.seed))
    before = features.accuracy(_bundle(state.params), test_images, test_labels)
    trained = features.train_and_score(images, labels, test_images, test_labels, TINY)
    assert trained.test_accuracy >= 0.95 > before + 0.2
    feats = features.feature_fn(trained, batch_size=7)(test_images)
    assert feats.shape == (128, TINY.embed_dim) and feats.dtype == np.float32
    assert np.all(feats >= 0.0)  # post-ReLU penultimate layer


def test_feature_fn_batching_and_input_ranges(two_class_images):
    images, _ = two_class_images(10, seed=2)
    state = features.create_train_state(TINY, images.shape[1:], jax.random.key(0))
    bundle = _bundle(state.params)
    as_float = images.astype(np.float32) / 127.5 - 1.0
    one_batch = features.feature_fn(bundle, batch_size=100)(as_float)
    _, direct = bundle.model.apply({"params": bundle.params}, jnp.asarray(as_float))
    np.testing.assert_allclose(one_batch, np.asarray(direct), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        features.feature_fn(bundle, batch_size=3)(as_float), one_batch, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(features.feature_fn(bundle)(images), one_batch, rtol=1e-6)
    predicted = features.classify(bundle, as_float, batch_size=4)
    logits, _ = bundle.model.apply({"params": bundle.params}, jnp.asarray(as_float))
    np.testing.assert_array_equal(predicted, np.argmax(np.asarray(logits), -1))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        features.feature_fn(bundle)(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        features.feature_fn(bundle)(as_float[..., 0])


def test_random_shift():
    image = -np.ones((1, 9, 9, 1), np.float32)
    image[0, 4, 4, 0] = 1.0
    batch = jnp.asarray(np.repeat(image, 64, axis=0))
    shifted = np.asarray(features.random_shift(batch, jax.random.key(0), 2))
    np.testing.assert_array_equal(np.asarray(features.random_shift(batch, None, 0)), batch)
    rows, cols = np.nonzero(shifted[..., 0] == 1.0)[1:]
    assert np.all(np.abs(rows - 4) <= 2) and np.all(np.abs(cols - 4) <= 2)
    assert np.all((shifted == 1.0).sum(axis=(1, 2, 3)) == 1)  # the pixel is never lost
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 10  # offsets actually vary


def test_settings_validation(two_class_images):
    with pytest.raises(ValueError, match="128"):
        features.FeatureNetSettings(embed_dim=256)
    with pytest.raises(ValueError, match="feature_net_steps"):
        features.FeatureNetSettings(num_steps=0)
    with pytest.raises(ValueError, match="labels span"):
        features.train_feature_net(
            *two_class_images(8, 0), features.FeatureNetSettings(num_classes=1)
        )


def test_progress_is_reported_at_the_logged_steps(monkeypatch, two_class_images):
    """As the encoder's loop: only where the host waited for the step (and at the end)."""
    reported = []
    monkeypatch.setattr(features.progress, "loop", lambda *a, **k: reported.append)
    images, labels = two_class_images(64, seed=0)
    features.train_feature_net(images, labels, dataclasses.replace(TINY, num_steps=10, log_every=4))
    assert reported == [4, 8, 10]
