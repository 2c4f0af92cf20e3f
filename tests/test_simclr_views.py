"""benchmarks/simclr_views.py: a tiny sweep end to end, resumed without training."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import simclr_views  # noqa: E402


def test_setting_dir_is_a_plain_name():
    assert simclr_views.setting_dir("elastic, rotation 20, scale 0.2") == (
        "elastic_rotation_20_scale_0.2"
    )


def test_tiny_sweep_writes_table_and_resumes(tmp_path, monkeypatch, bars, capsys):
    from configs import mnist
    from semantica_jax import train_encoder
    from semantica_jax.data import mnist as mnist_data

    splits = {"train": bars(120, seed=0), "test": bars(40, seed=1)}
    monkeypatch.setattr(mnist_data, "load_split", lambda ds, split, *a, **k: splits[split])
    real_get_config = mnist.get_config

    def get_config(variant):
        config = real_get_config(variant)
        config.cache_dir = str(tmp_path / "cache")
        config.data.stream_above_mb = -1  # in memory: no TFDS copy of MNIST to size
        return config

    monkeypatch.setattr(mnist, "get_config", get_config)
    argv = ["--variant=tiny", "--steps=5", "--settings=default;elastic, rotation 20, scale 0.2"]
    result = simclr_views.main(argv + [f"--out={tmp_path}"])
    assert json.load(open(tmp_path / "simclr_views.json")) == result
    rows = result["rows"]
    assert list(rows) == ["default", "elastic, rotation 20, scale 0.2"]
    assert rows["elastic, rotation 20, scale 0.2"]["changes"]["aug_elastic"] == 34.0
    for row in rows.values():
        assert 0.0 <= row["knn5_accuracy"] <= 1.0 and row["encoder_steps"] == 5
        low, high = row["knn5_interval"]
        assert low <= row["knn5_accuracy"] <= high and row["queries"] == 40
        assert 0.0 <= row["auc_same_vs_different"] <= 1.0
    # Different views, different encoders: each setting trained its own.
    evals = [
        json.load(open(tmp_path / "simclr_views" / d / "encoder_eval.json"))
        for d in ("default", "elastic_rotation_20_scale_0.2")
    ]
    assert evals[0]["key"] != evals[1]["key"]
    table = open(tmp_path / "simclr_views.md").read()
    assert "aug_elastic=34" in table and f"{rows['default']['knn5_accuracy']:.3f}" in table

    def no_training(*args, **kwargs):
        raise AssertionError("a measured setting must be read back, not retrained")

    monkeypatch.setattr(train_encoder, "run_encoder_job", no_training)
    again = simclr_views.main(argv + [f"--out={tmp_path}"])
    assert again["rows"]["default"]["knn5_accuracy"] == rows["default"]["knn5_accuracy"]
    with pytest.raises(SystemExit) as err:
        simclr_views.main(["--settings=sharper", f"--out={tmp_path}"])
    assert err.value.code == 2 and "error: unknown --settings" in capsys.readouterr().err
