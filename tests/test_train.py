"""The training system end to end: tiny runs through the real command line.

Runs are subprocesses so that each can choose its device count (XLA_FLAGS must be set
before JAX starts) and be interrupted with SIGTERM or SIGKILL.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def restore(workdir, item="params", step=None):
    from semantica_jax.utils import checkpointing

    tree, step = checkpointing.restore_params(
        os.path.join(workdir, "checkpoints"), step=step, item=item
    )
    return {"/".join(map(str, k)): np.asarray(v) for k, v in _flatten(tree)}, step


def _flatten(tree):
    import jax

    return [
        (tuple(getattr(p, "key", p) for p in path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def event_tags(workdir) -> dict[str, list[int]]:
    """TensorBoard tag -> steps written, read from the event files."""
    import tensorflow as tf

    tags: dict[str, list[int]] = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


@pytest.fixture(scope="module")
def tiny_run(session_cache, tmp_path_factory, run_main):
    """One complete tiny run on 1 device (6 steps, checkpoints at 3 and 6, samples at 6)."""
    workdir = str(tmp_path_factory.mktemp("tiny"))
    run_main(workdir, session_cache)
    return workdir


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


def test_rerun_of_finished_run_changes_nothing(tiny_run, session_cache, run_main):
    before, step = restore(tiny_run)
    run_main(tiny_run, session_cache)
    after, step_after = restore(tiny_run)
    assert step == step_after == 6
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


@pytest.fixture(scope="module")
def reference_run(session_cache, tmp_path_factory, run_main):
    """An uninterrupted run of the resume tests' length."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    run_main(workdir, session_cache, *RESUME_OVERRIDES)
    return workdir


RESUME_OVERRIDES = (
    "--config.train.num_steps=80",
    "--config.train.checkpoint_every=10",
    "--config.train.eval_every=0",
    "--config.train.log_every=10",
)


