"""From a config to ready data: images, frozen-encoder embeddings, pairs, the pipeline.

Shared by training, evaluation and the tools so that every job sees the same encoder, the
same embedding cache and the same pairs for a given config.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from absl import logging

from semantica_jax import embeddings, encoder
from semantica_jax.data import episodes, mnist, pipeline


@dataclasses.dataclass
class EmbeddedSplit:
    """One split with its frozen-encoder embeddings.

    images: uint8 [N,H,W,C]; labels: int32 [N]; tokens: float16 [N,T,D] (memory-mapped);
    cls: float32 [N,D].
    """

    images: np.ndarray
    labels: np.ndarray
    tokens: np.ndarray
    cls: np.ndarray


def _once_per_machine(fn, *args):
    """Runs `fn` on process 0 first (it fills the caches), then on every process (cache hits).

    The caches (prepared TFDS data, encoder, embeddings) are written atomically; running the
    first build on one process avoids several processes training the same encoder.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            fn(*args)
        multihost_utils.sync_global_devices(f"cache:{fn.__name__}")
    return fn(*args)


def load_encoder(config) -> Any:
    """The frozen encoder for `config` (trained once into the cache dir if absent)."""
    return _once_per_machine(encoder.load_or_train_encoder, config)


def _load_split(config, bundle, split: str) -> EmbeddedSplit:
    images, labels = mnist.load_split(
        config.data.dataset,
        split,
        mnist.resolve_data_dir(config),
        config.data.image_size,
        config.data.channels,
        max_examples=config.data.max_examples,
    )
    tokens, cls = embeddings.embedding_cache(config, bundle, split)
    if len(tokens) != len(images):
        raise RuntimeError(
            f"embedding cache holds {len(tokens)} rows for {len(images)} images of split "
            f"{split!r}; delete {config.cache_dir}/embeddings and rerun"
        )
    return EmbeddedSplit(images, np.asarray(labels, np.int32), tokens, np.asarray(cls))


def load_embedded_split(config, bundle, split: str) -> EmbeddedSplit:
    """A split with its embeddings, computed once per (encoder, dataset, split) and cached."""
    return _once_per_machine(_load_split, config, bundle, split)


def make_train_pipeline(
    config, data: EmbeddedSplit, workdir: str | None, per_process_batch: int
) -> tuple[pipeline.Pipeline, dict]:
    """Episodes -> filtered pairs -> a sharded, resumable, prefetching pipeline.

    Writes the pair-similarity histogram (PNG + JSON) to `workdir` on process 0.
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
    if workdir and jax.process_index() == 0 and "similarities" in report:
        os.makedirs(workdir, exist_ok=True)
        episodes.save_similarity_report(
            report["similarities"],
            report.get("low_cosine"),
            report.get("high_cosine"),
            report,
            os.path.join(workdir, "pair_similarity.png"),
            os.path.join(workdir, "pair_similarity.json"),
        )
    pipe = pipeline.Pipeline(
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


def sample_grid_conditioning(data: EmbeddedSplit, rows: int) -> np.ndarray:
    """Indices of `rows` conditioning images for sample grids: distinct classes first."""
    chosen: list[int] = []
    for label in np.unique(data.labels):
        if len(chosen) == rows:
            break
        chosen.append(int(np.flatnonzero(data.labels == label)[0]))
    rest = [i for i in range(len(data.labels)) if i not in set(chosen)]
    return np.asarray((chosen + rest)[:rows], np.int64)
