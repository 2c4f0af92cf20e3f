"""The run directory (WORKDIR) of a training job, and the only module that knows its names.

  WORKDIR/config.json            the effective config (`write_config`, `load_config`)
  WORKDIR/checkpoints/           Orbax: params, EMA, optimizer, step, rng, data state
  WORKDIR/samples/step_N.png     conditioning image | its variations, one row each
  WORKDIR/eval/metrics.json      what `--mode=eval` measured
  WORKDIR/summary.json           what the training job returned
  WORKDIR/events.out.tfevents.*  TensorBoard (clu)

Tools and evaluation open a workdir through `load_config` and `restore_ema_params`, which
raise `UserError` with a fix when the directory is not a finished training run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import ml_collections
from absl import logging

from semantica_jax.encoder import objectives as encoder_objectives
from semantica_jax.errors import UserError

CONFIG_JSON = "config.json"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
EVAL = "eval"
SUMMARY_JSON = "summary.json"

# Sections the tools read; a config.json without them did not come from a training run.
_REQUIRED_SECTIONS = ("data", "encoder", "model", "diffusion", "sampler")


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_JSON)


def checkpoints_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


def sample_grid_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, SAMPLES, f"step_{step}.png")


def eval_dir(workdir: str) -> str:
    return os.path.join(workdir, EVAL)


def summary_path(workdir: str) -> str:
    return os.path.join(workdir, SUMMARY_JSON)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The effective config, atomically, as WORKDIR/config.json (call on process 0)."""
    from semantica_jax.utils import atomic_files

    text = config.to_json_best_effort(indent=2, sort_keys=True)
    atomic_files.write_text(config_path(workdir), text)


def load_config(workdir: str, cache_dir: str = "") -> ml_collections.ConfigDict:
    """The effective config of a training run, rebuilt from WORKDIR/config.json.

    JSON turns tuples into lists; the consumers (UViTConfig.from_config, the encoder key)
    accept both, so the rebuilt config drives the same model and the same cached encoder.

    Args:
      workdir: a directory made by `python -m semantica_jax.main --workdir=DIR`.
      cache_dir: overrides `config.cache_dir` (where the frozen encoder is cached); "" keeps
        the one the run used.

    Raises:
      UserError: no workdir, no config.json, or a config.json that is not a run config.
    """
    if not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist; pass the --workdir of a training run")
    path = config_path(workdir)
    if not os.path.isfile(path):
        raise UserError(
            f"{path} not found; {workdir} is not a training workdir "
            "(make one with python -m semantica_jax.main --config=... --workdir=DIR)"
        )
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not readable JSON ({err})") from err
    missing = [s for s in _REQUIRED_SECTIONS if not isinstance(values.get(s), dict)]
    if missing:
        raise UserError(f"{path} lacks config section(s) {', '.join(missing)}; not a run config")
    config = ml_collections.ConfigDict(values)
    if cache_dir:
        config.cache_dir = os.path.abspath(cache_dir)
    return config


def restore_ema_params(workdir: str, step: int | None = None) -> tuple[Any, int]:
    """EMA params of the newest usable (or the given) checkpoint of WORKDIR: (params, step).

    With step=None, a newest step that does not read back (truncated or deleted array
    files, a missing item, damaged metadata) or holds a non-finite value is skipped with
    one warning naming it, and the previous step is used; readers never move or delete a
    training run's files (the next training resume moves such a step aside).

    Raises:
      UserError: the workdir holds no finished checkpoint (or not that step), or none of
        its checkpoints is usable.
    """
    from semantica_jax.utils import checkpointing

    checkpoints = checkpoints_dir(workdir)
    if not os.path.isdir(checkpoints):
        raise UserError(f"no checkpoints in {workdir}; train first (semantica_jax.main)")
    if step is not None:
        if not os.path.isdir(os.path.join(checkpoints, str(step))):
            raise UserError(f"no checkpoint for step {step} in {checkpoints}")
        return _restore_usable(checkpoints, step)
    steps = checkpointing.finished_steps(checkpoints)
    if not steps:
        raise UserError(f"no finished checkpoint in {checkpoints}; train first")
    unusable = []
    for candidate in sorted(steps, reverse=True):
        try:
            return _restore_usable(checkpoints, candidate)
        except UserError as err:
            logging.warning("%s; trying the previous step", err)
            unusable.append(candidate)
    raise UserError(
        f"no usable checkpoint in {checkpoints} (steps {unusable} are damaged); retrain, "
        "or resume training to move them aside"
    )


