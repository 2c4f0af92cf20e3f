"""The only module that imports Orbax.

`save_pytree` / `restore_pytree`: one pytree in one directory (trained helpers such as the
MNIST encoder). Atomicity comes from Orbax itself (orbax-checkpoint 0.12.8,
`path/atomicity.py`): the tree is written into `<dir>.orbax-checkpoint-tmp`, a
`commit_success.txt` is written, and only then is the temp dir renamed to `<dir>`. A save
that crashes therefore leaves only the temp dir, which `restore_pytree` never reads (the
final path does not exist) and which the next save of the same path deletes before writing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


def _abspath(directory: str | os.PathLike) -> str:
    # Orbax wants absolute paths (relative ones resolve against an unrelated cwd in workers).
    return os.path.abspath(os.fspath(directory))


def _abstract(leaf: Any) -> Any:
    """Restore target for one leaf: keeps shape and dtype, drops the values."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    if isinstance(leaf, jax.Array | np.ndarray | np.generic):
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype)
    return leaf


def _local_checkpointer() -> ocp.Checkpointer:
    """A checkpointer that involves only this process (no cross-host barriers).

    Cached helpers (encoder, feature net) are written and read by one process at a time
    while the others wait at our own barrier; Orbax's default global sync would deadlock.
    """
    local = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    return ocp.Checkpointer(
        ocp.StandardCheckpointHandler(multiprocessing_options=local),
        multiprocessing_options=local,
    )


def save_pytree(directory: str | os.PathLike, tree: Any) -> str:
    """Saves a pytree of arrays atomically; the directory must not exist yet.

    Args:
      directory: destination; created with its parents. An existing finished checkpoint there
        is an error (delete it first or choose another path); a leftover unfinished
        `<dir>.orbax-checkpoint-tmp` from a crashed save is removed by Orbax.
      tree: nested dicts/lists of jax or numpy arrays and Python scalars.

    Returns:
      The absolute path written.
    """
    path = _abspath(directory)
    if os.path.exists(path):
        raise FileExistsError(
            f"checkpoint directory {path} already exists; remove it or save elsewhere"
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpointer = _local_checkpointer()
    try:
        checkpointer.save(path, args=ocp.args.StandardSave(tree))
    finally:
        checkpointer.close()
    return path


def restore_pytree(directory: str | os.PathLike, target: Any = None) -> Any:
    """Restores a pytree saved by `save_pytree`.

    Args:
      directory: the path given to `save_pytree`.
      target: optional tree of the same structure (concrete arrays or jax.ShapeDtypeStruct,
        e.g. from `jax.eval_shape(init)`); leaves are restored with its shapes and dtypes.
        None restores the tree as saved.

    Returns:
      The restored tree (jax arrays).

    Raises:
      FileNotFoundError: no finished checkpoint at `directory` (an unfinished temp dir does
        not count).
    """
    path = _abspath(directory)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}; train/save it first or fix the path")
    checkpointer = _local_checkpointer()
    try:
        if target is None:
            return checkpointer.restore(path)
        abstract = jax.tree.map(_abstract, target)
        return checkpointer.restore(path, args=ocp.args.StandardRestore(abstract))
    finally:
        checkpointer.close()


# --- Training checkpoints -------------------------------------------------------------------

_STATE = "state"
_DATA = "data"


class Checkpointer:
    """Training checkpoints: CheckpointManager with async saves, keep-last-K, resume.

    Each step directory holds two items: `state` (the TrainState: params, EMA params,
    optimizer state, step, RNG) and `data` (the input pipeline position, JSON). Orbax
    finalises a step atomically (temp dir + rename), so a run killed mid-save resumes from
    the previous finished step.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = _abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(_STATE, _DATA)
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> bool:
        """Starts an (async) save of `state` and the pipeline position at `step`."""
        if step in self._manager.all_steps():
            return False
        logging.info("checkpoint step %d: saving to %s", step, self.directory)
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardSave(state), _DATA: ocp.args.JsonSave(data_state)}
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores (state, data_state); `abstract_state` carries target shapes/shardings.

        Restoring onto another device count works: arrays are laid out by the shardings of
        `abstract_state`, not those they were saved with.
        """
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(abstract_state), _DATA: ocp.args.JsonRestore()}
            ),
        )
        return restored[_STATE], dict(restored[_DATA])

    def restore_latest_good(
        self, abstract_state: Any, validate: Callable[[Any, dict[str, Any]], None] | None = None
    ) -> tuple[Any, dict[str, Any], int] | None:
        """Restores the newest step that reads back and passes `validate(state, data)`.

        A step that does not (a truncated or deleted array file, a missing item, garbage
        JSON, a non-finite value that `validate` rejects) is logged with one warning,
        moved aside to `corrupt-<step>` (process 0) and the previous step is tried.

        Returns:
          (state, data_state, step), or None when there was no step at all.

        Raises:
          ValueError: there were steps, but none is good (each was moved aside).
        """
        tried = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data = self.restore(step, abstract_state)
                if validate is not None:
                    validate(state, data)
                return state, data, step
            except Exception as err:  # noqa: BLE001 - Orbax raises many types for damage
                reason = " ".join(str(err).split())[:200] or type(err).__name__
                aside = os.path.join(self.directory, f"corrupt-{step}")
                logging.warning(
                    "checkpoint step %d in %s is unusable (%s); moved to %s, trying the "
                    "previous step",
                    step,
                    self.directory,
                    reason,
                    aside,
                )
                if jax.process_index() == 0:
                    os.replace(os.path.join(self.directory, str(step)), aside)
                self._manager.reload()
                tried.append(step)
        if tried:
            raise ValueError(
                f"no usable checkpoint left in {self.directory} (steps {tried} moved aside as "
                "corrupt-<step>); delete the workdir to start over"
            )
        return None

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.wait_until_finished()
        self.close()


def finished_steps(checkpoints: str | os.PathLike) -> list[int]:
    """Steps with a finished (committed) save under a `Checkpointer` directory, ascending."""
    root = _abspath(checkpoints)
    if not os.path.isdir(root):
        return []
    with ocp.CheckpointManager(root, item_names=(_STATE, _DATA)) as manager:
        return sorted(manager.all_steps())


def restore_params(
    checkpoints: str | os.PathLike, step: int | None = None, item: str = "ema_params"
) -> tuple[Any, int]:
    """Restores one subtree of a training checkpoint alone (EMA params for sampling/eval).

    Args:
      checkpoints: the directory a `Checkpointer` wrote (`workdir.checkpoints_dir(WORKDIR)`).
      step: which step; None = the latest.
      item: which TrainState field: 'ema_params' (default) or 'params'.

    Returns:
      (tree, step) with the tree's leaves as jax arrays on the first local device.
    """
    root = _abspath(checkpoints)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no checkpoints under {root}; train first (main --mode=train)")
    with ocp.CheckpointManager(root, item_names=(_STATE, _DATA)) as manager:
        step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no finished checkpoint in {root}; train first")
    path = epath.Path(root) / str(step) / _STATE
    # The item's own handler: the Checkpointer would also look for step metadata in `path`.
    handler = ocp.PyTreeCheckpointHandler()
    try:
        meta = handler.metadata(path).tree[item]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {item: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)}
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
        # Partial restore: only the requested subtree is read from disk.
        restored = handler.restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True
            ),
        )
    finally:
        handler.close()
    return restored[item], step
