"""Faults a training run must survive, each asserting what survives.

- A campaign of 10 SIGKILLs and 4 SIGTERMs at named moments (start-up, compiling, mid-step,
  mid-save, during the sample grid, the final save), all on one workdir, each resumed by
  the next run: the run that finally completes has bit-identical parameters and EMA
  parameters to an uninterrupted run.
- A damaged newest checkpoint, no usable checkpoint, a disk that fills up mid-save, a
  multi-process launch whose peer dies, a damaged cached encoder or embedding cache, a
  second run on a locked workdir.

Runs are subprocesses of `main` on the tiny config (the session's compilation cache makes
each about 5-10 s).
"""

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from semantica_jax import errors
from semantica_jax import workdir as run_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RESUME_OVERRIDES = (
    "--config.train.num_steps=80",
    "--config.train.checkpoint_every=10",
    "--config.train.eval_every=40",
    "--config.train.log_every=10",
)


@pytest.fixture(scope="module")
def reference_run(session_cache, tmp_path_factory, run_main):
    """An uninterrupted run of the resume tests' length."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    run_main(workdir, session_cache, *RESUME_OVERRIDES)
    return workdir


KILL, TERM = signal.SIGKILL, signal.SIGTERM

# (moment, signal, a line the job writes to stderr, seconds to wait after it). In this order
# every marker is reached by the run that resumes from the previous interruption.
CAMPAIGN = (
    ("start-up: devices up, nothing read", KILL, "JAX process 0/1", 0.0),
    ("start-up: reading the data", TERM, "reading mnist:train", 0.0),
    ("start-up: pairs built, no state yet", KILL, "pairs: ", 0.0),
    ("compiling the first step", KILL, "[Hyperparameters]", 0.3),
    ("compiling the first step", TERM, "[Hyperparameters]", 0.3),
    ("mid-save of step 10", KILL, "checkpoint step 10: saving", 0.0),
    ("mid-training", TERM, "] [20] ", 0.0),
    ("mid-step", KILL, "] [30] ", 0.01),
    ("during the sample grid at step 40", KILL, "] [40] ", 0.2),
    ("mid-save of step 50", TERM, "checkpoint step 50: saving", 0.0),
    ("mid-step", KILL, "] [60] ", 0.05),
    ("mid-save of step 70", KILL, "checkpoint step 70: saving", 0.0),
    ("during the final sample grid", KILL, "] [80] ", 0.05),
    ("the final save", KILL, "checkpoint step 80: saving", 0.0),
)


def _interrupt(args, env, marker, sig, delay, timeout=180) -> tuple[int, str]:
    """Runs `args` until `marker` appears on its stderr, waits `delay`, sends `sig`.

    Returns (exit code, stderr). Fails when the run ends without writing the marker.
    """
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                time.sleep(delay)
                proc.send_signal(sig)
                break
        else:
            raise AssertionError(f"the run ended before {marker!r}:\n{''.join(seen)[-3000:]}")
        seen.append(proc.stderr.read())
        return proc.wait(), "".join(seen)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()


def test_kill_campaign_resumes_to_identical_parameters(
    reference_run, session_cache, tmp_path, main_args, main_env, run_main, restore
):
    workdir = str(tmp_path / "run")
    args, env = main_args(workdir, session_cache, *RESUME_OVERRIDES), main_env(1)
    assert sum(sig == KILL for _, sig, _, _ in CAMPAIGN) == 10
    assert sum(sig == TERM for _, sig, _, _ in CAMPAIGN) == 4
    for moment, sig, marker, delay in CAMPAIGN:
        rc, stderr = _interrupt(args, env, marker, sig, delay)
        context = f"{moment} ({sig.name} after {marker!r}):\n{stderr[-3000:]}"
        if sig == KILL:
            assert rc == -KILL, context
        else:
            # Inside the training loop SIGTERM saves at the next step and exits 0; before
            # it (start-up) the default action ends the process.
            assert rc in (0, -TERM), context
            if rc == 0:
                assert "preempted at step" in stderr, context
        assert "Traceback" not in stderr, context
    proc = run_main(workdir, session_cache, *RESUME_OVERRIDES)
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["final_step"] == 80 and not summary["preempted"], proc.stderr[-3000:]
    for item in ("params", "ema_params"):
        expected, _ = restore(reference_run, item)
        got, step = restore(workdir, item)
        assert step == 80
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{item}/{k}")
    # Nothing half-written is left where a reader would look for a checkpoint.
    leftovers = [p for p in os.listdir(os.path.join(workdir, "checkpoints")) if not p.isdigit()]
    assert not [p for p in leftovers if not p.startswith("corrupt-")], leftovers


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
        # A 2 s grace (default 10) before the SIGKILL of a peer stuck in a collective.
        env={
            **main_env(1),
            "PYTHON": sys.executable,
            "WORKLOG_DIR": str(tmp_path),
            "STOP_GRACE_S": "2",
        },
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
    kind, tiny_run, session_cache, tmp_path, run_main, assert_same_run
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
    assert_same_run(tiny_run, workdir)  # resumed from step 3 to the same step-6 result


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
    reference_run, session_cache, tmp_path, run_main, main_args, main_env, restore
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


@pytest.mark.parametrize("damage", ["garbage encoder.json", "truncated params", "edited hash"])
def test_damaged_cached_encoder_is_retrained_with_one_warning(
    damage, tmp_path, monkeypatch, bars, caplog
):
    """A cached encoder that does not read back or match its hash is never used: one
    warning, the directory moved aside, the encoder trained again (same values)."""
    from configs import mnist as mnist_config
    from semantica_jax import assets

    config = mnist_config.get_config("tiny")
    config.cache_dir = str(tmp_path)
    config.encoder.num_steps = 3
    monkeypatch.setattr(assets, "load_split", lambda cfg, split: bars(64, seed=0))
    first = assets.load_or_train_encoder(config, log=lambda _: None)
    manifest = os.path.join(first.path, "encoder.json")
    if damage == "garbage encoder.json":
        open(manifest, "w").write("{not json")
    elif damage == "truncated params":
        for path in glob.glob(os.path.join(first.path, "params", "**", "*"), recursive=True):
            if os.path.isfile(path) and os.path.getsize(path) > 64:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 3)
    else:
        fields = json.load(open(manifest))
        fields["params_hash"] = "0" * len(fields["params_hash"])
        json.dump(fields, open(manifest, "w"))
    with caplog.at_level("WARNING"):
        again = assets.load_or_train_encoder(config, log=lambda _: None)
    warnings = [
        r.getMessage() for r in caplog.records if "cached encoder is damaged" in r.getMessage()
    ]
    assert len(warnings) == 1, caplog.text
    assert again.path == first.path and again.params_hash == first.params_hash  # retrained
    assert glob.glob(first.path + ".corrupt-*")


def _cached_embeddings(directory, bundle, images, logs=None):
    """embeddings.cached_embeddings on the test's cache dir, messages into `logs`."""
    from semantica_jax.encoder import embeddings

    identity = embeddings.cache_identity(
        bundle, images, dataset="mnist", split="train", max_examples=0
    )
    sink = (lambda _: None) if logs is None else logs.append
    tokens, cls = embeddings.cached_embeddings(
        directory, bundle, images, identity, log=sink, warn=sink
    )
    return np.array(tokens), np.array(cls)


