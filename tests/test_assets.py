"""assets.py: the cache dir builds each asset once and reuses it."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from configs import mnist as mnist_config
from semantica_jax import assets
from semantica_jax.encoder import bundle as bundle_lib
from semantica_jax.metrics import features


def test_load_or_train_encoder_trains_once_then_reuses(tmp_path, monkeypatch, bars):
    config = mnist_config.get_config("tiny")
    config.cache_dir = str(tmp_path)
    config.encoder.num_steps = 3
    calls = []

    def fake_data(cfg, split):
        calls.append(cfg.data.dataset)
        return bars(64, seed=0)

    monkeypatch.setattr(assets, "load_split", fake_data)
    first = assets.load_or_train_encoder(config, log=lambda _: None)
    second = assets.load_or_train_encoder(config, log=lambda _: None)
    assert calls == ["mnist"]  # trained once
    assert first.path == second.path == str(tmp_path / "encoder" / bundle_lib.encoder_key(config))
    assert first.params_hash == second.params_hash
    with open(os.path.join(first.path, "encoder.json")) as f:
        assert json.load(f)["identity"]["encoder"]["num_steps"] == 3
    # Another encoder setting -> another key -> trained again.
    config.encoder.margin = 0.5
    third = assets.load_or_train_encoder(config, log=lambda _: None)
    assert len(calls) == 2 and third.path != first.path
    # An explicit checkpoint is loaded as is.
    config.encoder.checkpoint = first.path
    assert assets.load_or_train_encoder(config).params_hash == first.params_hash


def test_embedding_cache_from_config(
    tmp_path, encode_calls, config_vit, make_bundle, random_digits
):
    config = mnist_config.get_config("tiny")
    config.cache_dir = str(tmp_path)
    images = random_digits(9, 0)
    bundle = make_bundle(config_vit, 0, key="key0")
    tokens, cls = assets.embedding_cache(config, bundle, "test", images=images)
    assert tokens.shape == (9, 49, config_vit.width) and cls.shape == (9, config_vit.width)
    assert os.path.isfile(tmp_path / "embeddings" / "key0" / "mnist-test-first512" / "cls.npy")
    encode_calls.clear()
    assets.embedding_cache(config, bundle, "test", images=images)
    assert encode_calls == []


def test_feature_net_trains_once_then_reuses(tmp_path, monkeypatch, two_class_images):
    calls = []

    def load_split(dataset, split, data_dir, image_size, channels, max_examples=0):
        calls.append((dataset, split, data_dir))
        images, labels = two_class_images(96, seed=0 if split == "train" else 1, size=28)
        return images, labels

    monkeypatch.setattr(
        assets, "load_split", lambda config, split: load_split("mnist", split, "", 28, 1)
    )

    config = mnist_config.get_config("tiny")
    config.cache_dir = str(tmp_path / "cache")
    config.eval.feature_net_steps = 3
    settings = features.FeatureNetSettings(
        conv_channels=(4,), embed_dim=8, num_classes=2, batch_size=8, log_every=1, num_steps=3
    )
    trained = assets.feature_net(config, settings)
    assert [c[1] for c in calls] == ["train", "test"]
    assert trained.path.startswith(str(tmp_path / "cache" / "feature_net"))
    assert os.listdir(os.path.dirname(trained.path)) == [os.path.basename(trained.path)]

    cached = assets.feature_net(config, settings)
    assert len(calls) == 2  # no data loaded, nothing trained the second time
    assert cached.path == trained.path and cached.settings == settings
    assert cached.test_accuracy == trained.test_accuracy
    jax.tree.map(np.testing.assert_array_equal, cached.params, trained.params)
    images, _ = two_class_images(5, seed=3, size=28)
    np.testing.assert_array_equal(
        features.feature_fn(cached)(images), features.feature_fn(trained)(images)
    )

    other = dataclasses.replace(settings, num_steps=4)
    assert assets.feature_net(config, other).path != trained.path
    assert len(calls) == 4
    # The steps come from the config when no settings are given.
    assert features.FeatureNetSettings.from_config(config).num_steps == 3


def test_data_dir():
    config = mnist_config.get_config("tiny")
    config.cache_dir = "/some/cache"
    assert assets.data_dir(config) == os.path.join("/some/cache", "tfds")
    config.data.data_dir = "/prepared/tfds"
    assert assets.data_dir(config) == "/prepared/tfds"


def test_embedded_split_with_classes_keeps_only_those_labels():
    labels = np.array([0, 1, 2, 3, 4, 5, 1, 7], np.int32)
    split = assets.EmbeddedSplit(
        np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1),
        labels,
        np.arange(8 * 2 * 3, dtype=np.float16).reshape(8, 2, 3),
        np.arange(16, dtype=np.float32).reshape(8, 2),
    )
    assert assets.EmbeddedSplit.with_classes(split, ()) is split
    kept = split.with_classes((1, 7))
    np.testing.assert_array_equal(kept.labels, [1, 1, 7])
    np.testing.assert_array_equal(kept.images[:, 0, 0, 0], [1, 6, 7])
    np.testing.assert_array_equal(kept.cls, split.cls[[1, 6, 7]])
    np.testing.assert_array_equal(kept.tokens, split.tokens[[1, 6, 7]])
    with pytest.raises(ValueError, match="no image of classes"):
        split.with_classes((9,))


def test_encoder_trains_on_a_seeded_subset_and_a_split_on_disk_needs_one(tmp_path):
    from semantica_jax.data import disk_array
    from semantica_jax.errors import UserError

    config = mnist_config.get_config("tiny")
    images = np.arange(40 * 2 * 2, dtype=np.uint8).reshape(40, 2, 2, 1)
    labels = np.arange(40, dtype=np.int32)
    np.save(tmp_path / "images.npy", images)
    on_disk = disk_array.DiskArray(str(tmp_path / "images.npy"))
    same, same_labels = assets.encoder_training_images(config, images, labels)
    assert same is images and same_labels is labels  # no cap: the array itself
    with pytest.raises(UserError, match="encoder.max_train_images"):
        assets.encoder_training_images(config, on_disk, labels)
    config.encoder.max_train_images = 15
    subset, subset_labels = assets.encoder_training_images(config, on_disk, labels)
    assert isinstance(subset, np.ndarray) and len(subset) == 15
    assert np.all(np.diff(subset_labels) > 0)  # distinct rows, in split order
    np.testing.assert_array_equal(subset, images[subset_labels])
    again, _ = assets.encoder_training_images(config, images, labels)
    np.testing.assert_array_equal(again, subset)  # same seed, same rows
    config.encoder.max_train_images = 40
    np.testing.assert_array_equal(
        assets.encoder_training_images(config, on_disk, labels)[0], images
    )


def test_a_split_streams_above_the_threshold_only(session_cache):
    config = mnist_config.get_config("tiny")  # 512 train images of 28x28x1: 0.383 MiB
    config.cache_dir = session_cache
    for limit, streams in ((-1.0, False), (0.38, True), (0.39, False), (1024.0, False)):
        config.data.stream_above_mb = limit
        spec = assets.stream_spec(config, "train")
        assert (spec is not None) == streams, limit
    config.data.stream_above_mb = 0.0
    spec = assets.stream_spec(config, "train")
    assert spec.total == 512 and spec.image_shape == (28, 28, 1)
    assert spec.directory.endswith(os.path.join("images", "mnist-train-28x28x1-first512"))
