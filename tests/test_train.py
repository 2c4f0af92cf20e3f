"""The training system end to end: tiny runs through the real command line.

Runs are subprocesses so that each can choose its device count (XLA_FLAGS must be set
before JAX starts). Interruptions, damaged checkpoints, a full disk and a dead peer are in
test_faults.py.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def event_tags(workdir) -> dict[str, list[int]]:
    """TensorBoard tag -> steps written, read from the event files."""
    import tensorflow as tf

    tags: dict[str, list[int]] = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_tiny_run_writes_everything(tiny_run):
    steps = sorted(int(os.path.basename(p)) for p in glob.glob(f"{tiny_run}/checkpoints/[0-9]*"))
    assert steps == [3, 6]
    tags = event_tags(tiny_run)
    assert tags["loss"] == [2, 4, 6]
    assert "samples" in tags and "grad_norm" in tags and "images_per_sec" in tags
    assert os.path.isfile(os.path.join(tiny_run, "samples", "step_6.png"))
    config = json.load(open(os.path.join(tiny_run, "config.json")))
    assert config["variant"] == "tiny" and config["train"]["num_steps"] == 6
    summary = json.load(open(os.path.join(tiny_run, "summary.json")))
    assert summary["final_step"] == 6 and np.isfinite(summary["metrics"]["loss"])
    from PIL import Image

    grid = Image.open(os.path.join(tiny_run, "samples", "step_6.png"))
    # 2 rows of (conditioning | 2 variations at w=0 | 2 at the config's w): 28 px cells with
    # 2 px borders.
    assert grid.size == (5 * 30 + 2, 2 * 30 + 2)
    # The first cell of each row is the (real) conditioning image, not a sample.
    cells = np.asarray(grid)[2:30, 2:30]
    assert cells.max() == 255 and cells.min() == 0


def test_rerun_of_finished_run_changes_nothing(tiny_run, session_cache, run_main, restore):
    before, step = restore(tiny_run)
    run_main(tiny_run, session_cache)
    after, step_after = restore(tiny_run)
    assert step == step_after == 6
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_streamed_split_trains_as_in_memory_and_resumes_exactly(
    tiny_run, session_cache, tmp_path, run_main, restore, assert_same_run
):
    """stream_above_mb=0: both splits go to the on-disk store; the run is the in-memory run
    (to the tolerance of runs on other devices: the shards' embeddings come from another
    process, and under load they have differed from the in-memory ones by float rounding),
    and one resumed from its step-3 checkpoint ends bit for bit where the uninterrupted one
    did."""
    import shutil

    workdir = str(tmp_path / "run")
    run_main(workdir, session_cache, "--config.data.stream_above_mb=0")
    assert glob.glob(os.path.join(session_cache, "images", "mnist-test-*", "rows-*"))
    first = {item: restore(workdir, item=item)[0] for item in ("params", "ema_params")}
    assert_same_run(tiny_run, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    run_main(workdir, session_cache, "--config.data.stream_above_mb=0")
    for item, uninterrupted in first.items():
        resumed, step = restore(workdir, item=item)
        assert step == 6
        for k in uninterrupted:
            np.testing.assert_array_equal(resumed[k], uninterrupted[k], err_msg=f"{item} {k}")


def test_two_processes_streaming_their_shards_match_one(
    tiny_run, session_cache, tmp_path, main_env, assert_same_run
):
    """Two processes, data streamed to disk (stream_above_mb=0): each writes and embeds only
    its shard, both read both; the run equals one in-memory process's."""
    workdir = str(tmp_path / "run")
    proc = subprocess.run(
        [
            "bash",
            "launch/local_multihost.sh",
            "2",
            "2",
            "--",
            "--config=configs/mnist.py:tiny",
            f"--workdir={workdir}",
            f"--config.cache_dir={session_cache}",
            "--config.data.stream_above_mb=0",
        ],
        cwd=ROOT,
        env={**main_env(2), "PYTHON": sys.executable, "WORKLOG_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["processes"] == 2 and summary["devices"] == 4
    for kind in ("images", "embeddings"):
        pattern = os.path.join(session_cache, kind, "**", "*train*", "rows-*-of-*")
        shards = glob.glob(pattern, recursive=True)
        halves = {
            "rows-0000000000-0000000256-of-0000000512",
            "rows-0000000256-0000000512-of-0000000512",
        }
        assert halves <= {os.path.basename(p) for p in shards}, (kind, shards)
    assert_same_run(tiny_run, workdir)


@pytest.mark.parametrize(
    "override, devices, field",
    [
        ("--config.nonexistent=1", 1, "nonexistent"),
        ("--config.train.batch_size=-4", 1, "train.batch_size"),
        ("--config.train.batch_size=12", 8, "train.batch_size"),
        ("--config.train.lr_decay=linear", 1, "train.lr_decay"),
    ],
)
def test_bad_override_is_one_clear_line(override, devices, field, tmp_path, run_main):
    proc = run_main(str(tmp_path), str(tmp_path / "cache"), override, devices=devices, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and field in lines[0], proc.stderr[-2000:]


def test_non_finite_loss_stops_the_run_naming_the_step(session_cache, tmp_path, run_main, restore):
    # An absurd learning rate overflows the parameters within a few steps.
    proc = run_main(
        str(tmp_path),
        session_cache,
        "--config.train.learning_rate=1e38",
        "--config.train.warmup_steps=1",
        "--config.train.grad_clip=0",
        "--config.train.checkpoint_every=1",
        "--config.train.eval_every=0",
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("error:")][-1]
    assert "non-finite" in line and "at step" in line
    bad_step = int(line.split("at step ")[1].split()[0])
    saved = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
    # Checkpoints end before the broken step; everything saved is finite.
    assert all(s < bad_step for s in saved)
    if saved:
        params, _ = restore(str(tmp_path), step=saved[-1])
        assert all(np.all(np.isfinite(v)) for v in params.values())


def test_resume_on_eight_devices_with_fsdp_matches_one_device(
    tiny_run, session_cache, tmp_path, run_main, assert_same_run
):
    """The 1-device run's step-3 checkpoint continues on 8 devices with parameters sharded
    over fsdp=2 and ends where the 1-device run ended (to float tolerance)."""
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    run_main(
        workdir,
        session_cache,
        "--config.mesh.fsdp=2",
        "--config.mesh.fsdp_min_size=0",
        devices=8,
    )
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["start_step"] == 3 and summary["final_step"] == 6
    assert summary["devices"] == 8
    assert_same_run(tiny_run, workdir)


def test_similarity_loss_is_added(session_cache, tmp_path, run_main):
    run_main(
        str(tmp_path),
        session_cache,
        "--config.train.sim_loss_weight=1.0",
        "--config.train.num_steps=2",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
    )
    metrics = json.load(open(os.path.join(tmp_path, "summary.json")))["metrics"]
    # total = diffusion + 1.0 * (1 - cos(f(x0), f(x0_hat))), and the cosine term is in (0, 2].
    assert 0 < metrics["sim_loss"] <= 2
    np.testing.assert_allclose(
        metrics["loss"], metrics["diffusion_loss"] + metrics["sim_loss"], rtol=1e-5
    )


def test_learning_rate_schedules_by_value():
    import ml_collections

    from semantica_jax.train_step import learning_rate_schedule

    cfg = ml_collections.ConfigDict(
        dict(learning_rate=1e-3, warmup_steps=10, num_steps=110, lr_decay="cosine")
    )
    lr = learning_rate_schedule(cfg)
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose([float(lr(s)) for s in (5, 10, 60)], [5e-4, 1e-3, 5e-4], rtol=1e-5)
    assert abs(float(lr(110))) < 1e-12
    cfg.lr_decay = "constant"
    lr = learning_rate_schedule(cfg)
    np.testing.assert_allclose([float(lr(s)) for s in (5, 10, 110, 10**6)], [5e-4] + [1e-3] * 3)


@pytest.mark.parametrize(
    "field, value",
    [
        ("train.keep_checkpoints", 0),
        ("train.learning_rate", float("nan")),
        ("encoder.num_steps", -1),
        ("encoder.batch_size", 0),
        ("sampler.guidance", float("inf")),
    ],
)
def test_validate_config_names_the_bad_field_before_any_write(field, value):
    from configs import mnist
    from semantica_jax import train

    config = mnist.get_config("tiny")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        train.validate_config(config)
    train.validate_config(mnist.get_config("tiny"))


def test_a_run_that_fails_its_checks_writes_nothing(session_cache, tmp_path):
    from configs import mnist
    from semantica_jax import train

    config = mnist.get_config("tiny")
    config.cache_dir = session_cache
    config.episodes.filter_mode = "absolute"
    config.episodes.low, config.episodes.high = 0.9999, 1.0  # no pair survives
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="no pair survived filtering"):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()
