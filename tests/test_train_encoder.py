"""train_encoder.py: the encoder job (`main --mode=encoder`)."""

import json

import pytest

from configs import mnist as mnist_config
from semantica_jax import train_encoder
from semantica_jax.encoder import bundle as bundle_lib


def test_encoder_job_writes_eval_and_installs_in_cache(tmp_path, monkeypatch, bars):
    from semantica_jax.data import mnist as mnist_data

    config = mnist_config.get_config("tiny")
    config.cache_dir = str(tmp_path / "cache")
    config.data.stream_above_mb = -1  # in memory: no TFDS copy of MNIST to size the split
    config.encoder.num_steps = 30
    config.encoder.learning_rate = 3e-3
    splits = {"train": bars(200, seed=0), "test": bars(60, seed=1)}
    monkeypatch.setattr(mnist_data, "load_split", lambda ds, split, *a, **k: splits[split])
    report = train_encoder.run_encoder_job(config, str(tmp_path / "work"), log=lambda _: None)
    with open(tmp_path / "work" / "encoder_eval.json") as f:
        on_disk = json.load(f)
    assert on_disk["knn5_accuracy"] == report["knn5_accuracy"] >= 0.9
    assert on_disk["query_size"] == 60 and on_disk["gallery_size"] == 200
    same, diff = on_disk["cosine"]["same"], on_disk["cosine"]["different"]
    assert same["mean"] > diff["mean"] and set(same["quantiles"]) >= {"q05", "q50", "q95"}
    assert (tmp_path / "work" / "encoder_cosine_hist.png").stat().st_size > 1000
    cached = tmp_path / "cache" / "encoder" / bundle_lib.encoder_key(config)
    assert bundle_lib.load_encoder(str(cached)).params_hash == report["params_hash"]


def test_encoder_job_trains_on_max_train_images_as_training_would(tmp_path, monkeypatch, bars):
    """The job's encoder is installed under the key of `encoder.max_train_images`, so it
    must train on that subset, as `assets.load_or_train_encoder` would."""
    from semantica_jax.data import mnist as mnist_data
    from semantica_jax.encoder import train as encoder_train

    config = mnist_config.get_config("tiny")
    config.cache_dir = str(tmp_path / "cache")
    config.data.stream_above_mb = -1  # in memory: no TFDS copy of MNIST to size the split
    config.encoder.max_train_images = 50
    splits = {"train": bars(200, seed=0), "test": bars(60, seed=1)}
    monkeypatch.setattr(mnist_data, "load_split", lambda ds, split, *a, **k: splits[split])

    class Trained(Exception):
        pass

    def train_and_save(config, directory, images, labels, log):
        raise Trained(len(images), len(labels))

    monkeypatch.setattr(encoder_train, "train_and_save", train_and_save)
    with pytest.raises(Trained) as trained:
        train_encoder.run_encoder_job(config, str(tmp_path / "work"), log=lambda _: None)
    assert trained.value.args == (50, 50)