def _wait_for_checkpoint(workdir, proc, min_step=10, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        if glob.glob(f"{workdir}/checkpoints/{min_step}") or glob.glob(
            f"{workdir}/checkpoints/[1-9][0-9]"
        ):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before a checkpoint: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_resumes_exactly(
    sig, reference_run, session_cache, tmp_path, run_main, main_args, main_env
):
    workdir = str(tmp_path)
    proc = subprocess.Popen(
        main_args(workdir, session_cache, *RESUME_OVERRIDES),
        cwd=ROOT,
        env=main_env(1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    if sig == signal.SIGTERM:
        assert rc == 0, proc.stderr.read()[-3000:]
        summary = json.load(open(os.path.join(workdir, "summary.json")))
        assert summary["preempted"] and summary["final_step"] < 80
        # The preemption checkpoint is the step the run stopped at.
        _, saved = restore(workdir)
        assert saved == summary["final_step"]
    else:
        assert rc == -signal.SIGKILL
    _, interrupted_at = restore(workdir)
    assert interrupted_at < 80
    run_main(workdir, session_cache, *RESUME_OVERRIDES)
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["start_step"] == interrupted_at and summary["final_step"] == 80
    for item in ("params", "ema_params"):
        expected, _ = restore(reference_run, item)
        got, step = restore(workdir, item)
        assert step == 80
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{item}/{k}")


def _final_loss_and_params(workdir):
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    return summary["metrics"]["loss"], restore(workdir)[0]


def _assert_same_run(workdir_a, workdir_b):
    loss_a, params_a = _final_loss_and_params(workdir_a)
    loss_b, params_b = _final_loss_and_params(workdir_b)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for k in params_a:
        np.testing.assert_allclose(params_a[k], params_b[k], rtol=1e-3, atol=1e-4, err_msg=k)


def test_eight_devices_match_one(tiny_run, session_cache, tmp_path, run_main):
    run_main(str(tmp_path), session_cache, devices=8)
    summary = json.load(open(os.path.join(tmp_path, "summary.json")))
    assert summary["devices"] == 8
    _assert_same_run(tiny_run, str(tmp_path))


def test_two_processes_match_one(tiny_run, session_cache, tmp_path, main_env):
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
    _assert_same_run(tiny_run, workdir)


def test_killed_peer_stops_the_whole_launch(session_cache, tmp_path, main_env):
    """SIGKILL one of two processes: the launcher stops the other and returns non-zero
    within a bound, leaving no child behind (a peer would otherwise wait in a collective)."""
    workdir = str(tmp_path / "run")
    launcher = subprocess.Popen(
        [
            "bash",
            "launch/local_multihost.sh",
            "2",
            "1",
            "--",
            "--config=configs/mnist.py:tiny",
            f"--workdir={workdir}",
            f"--config.cache_dir={session_cache}",
            "--config.train.num_steps=100000",
            "--config.train.checkpoint_every=2",
            "--config.train.eval_every=0",
        ],
        cwd=ROOT,
        env={**main_env(1), "PYTHON": sys.executable, "WORKLOG_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*")):
            assert launcher.poll() is None and time.monotonic() < deadline, "run never started"
            time.sleep(0.5)
        children = [
            int(p) for p in subprocess.check_output(["pgrep", "-P", str(launcher.pid)]).split()
        ]
        assert len(children) == 2
        os.kill(max(children), signal.SIGKILL)
        killed_at = time.monotonic()
        rc = launcher.wait(timeout=120)
        assert rc != 0 and time.monotonic() - killed_at < 60
        for pid in children:  # both gone: reaped by the launcher, not left running
            assert (
                not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()
            )
    finally:
        if launcher.poll() is None:
            launcher.kill()


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


def test_non_finite_loss_stops_the_run_naming_the_step(session_cache, tmp_path, run_main):
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


def test_resume_on_eight_devices_with_fsdp(tiny_run, session_cache, tmp_path, run_main):
    """A 1-device checkpoint continues on 8 devices with parameters sharded over fsdp=2."""
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    run_main(
        workdir,
        session_cache,
        "--config.train.num_steps=8",
        "--config.mesh.fsdp=2",
        "--config.mesh.fsdp_min_size=0",
        "--config.train.eval_every=0",
        devices=8,
    )
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["start_step"] == 6 and summary["final_step"] == 8
    assert summary["devices"] == 8 and np.isfinite(summary["metrics"]["loss"])
    params, step = restore(workdir)
    before, _ = restore(tiny_run)
    assert step == 8 and any(not np.array_equal(params[k], before[k]) for k in params)


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


def _corrupt(step_dir, kind):
    """Damages one saved step: truncated array files, or garbage in the data item's JSON."""
    if kind == "truncated arrays":
        for path in glob.glob(f"{step_dir}/state/d/*"):
            with open(path, "r+b") as f:
                f.truncate(max(1, os.path.getsize(path) // 3))
    else:
        for path in glob.glob(f"{step_dir}/data/*"):
            if os.path.isfile(path) and not path.endswith("commit_success.txt"):
                with open(path, "w") as f:
                    f.write("{not json")


@pytest.mark.parametrize("kind", ["truncated arrays", "garbage data json"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(
    kind, tiny_run, session_cache, tmp_path, run_main
):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    _corrupt(os.path.join(workdir, "checkpoints", "6"), kind)
    proc = run_main(workdir, session_cache)
    assert "checkpoint step 6" in proc.stderr and "unusable" in proc.stderr
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "corrupt-6"))
    assert json.load(open(os.path.join(workdir, "summary.json")))["start_step"] == 3
    _assert_same_run(tiny_run, workdir)  # resumed from step 3 to the same step-6 result


def test_no_usable_checkpoint_left_is_one_error_line(tiny_run, session_cache, tmp_path, run_main):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    for step in ("3", "6"):
        _corrupt(os.path.join(workdir, "checkpoints", step), "garbage data json")
    proc = run_main(workdir, session_cache, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "no usable checkpoint" in errors[0]
    assert "Traceback" not in proc.stderr


def _mount_tmpfs(path, size) -> bool:
    """Mounts a tmpfs of `size` at `path` (root in a container can); False when it cannot."""
    os.makedirs(path, exist_ok=True)
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def test_full_disk_is_one_line_and_loses_nothing(
    reference_run, session_cache, tmp_path, run_main, main_args, main_env
):
    """A disk that fills mid-save: one `error:` line (no Orbax tracebacks), exit 1, the last
    complete checkpoint kept; after moving to a disk with space, the run finishes with the
    uninterrupted run's exact parameters."""
    import shutil

    from semantica_jax.utils import checkpointing

    disk = tmp_path / "small_disk"
    if not _mount_tmpfs(disk, "2000k"):  # a tiny checkpoint is ~0.6 MB: 2-3 fit
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        proc = subprocess.run(
            main_args(str(disk / "run"), session_cache, *RESUME_OVERRIDES),
            cwd=ROOT,
            env=main_env(1),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 1, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left on device" in errors[0], proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-6000:]
        kept = checkpointing.finished_steps(str(disk / "run" / "checkpoints"))
        assert kept and kept[-1] < 80, (kept, proc.stderr[-3000:])
        moved = tmp_path / "bigger_disk"
        shutil.copytree(disk / "run", moved)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)
    run_main(str(moved), session_cache, *RESUME_OVERRIDES)
    summary = json.load(open(moved / "summary.json"))
    assert summary["start_step"] == kept[-1] and summary["final_step"] == 80
    expected, _ = restore(reference_run, "ema_params")
    got, _ = restore(str(moved), "ema_params")
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