def _restore_usable(checkpoints: str, step: int) -> tuple[Any, int]:
    """restore_params of one step; damage or a non-finite value is a UserError naming it."""
    import jax
    import numpy as np

    from semantica_jax.utils import checkpointing

    try:
        params, step = checkpointing.restore_params(checkpoints, step=step, item="ema_params")
    except FileNotFoundError as err:
        raise UserError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - Orbax raises many types for damaged files
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        message = f"checkpoint step {step} in {checkpoints} is unreadable ({reason})"
        raise UserError(message) from err
    if not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params)):
        raise UserError(f"checkpoint step {step} in {checkpoints} holds non-finite parameters")
    return params, step


# --- one run per workdir, and only the same run resumed -------------------------------------

LOCK = ".lock"
# Fields a resumed run may change: how long it runs and what it logs, not what it learns.
RESUMABLE_CHANGES = (
    "train.num_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_every",
    "train.profile",
    "train.num_sample_rows",
    "train.num_sample_cols",
    "cache_dir",
    "data.data_dir",
    "data.prefetch",
    "mesh.",
    "eval.",
    "sampler.",
    "encoder.checkpoint",
    "encoder.log_every",
    "data.stream_above_mb",  # where the data lives (memory or disk), not what it is
)
# Fields added or dropped after runs existed: an added one with the value that means the
# old behaviour, a dropped one with its last default. A config.json without an added field
# (or with a dropped one) still resumes, and `stable_fields` gives old runs their old names.
ADDED_FIELDS = {
    "encoder.pretrained": "",
    "encoder.input_size": 224,
    "encoder.max_train_images": 0,
    "data.stream_above_mb": 1024.0,
    "diffusion.min_snr_gamma": 5.0,
    **{f"encoder.{field}": old for field, (_, old) in encoder_objectives.VIEW_FIELDS.items()},
}
DROPPED_FIELDS = {"data.shuffle_buffer": 0}


def stable_fields(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat config as it was written before ADDED/DROPPED_FIELDS changed the config.

    Added fields at their old-behaviour value are left out and dropped fields put back at
    their last default, so that a name hashed from the fields (a benchmark's run key) is
    the same for a run from before the change and for the same run configured today.
    """
    out = {k: v for k, v in flat.items() if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
    return {**DROPPED_FIELDS, **out}


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds WORKDIR/.lock (an fcntl lock) for the block: one training run per workdir.

    The kernel releases the lock when the process exits, SIGKILL included.

    Raises:
      UserError: another process holds the lock.
    """
    import fcntl

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, LOCK), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise UserError(
                f"workdir {workdir} is in use by another run (it holds {LOCK}); wait for it "
                "to finish or pass another --workdir"
            ) from err
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def flat_config(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {'section.field': value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat_config(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_differences(stored: dict, wanted: dict) -> list[str]:
    """Fields that differ between two config dicts and that a resumed run must not change."""
    a = {**ADDED_FIELDS, **flat_config(json.loads(json.dumps(stored)))}
    b = {**ADDED_FIELDS, **flat_config(json.loads(json.dumps(wanted)))}
    for key in DROPPED_FIELDS:
        a.pop(key, None)
        b.pop(key, None)
    return sorted(
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in set(a) | set(b)
        if a.get(key) != b.get(key) and not key.startswith(RESUMABLE_CHANGES)
    )


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to resume a workdir trained with another architecture, data or recipe.

    Raises:
      UserError: WORKDIR has checkpoints and its config.json differs in a field outside
        RESUMABLE_CHANGES (the message names every such field).
    """
    path = config_path(workdir)
    if not (os.path.isdir(checkpoints_dir(workdir)) and os.path.isfile(path)):
        return
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not readable JSON ({err}); not a resumable run") from err
    wanted = json.loads(config.to_json_best_effort())
    diffs = config_differences(stored, wanted)
    if diffs:
        raise UserError(
            f"{workdir} was trained with another config; resuming it would mix two runs. "
            f"Differences: {'; '.join(diffs)}. Pass a new --workdir (or the same config)"
        )
