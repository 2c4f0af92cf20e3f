"""Input pipeline over episode pairs: deterministic, infinite, sharded, resumable, prefetched.

The pair list is read in epochs. Epoch e is a permutation of all pairs drawn from
(seed, e) alone, cut into global batches of `batch_size * process_count` pairs (the last
incomplete global batch is skipped; the next epoch reshuffles, so every pair is seen).
Process p takes rows [p*B, (p+1)*B) of each global batch and gathers only those images
and tokens, so `jax.make_array_from_process_local_data` can assemble the global batch.

The position (epoch, step within the epoch) is all a resumed run needs: a batch is a
pure function of (seed, epoch, step, process), see `batch_pair_ids`.
"""

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

from semantica_jax.data import episodes

_SHUFFLE_STREAM = 3  # distinct from the episode/pair streams of episodes.py
_POLL_S = 0.1  # how often a blocked worker checks for a stop request


def epoch_permutation(num_pairs: int, seed: int, epoch: int) -> np.ndarray:
    """Order in which epoch `epoch` visits the pairs: int64 [num_pairs]."""
    return np.random.default_rng((seed, _SHUFFLE_STREAM, epoch)).permutation(num_pairs)


def steps_per_epoch(num_pairs: int, global_batch_size: int) -> int:
    """Full global batches in one epoch."""
    return num_pairs // global_batch_size