def test_corrupt_cache_files_are_rebuilt(
    tmp_path, encode_calls, make_bundle, config_vit, random_digits
):
    bundle, images = make_bundle(config_vit, 0, key="key0"), random_digits(6, 0)
    directory = str(tmp_path / "emb")
    want_tokens, want_cls = _cached_embeddings(directory, bundle, images)
    with open(os.path.join(directory, "tokens.npy"), "wb") as f:
        f.write(b"truncated")
    encode_calls.clear()
    logs = []
    tokens, cls = _cached_embeddings(directory, bundle, images, logs)
    assert sum(encode_calls) == 6  # rebuilt, to the same values
    assert any("unreadable" in m for m in logs), logs
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(cls, want_cls)


@pytest.mark.parametrize("garbage", ["finite", "nan"])
def test_same_shape_garbage_in_a_cache_is_detected_and_rebuilt(
    garbage, tmp_path, encode_calls, make_bundle, config_vit, random_digits
):
    """Values overwritten in place (shape and header intact) are never used silently."""
    bundle, images = make_bundle(config_vit, 0, key="key0"), random_digits(6, 0)
    directory = str(tmp_path / "emb")
    want_tokens, want_cls = _cached_embeddings(directory, bundle, images)
    cls = np.load(os.path.join(directory, "cls.npy"), mmap_mode="r+")
    cls[2] = np.nan if garbage == "nan" else cls[2] + 0.5
    cls.flush()
    del cls
    encode_calls.clear()
    logs = []
    tokens, cls = _cached_embeddings(directory, bundle, images, logs)
    assert sum(encode_calls) == 6  # rebuilt
    assert any("cls.npy does not match its recorded sha256" in m for m in logs), logs
    np.testing.assert_array_equal(cls, want_cls)
    np.testing.assert_array_equal(tokens, want_tokens)


def test_lock_refuses_a_second_run_and_is_freed_by_sigkill(tmp_path):
    with run_dir.locked(str(tmp_path)):
        with pytest.raises(errors.UserError, match="in use by another run"):
            with run_dir.locked(str(tmp_path)):
                pass
    with run_dir.locked(str(tmp_path)):  # released on exit of the block
        pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[2]); from semantica_jax import workdir as w\n"
            "with w.locked(sys.argv[1]):\n print('held', flush=True); import time; time.sleep(60)",
            str(tmp_path),
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(errors.UserError):
        with run_dir.locked(str(tmp_path)):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    time.sleep(0.1)
    with run_dir.locked(str(tmp_path)):
        pass


def test_large_cache_files_are_not_rehashed_unless_changed(
    tmp_path, monkeypatch, encode_calls, make_bundle, config_vit, random_digits
):
    """Hashing a big split's tokens at every start would cost minutes: a file with the size
    and mtime recorded at build time is trusted; a later write is still caught."""
    from semantica_jax.encoder import embeddings

    bundle, images = make_bundle(config_vit, 0, key="key0"), random_digits(6, 0)
    directory = str(tmp_path / "emb")
    want_tokens, want_cls = _cached_embeddings(directory, bundle, images)
    monkeypatch.setattr(embeddings, "TRUST_STAMP_ABOVE_BYTES", 0)  # treat these as large
    hashed = []
    real = embeddings.file_sha256
    monkeypatch.setattr(embeddings, "file_sha256", lambda p: hashed.append(p) or real(p))
    encode_calls.clear()
    _cached_embeddings(directory, bundle, images)
    assert hashed == [] and encode_calls == []
    path = os.path.join(directory, "cls.npy")
    st = os.stat(path)
    cls = np.load(path, mmap_mode="r+")
    cls[1] += 1.0
    cls.flush()
    del cls
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a write one second later
    logs = []
    tokens, cls = _cached_embeddings(directory, bundle, images, logs)
    assert any("cls.npy does not match its recorded sha256" in m for m in logs), logs
    assert sum(encode_calls) == 6
    np.testing.assert_array_equal(cls, want_cls)
    np.testing.assert_array_equal(tokens, want_tokens)
