"""workdir.py: the run dir's config round trip."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from semantica_jax import errors
from semantica_jax import workdir as run_dir


def test_config_json_round_trips(tool_workdir):
    from configs import mnist

    expected = list(mnist.get_config("tiny").model.channels)
    config = run_dir.load_config(tool_workdir, cache_dir="/elsewhere")
    assert config.cache_dir == "/elsewhere"
    assert list(config.model.channels) == expected
    with open(os.path.join(tool_workdir, "config.json")) as f:
        assert json.load(f)["model"]["channels"] == expected  # tuples come back as lists


def test_resume_refuses_another_architecture_and_allows_longer_runs(tmp_path):
    from configs import mnist

    config = mnist.get_config("tiny")
    run_dir.check_resumable(config, str(tmp_path))  # nothing there: fine
    os.makedirs(tmp_path / "checkpoints")
    run_dir.write_config(config, str(tmp_path))
    longer = mnist.get_config("tiny")
    longer.train.num_steps = 100
    longer.eval.num_images = 80
    run_dir.check_resumable(longer, str(tmp_path))
    wider = mnist.get_config("tiny")
    wider.model.transformer_width = 64
    wider.seed = 3
    with pytest.raises(errors.UserError, match="model.transformer_width: 32 -> 64.*seed: 0 -> 3"):
        run_dir.check_resumable(wider, str(tmp_path))


def _damage_arrays(step_dir):
    for path in glob.glob(f"{step_dir}/state/**/d/*", recursive=True):
        with open(path, "r+b") as f:
            f.truncate(max(1, os.path.getsize(path) // 3))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # tensorstore
def test_readers_fall_back_past_a_damaged_newest_checkpoint(tool_workdir, tmp_path, caplog):
    """sample/eval/tools read the newest usable step; they never move training files."""
    run = shutil.copytree(tool_workdir, tmp_path / "run")
    good, step = run_dir.restore_ema_params(str(run))
    assert step == 2
    _damage_arrays(run / "checkpoints" / "2")
    with caplog.at_level("WARNING"):
        params, step = run_dir.restore_ema_params(str(run))
    assert step == 1 and "step 2" in caplog.text and "unreadable" in caplog.text
    assert os.path.isdir(run / "checkpoints" / "2")  # left where it was
    one, _ = run_dir.restore_ema_params(str(tool_workdir), step=1)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(one), strict=True):
        np.testing.assert_array_equal(a, b)
    # An explicitly requested damaged step, or none usable at all, is one UserError.
    with pytest.raises(errors.UserError, match="step 2 .* unreadable"):
        run_dir.restore_ema_params(str(run), step=2)
    _damage_arrays(run / "checkpoints" / "1")
    with pytest.raises(errors.UserError, match=r"no usable checkpoint .*\[2, 1\]"):
        run_dir.restore_ema_params(str(run))


def test_a_run_from_before_added_and_dropped_fields_still_resumes(tmp_path):
    from configs import mnist

    config = mnist.get_config("tiny")
    os.makedirs(tmp_path / "checkpoints")
    old = json.loads(config.to_json_best_effort())
    del old["encoder"]["max_train_images"], old["data"]["stream_above_mb"]
    old["data"]["shuffle_buffer"] = 0  # a field an earlier version wrote
    with open(tmp_path / "config.json", "w") as f:
        json.dump(old, f)
    config.data.stream_above_mb = 0.0  # streaming the data changes nothing it learns
    run_dir.check_resumable(config, str(tmp_path))
    config.encoder.max_train_images = 100  # this does
    with pytest.raises(errors.UserError, match="encoder.max_train_images: 0 -> 100"):
        run_dir.check_resumable(config, str(tmp_path))


def test_stable_fields_give_a_config_its_fields_from_before_they_changed():
    from configs import mnist

    flat = run_dir.flat_config(mnist.get_config().to_dict())
    old = run_dir.stable_fields(flat)
    assert "encoder.max_train_images" not in old and "data.stream_above_mb" not in old
    assert old["data.shuffle_buffer"] == 0  # dropped since, back at its last default
    assert {k: v for k, v in old.items() if k != "data.shuffle_buffer"}.items() <= flat.items()
    changed = run_dir.stable_fields({**flat, "encoder.max_train_images": 100})
    assert changed["encoder.max_train_images"] == 100  # not the old behaviour: kept