def batch_pair_ids(
    num_pairs: int,
    batch_size: int,
    seed: int,
    epoch: int,
    step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """Rows of the pair list that process `process_index` reads at (epoch, step): [B] int64.

    Args:
      num_pairs: P, rows in the pair list.
      batch_size: B, per-process batch; the global batch is B * process_count.
      seed: shuffling seed.
      epoch, step: position; 0 <= step < steps_per_epoch.
      process_index, process_count: this process's slice of the global batch.
    """
    permutation = epoch_permutation(num_pairs, seed, epoch)
    return process_slice(permutation, batch_size, step, process_index, process_count)


def process_slice(
    permutation: np.ndarray, batch_size: int, step: int, process_index: int, process_count: int
) -> np.ndarray:
    """Rows [p*B, (p+1)*B) of global batch `step` of an epoch's permutation: [B]."""
    start = (step * process_count + process_index) * batch_size
    return permutation[start : start + batch_size]


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 [..] in [0, 255] -> float32 [..] in [-1, 1]."""
    return images.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def gather_batch(
    images: np.ndarray,
    tokens: np.ndarray,
    cls: np.ndarray,
    labels: np.ndarray,
    pairs: np.ndarray,
    pair_ids: np.ndarray,
) -> dict[str, np.ndarray]:
    """Reads the examples of `pair_ids` (and only those) into a numpy batch.

    Args:
      images: uint8 [N,H,W,C].
      tokens: [N,T,D] encoder tokens (float16 memmap is fine).
      cls: [N,D] encoder CLS embeddings.
      labels: int [N].
      pairs: int [P,2] (cond_index, target_index).
      pair_ids: rows of `pairs` in this batch [B].

    Returns:
      {target [B,H,W,C] float32 in [-1,1], cond_tokens [B,T,D] float32,
       cond_cls [B,D] float32, cond_image [B,H,W,C] float32 in [-1,1],
       label [B] int32 (the target's label)}.
    """
    chosen = pairs[pair_ids]
    cond, target = chosen[:, 0], chosen[:, 1]
    # Reading a memmap in ascending index order keeps the disk access sequential.
    order = np.argsort(cond, kind="stable")
    cond_tokens = np.empty((cond.size, *tokens.shape[1:]), dtype=np.float32)
    cond_tokens[order] = tokens[cond[order]]
    return {
        "target": to_unit_range(images[target]),
        "cond_tokens": cond_tokens,
        "cond_cls": np.asarray(cls[cond], dtype=np.float32),
        "cond_image": to_unit_range(images[cond]),
        "label": np.asarray(labels[target], dtype=np.int32),
    }


class _BatchMaker:
    """Holds the arrays and the current epoch's permutation; shared with the worker thread
    (which must not hold the Pipeline itself, or the Pipeline could never be collected)."""

    def __init__(
        self,
        arrays: tuple,
        batch_size: int,
        seed: int,
        process_index: int,
        process_count: int,
        steps: int,
    ) -> None:
        self.arrays = arrays
        self.batch_size = batch_size
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.steps = steps
        self._cached: tuple[int, np.ndarray] | None = None  # (epoch, permutation)

    def __call__(self, position: tuple[int, int]) -> dict[str, np.ndarray]:
        epoch, step = position
        cached = self._cached  # one read: the tuple is swapped whole, never mutated
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_permutation(self.arrays[4].shape[0], self.seed, epoch))
            self._cached = cached
        ids = process_slice(
            cached[1], self.batch_size, step, self.process_index, self.process_count
        )
        return gather_batch(*self.arrays, ids)

    def advance(self, position: tuple[int, int]) -> tuple[int, int]:
        """The position after `position`."""
        epoch, step = position
        return (epoch, step + 1) if step + 1 < self.steps else (epoch + 1, 0)


def _produce(
    make_batch: _BatchMaker, position: tuple[int, int], out: queue.Queue, stop: threading.Event
) -> None:
    """Worker loop: puts (position, batch, None) in order, or (position, None, error) and ends."""
    while not stop.is_set():
        try:
            item = (position, make_batch(position), None)
        except Exception as error:  # handed to the consumer, which raises it again
            item = (position, None, error)
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        if item[2] is not None:
            return
        position = make_batch.advance(position)


class Pipeline:
    """Infinite iterator of per-process numpy batches over episode pairs.

    Usage:
      with Pipeline(images, tokens, cls, labels, pairs, batch_size=64, seed=0) as it:
        for batch in it: ...
        checkpoint(it.state())
      Pipeline(..., state=saved)  # or it.restore(saved): continues exactly there.

    A background thread prepares up to `prefetch` batches ahead (0 = none). `state()` is
    the position of the next batch the *consumer* will take, whatever the thread has
    prepared. An exception in the thread is raised again by `next()`.
    """

    def __init__(
        self,
        images: np.ndarray,
        tokens: np.ndarray,
        cls: np.ndarray,
        labels: np.ndarray,
        pairs: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
        state: dict | None = None,
    ) -> None:
        """See the class docstring; arrays are [N,...] except pairs int [P,2]."""
        _check_inputs(images, tokens, cls, labels, pairs)
        if batch_size < 1 or process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= process_index < process_count; got "
                f"batch_size={batch_size}, process_index={process_index}, "
                f"process_count={process_count}"
            )
        if prefetch < 0:
            raise ValueError(f"prefetch={prefetch} must be >= 0 (0 = no background thread)")
        self.batch_size = batch_size
        self.global_batch_size = batch_size * process_count
        self.seed = int(seed)
        self.process_index = process_index
        self.process_count = process_count
        self.prefetch = prefetch
        self.num_pairs = int(pairs.shape[0])
        self.steps_per_epoch = steps_per_epoch(self.num_pairs, self.global_batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{self.num_pairs} pairs cannot fill one global batch of "
                f"{self.global_batch_size} (= {batch_size} x {process_count} processes): "
                "lower the batch size or keep more pairs (episodes.filter thresholds)"
            )
        self._make_batch = _BatchMaker(
            (images, tokens, cls, labels, np.asarray(pairs)),
            batch_size,
            self.seed,
            process_index,
            process_count,
            self.steps_per_epoch,
        )
        self._position = (0, 0)  # (epoch, step) of the next batch the consumer takes
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        if state is not None:
            self.restore(state)

    # --- position ------------------------------------------------------------------------
    def state(self) -> dict[str, int]:
        """Position of the next batch `next()` returns (small dict of ints, checkpointable)."""
        epoch, step = self._position
        return {
            "seed": self.seed,
            "epoch": epoch,
            "step": step,
            "global_batch_size": self.global_batch_size,
            "num_pairs": self.num_pairs,
        }

    def restore(self, state: dict) -> None:
        """Moves to a position saved by `state()`; the next batch is the one saved there."""
        expected = {
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_pairs": self.num_pairs,
        }
        for key, value in expected.items():
            if key in state and int(state[key]) != value:
                raise ValueError(
                    f"pipeline state has {key}={int(state[key])} but this pipeline has {value}: "
                    "resume with the same seed, global batch size and pair list"
                )
        epoch, step = int(state["epoch"]), int(state["step"])
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise ValueError(
                f"pipeline state epoch={epoch}, step={step} is out of range "
                f"(steps_per_epoch={self.steps_per_epoch})"
            )
        self._stop_worker()
        self._failed = None
        self._position = (epoch, step)

    def batch_at(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """This process's batch at (epoch, step), computed synchronously."""
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"epoch={epoch}, step={step} out of range ({self.steps_per_epoch})")
        return self._make_batch((epoch, step))

    # --- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._failed is not None:
            raise RuntimeError("the pipeline worker failed earlier; restore() to go on") from (
                self._failed
            )
        if self.prefetch == 0:
            batch = self.batch_at(*self._position)
        else:
            if self._thread is None:
                self._start_worker()
            position, batch, error = self._take()
            if error is not None:
                self._failed = error
                self._stop_worker()
                raise error
            assert position == self._position, (position, self._position)
        self._position = self._make_batch.advance(self._position)
        return batch

    def _take(self) -> tuple:
        """Next (position, batch, error) from the worker; never blocks on a dead worker."""
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return self._position, None, RuntimeError("the pipeline worker died")

    def _start_worker(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(
            target=_produce,
            args=(self._make_batch, self._position, self._queue, self._stop),
            name="semantica-pipeline",
            daemon=True,  # never keeps a crashed training process alive
        )
        self._thread.start()

    def _stop_worker(self) -> None:
        """Stops the worker thread and discards what it prepared."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread, self._queue = None, None

    # --- shutdown ------------------------------------------------------------------------
    def close(self) -> None:
        """Stops the background thread (idempotent). The position is kept."""
        self._stop_worker()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # A pipeline dropped without close(): let its worker end instead of pinning the arrays.
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


def _check_inputs(
    images: np.ndarray, tokens: np.ndarray, cls: np.ndarray, labels: np.ndarray, pairs: np.ndarray
) -> None:
    """Raises a ValueError naming the first array whose type or shape is wrong."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"images must be uint8 [N,H,W,C]; got {images.dtype} {images.shape} "
            "(convert to uint8 at the data edge)"
        )
    n = images.shape[0]
    checks = (
        ("tokens", tokens, 3, "[N,T,D]"),
        ("cls", cls, 2, "[N,D]"),
        ("labels", labels, 1, "[N]"),
    )
    for name, array, ndim, shape in checks:
        if array.ndim != ndim or array.shape[0] != n:
            raise ValueError(f"{name} must be {shape} with N = {n} images; got {array.shape}")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must be int [P,2] (cond, target); got {pairs.dtype} {pairs.shape}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pairs index images outside [0, {n}): rebuild them for these arrays")


def make_train_pipeline(config, data, per_process_batch: int) -> tuple[Pipeline, dict]:
    """Episodes -> filtered pairs -> a sharded, resumable, prefetching pipeline.

    Args:
      config: the full config (episodes, data.prefetch, seed).
      data: an `assets.EmbeddedSplit` (images, labels, tokens, cls of the train split).
      per_process_batch: this process's share of the global batch.

    Writes nothing: `write_pair_report` saves the pair-similarity histogram once the run
    has passed its checks.
    """
    pairs, report = episodes.build_pairs(data.cls, data.labels, config.episodes, config.seed)
    logging.info(
        "pairs: %s", {k: v for k, v in report.items() if not isinstance(v, list | np.ndarray)}
    )
    if len(pairs) == 0:
        raise ValueError(
            "no training pairs left after filtering; widen config.episodes.low/high or set "
            "config.episodes.filter=False"
        )
    pipe = Pipeline(
        data.images,
        data.tokens,
        data.cls,
        data.labels,
        pairs,
        batch_size=per_process_batch,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        prefetch=config.data.prefetch,
    )
    return pipe, report


def write_pair_report(report: dict, workdir: str) -> None:
    """The pair-similarity histogram (PNG + JSON) of `make_train_pipeline`'s report."""
    if "similarities" in report:
        episodes.save_similarity_report(
            report["similarities"],
            report.get("low_cosine"),
            report.get("high_cosine"),
            report,
            os.path.join(workdir, "pair_similarity.png"),
            os.path.join(workdir, "pair_similarity.json"),
        )
