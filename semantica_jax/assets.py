"""The cache dir and everything built into it once per config, then reused.

`<cache_dir>` is `config.cache_dir` (default `~/.cache/semantica_jax`, or
`$SEMANTICA_CACHE_DIR`). This module is the only one that knows its layout:

  <cache_dir>/tfds/                                   prepared TFDS data (`data_dir`)
  <cache_dir>/images/<dataset>-<split>-<S>x<S>x<C>[-first<n>]/rows-*/   splits above
                                      data.stream_above_mb, one shard per process (`load_split`)
  <cache_dir>/encoder/<encoder key>/                  the frozen encoder (`load_encoder`)
  <cache_dir>/embeddings/<encoder key>/<dataset>-<split>[-first<n>]/   (`embedded_split`;
                                      rows-*/ per shard for a streamed split)
  <cache_dir>/feature_net/<key>/                      the FID feature network (`feature_net`)

Everything here is written atomically (temp dir, then rename) by the modules that build it,
and on several processes the first build runs on process 0 while the others wait, then read.
`load_split(config, split)` is the ONE way to read a split of the config's dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from semantica_jax.encoder import bundle as encoder_bundle
from semantica_jax.encoder import embeddings
from semantica_jax.encoder.bundle import EncoderBundle
from semantica_jax.models.vit import ViTConfig
from semantica_jax.utils import atomic_files

Log = Callable[[str], None]

_ENCODER_SUBSET_STREAM = 11  # random stream of the encoder's training subset


@dataclasses.dataclass
class EmbeddedSplit:
    """One split with its frozen-encoder embeddings.

    images: uint8 [N,H,W,C]; labels: int32 [N]; tokens: float16 [N,T,D] (memory-mapped);
    cls: float32 [N,D]. For a split above `data.stream_above_mb`, images and tokens are
    `disk_array` row arrays (indexing reads those rows from disk).
    """

    images: np.ndarray
    labels: np.ndarray
    tokens: np.ndarray
    cls: np.ndarray

    def with_classes(self, classes) -> EmbeddedSplit:
        """The rows whose label is in `classes` (all rows for an empty `classes`).

        The chosen images and tokens are read into memory (a class subset of a split on
        disk must fit).

        Raises:
          ValueError: no row has one of those labels.
        """
        if not len(classes):
            return self
        rows = np.flatnonzero(np.isin(self.labels, np.asarray(classes)))
        if not len(rows):
            raise ValueError(f"no image of classes {tuple(classes)} in this split")
        return EmbeddedSplit(
            self.images[rows], self.labels[rows], np.asarray(self.tokens[rows]), self.cls[rows]
        )


def barrier(name: str) -> None:
    """Waits until every process gets here (nothing to do on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def once_per_machine(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs `fn` on process 0 first (it fills the caches), then on every process (cache hits).

    The caches are written atomically; running the first build on one process avoids several
    processes training the same encoder.
    """
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            fn(*args)
        barrier(f"cache:{fn.__name__}")
    return fn(*args)


# --- data --------------------------------------------------------------------------------


def data_dir(config: ml_collections.ConfigDict) -> str:
    """The TFDS data dir: `config.data.data_dir`, or `<config.cache_dir>/tfds` if empty."""
    return config.data.data_dir or os.path.join(config.cache_dir, "tfds")


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """Where and as what a split above `data.stream_above_mb` is stored on disk."""

    tfds_name: str
    split: str
    directory: str
    identity: dict
    total: int
    image_shape: tuple[int, int, int]


def _tfds_source(config: ml_collections.ConfigDict, split: str) -> tuple[str, int]:
    """(TFDS name the split is read under, its number of examples at data.max_examples).

    Prepares what is ours to prepare first: MNIST (a damaged copy is prepared again, as
    `load_split` does) and a user's folder (whose TFDS name fingerprints its content).
    """
    from semantica_jax.data import folder, mnist, tfds_images

    data, root = config.data, data_dir(config)
    name = data.dataset
    if folder.is_folder_dataset(name):
        name = folder.tfds_name(name, split, root, data.image_size, data.channels)
    size = functools.partial(tfds_images.split_size, name, split, root, data.max_examples)
    return name, mnist.recovering(root, size) if name == mnist.MNIST_NAME else size()


def stream_spec(config: ml_collections.ConfigDict, split: str) -> StoreSpec | None:
    """None if `split` is read into memory; else how it is streamed to disk (`image_store`).

    A split streams when its uint8 images take more than `data.stream_above_mb` MiB
    (a negative value: never).
    """
    data = config.data
    limit = float(data.get("stream_above_mb", -1))
    if limit < 0:
        return None
    name, total = _tfds_source(config, split)
    shape = (int(data.image_size), int(data.image_size), int(data.channels))
    if total * int(np.prod(shape)) <= limit * 2**20:
        return None
    from semantica_jax.data import tfds_images

    root = data_dir(config)
    identity = {
        "dataset": data.dataset,
        "tfds_name": name,  # a folder's name changes with its content
        # Another prepared copy or version of the data is another store.
        "tfds_full_name": tfds_images.prepared_builder(name, root).info.full_name,
        "data_dir": os.path.realpath(root),
        "split": split,
        "image_shape": list(shape),
        "max_examples": int(data.max_examples),
        "total": int(total),
    }
    directory = os.path.join(
        os.path.abspath(config.cache_dir),
        "images",
        f"{_slug(data.dataset)}-{_slug(split)}-{'x'.join(map(str, shape))}"
        + (f"-first{int(data.max_examples)}" if data.max_examples else ""),
    )
    return StoreSpec(name, split, directory, identity, int(total), shape)


def _write_own_shard(config: ml_collections.ConfigDict, spec: StoreSpec) -> None:
    """This process's shard of a streamed split (reads only its rows from TFDS)."""
    from semantica_jax.data import image_store, tfds_images

    data = config.data

    def read_rows(start: int, stop: int):
        return tfds_images.read_tfds_images(
            spec.tfds_name,
            spec.split,
            data_dir(config),
            data.image_size,
            data.channels,
            data.max_examples,
            rows=(start, stop),
        )[1]

    image_store.ensure_shard(
        spec.directory,
        spec.identity,
        spec.total,
        jax.process_index(),
        jax.process_count(),
        read_rows,
        spec.image_shape,
        logging.info,
        logging.warning,
    )


def prepare_streamed_splits(config: ml_collections.ConfigDict, splits) -> None:
    """Every process writes its shard of each split above the threshold, then all wait.

    Call it on all processes before anything reads those splits (`load_split` on several
    processes only opens the shards); a no-op for splits held in memory.
    """
    for split in dict.fromkeys(splits):
        spec = stream_spec(config, split)
        if spec is not None:
            _write_own_shard(config, spec)
    barrier("image-store")


def _stored_split(config: ml_collections.ConfigDict, spec: StoreSpec):
    from semantica_jax.data import image_store

    if jax.process_count() == 1:
        _write_own_shard(config, spec)  # on several processes: prepare_streamed_splits
    return image_store.open_store(spec.directory, spec.identity, spec.total, jax.process_count())


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Split `split` of `config.data.dataset` at the config's size, channels and max_examples.

    Splits above `data.stream_above_mb` come back as a `disk_array` row array (indexing it
    reads those rows from the image store), all others as a numpy array in memory.

    Returns:
      (images uint8 [N, S, S, C], labels int32 [N]; -1 where the dataset has no labels).
    """
    spec = stream_spec(config, split)
    if spec is not None:
        stored = _stored_split(config, spec)
        return stored.images, stored.labels
    # Imported here: it pulls in TensorFlow Datasets, which tools that only encode avoid.
    from semantica_jax.data import folder, mnist

    data = config.data
    reader = folder if folder.is_folder_dataset(data.dataset) else mnist
    return reader.load_split(
        data.dataset,
        split,
        data_dir(config),
        data.image_size,
        data.channels,
        max_examples=data.max_examples,
    )


# --- the frozen encoder ------------------------------------------------------------------


def encoder_dir(config: ml_collections.ConfigDict) -> str:
    """Where the cached encoder of `config` lives: `<cache_dir>/encoder/<encoder key>`."""
    key = encoder_bundle.encoder_key(config)
    return os.path.join(os.path.abspath(config.cache_dir), "encoder", key)


def load_or_train_encoder(
    config: ml_collections.ConfigDict, log: Log = logging.info
) -> EncoderBundle:
    """The frozen encoder for `config`: an explicit checkpoint, the cached one, or a new one.

    `config.encoder.pretrained` non-empty: load that DINOv2 checkpoint (nothing trained).
    `config.encoder.checkpoint` non-empty: load it (architecture must match the config).
    Otherwise look in `encoder_dir(config)`; train there if missing.
    """
    from semantica_jax.encoder import train as encoder_train

    if config.encoder.get("pretrained"):
        log(f"encoder: pretrained DINOv2 from {config.encoder.pretrained}")
        return encoder_bundle.pretrained_bundle(config)
    vit = ViTConfig.from_config(config.encoder, config.data.image_size, config.data.channels)
    if config.encoder.checkpoint:
        return encoder_bundle.load_encoder(config.encoder.checkpoint, expected=vit)
    directory = encoder_dir(config)
    if os.path.isfile(os.path.join(directory, "encoder.json")):
        try:
            bundle = encoder_bundle.load_encoder(directory, expected=vit)
            log(f"encoder: reusing cached {directory}")
            return bundle
        except encoder_bundle.DamagedEncoderError as err:
            aside = f"{directory}.corrupt-{os.getpid()}"
            logging.warning(
                "cached encoder is damaged (%s); moved to %s, training it again", err, aside
            )
            os.replace(directory, aside)
    log(f"encoder: no cached encoder for this config; training into {directory}")
    images, labels = encoder_training_images(config, *load_split(config, config.data.train_split))
    try:
        return encoder_train.train_and_save(config, directory, images, labels, log=log)
    except FileExistsError:
        # Another process finished the same encoder first: use theirs.
        return encoder_bundle.load_encoder(directory, expected=vit)


def encoder_training_images(
    config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The images the encoder trains on, in memory: all, or `encoder.max_train_images` of
    them drawn without replacement (seeded; rows kept in split order).

    Raises:
      UserError: the split is on disk (above data.stream_above_mb) and no cap is set.
    """
    from semantica_jax.errors import UserError

    cap = int(config.encoder.get("max_train_images", 0))
    if 0 < cap < len(images):
        rng = np.random.default_rng((int(config.seed), _ENCODER_SUBSET_STREAM))
        rows = np.sort(rng.choice(len(images), cap, replace=False))
        return np.asarray(images[rows]), labels[rows]
    if cap > 0:
        return np.asarray(images), labels  # the user allows all of them in memory
    if not isinstance(images, np.ndarray):
        raise UserError(
            f"the train split ({len(images)} images) is streamed from disk and the encoder "
            "trains in memory: set config.encoder.max_train_images (e.g. 100000) to train it "
            "on a random subset"
        )
    return images, labels


def encoder_token_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(T, D) of the encoder tokens `config` conditions on, without training anything."""
    if config.encoder.get("pretrained"):
        arch = encoder_bundle.pretrained_bundle(config).model.config
        return arch.num_tokens, arch.width
    vit = ViTConfig.from_config(config.encoder, config.data.image_size, config.data.channels)
    return vit.num_tokens, vit.width


def load_encoder(config: ml_collections.ConfigDict) -> EncoderBundle:
    """The frozen encoder for `config`, trained once into the cache dir if absent."""
    return once_per_machine(load_or_train_encoder, config)


def install_encoder(source: str, config: ml_collections.ConfigDict, log: Log) -> None:
    """Copies a trained encoder dir into `encoder_dir(config)` if that is still empty."""
    target = encoder_dir(config)
    if os.path.exists(target):
        return
    tmp = ""
    try:
        tmp = atomic_files.temp_dir_beside(target)
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if atomic_files.publish_dir(tmp, target):
            log(f"encoder: installed in cache {target}")
    except OSError:
        pass  # another process installed it first
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# --- embeddings --------------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def embeddings_dir(config: ml_collections.ConfigDict, bundle: EncoderBundle, split: str) -> str:
    """`<cache_dir>/embeddings/<encoder key>/<dataset>-<split>[-first<n>]`."""
    data = config.data
    return os.path.join(
        os.path.abspath(config.cache_dir),
        "embeddings",
        bundle.key or "unkeyed",
        # max_examples in the name: a smoke run on a slice must not evict the full cache.
        f"{_slug(data.dataset)}-{_slug(split)}"
        + (f"-first{int(data.max_examples)}" if data.max_examples else ""),
    )


def embedding_cache(
    config: ml_collections.ConfigDict,
    bundle: EncoderBundle,
    split: str,
    *,
    images: np.ndarray | None = None,
    log: Log = logging.info,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and CLS of every image of `split`, from the cache or computed into it.

    Args:
      config: the full config (data section, cache_dir).
      bundle: the frozen encoder.
      split: TFDS split name.
      images: the split's images if the caller has them; None reads them (`load_split`).
      log: progress sink.

    Returns:
      (tokens float16 [N, T, D] read-only memmap, cls float32 [N, D]).
    """
    if images is None:
        images, _ = load_split(config, split)
    data = config.data
    identity = embeddings.cache_identity(
        bundle, images, dataset=data.dataset, split=split, max_examples=data.max_examples
    )
    directory = embeddings_dir(config, bundle, split)
    return embeddings.cached_embeddings(directory, bundle, images, identity, log=log)


def _embedded_split(config, bundle: EncoderBundle, split: str) -> EmbeddedSplit:
    images, labels = load_split(config, split)
    tokens, cls = embedding_cache(config, bundle, split, images=images)
    return EmbeddedSplit(images, np.asarray(labels, np.int32), tokens, np.asarray(cls))


def _streamed_embedded_split(config, bundle: EncoderBundle, spec: StoreSpec) -> EmbeddedSplit:
    """Each process embeds its own shard into `rows-*/` (an ordinary cache), then all read
    all shards: tokens on disk (DiskArray per shard), CLS in memory."""
    from semantica_jax.data import disk_array, image_store

    stored = _stored_split(config, spec)
    root = embeddings_dir(config, bundle, spec.split)

    def shard(i: int) -> tuple[str, dict]:
        rows, fingerprint = stored.shards[i]
        identity = embeddings.cache_identity(
            bundle,
            stored.parts[i],
            dataset=config.data.dataset,
            split=f"{spec.split}[{rows[0]}:{rows[1]}]",
            max_examples=config.data.max_examples,
            fingerprint=fingerprint,
        )
        return os.path.join(root, image_store.shard_name(rows, spec.total)), identity

    own = jax.process_index()
    directory, identity = shard(own)
    _, own_cls = embeddings.cached_embeddings(directory, bundle, stored.parts[own], identity)
    barrier(f"embeddings:{spec.split}")
    token_paths, cls = [], []
    for i in range(len(stored.parts)):
        directory, identity = shard(i)
        if i == own:
            token_paths.append(os.path.join(directory, "tokens.npy"))
            cls.append(own_cls)
        else:
            path, shard_cls = embeddings.verified_embeddings(directory, identity)
            token_paths.append(path)
            cls.append(shard_cls)
    tokens = disk_array.open_rows(token_paths)
    return EmbeddedSplit(stored.images, stored.labels, tokens, np.concatenate(cls))


def embedded_split(config, bundle: EncoderBundle, split: str) -> EmbeddedSplit:
    """A split with its embeddings, computed once per (encoder, dataset, split) and cached.

    On several processes all must call it: a split above `data.stream_above_mb` is embedded
    shard by shard, each process its own (after `prepare_streamed_splits`).
    """
    spec = stream_spec(config, split)
    if spec is not None:
        return _streamed_embedded_split(config, bundle, spec)
    return once_per_machine(_embedded_split, config, bundle, split)


# --- the FID feature network -------------------------------------------------------------


def feature_net(config, settings=None):
    """The MNIST-FID feature network for a config: from the cache, or trained and cached.

    Args:
      config: full config; uses cache_dir, data.{dataset, image_size, channels,
        train_split, eval_split, max_examples} and eval.feature_net_steps.
      settings: overrides `features.FeatureNetSettings.from_config(config)` (tests).

    Returns:
      A `features.FeatureNetBundle` whose `path` is `<cache_dir>/feature_net/<key>`.
    """
    from semantica_jax.metrics import features

    settings = settings or features.FeatureNetSettings.from_config(config)
    cfg_data = config.data
    data = {
        "dataset": cfg_data.dataset,
        "train_split": cfg_data.train_split,
        "eval_split": cfg_data.eval_split,
        "image_size": int(cfg_data.image_size),
        "channels": int(cfg_data.channels),
        "max_examples": int(cfg_data.max_examples),
    }
    path = os.path.join(config.cache_dir, "feature_net", features.feature_net_key(settings, data))
    if os.path.isfile(os.path.join(path, "meta.json")):
        logging.info("feature net: cached at %s", path)
        return features.restore_feature_net(path)
    logging.info("feature net: training %s into %s", settings, path)
    train_images, train_labels = load_split(config, cfg_data.train_split)
    test_images, test_labels = load_split(config, cfg_data.eval_split)
    bundle = features.train_and_score(
        train_images, train_labels, test_images, test_labels, settings
    )
    if bundle.test_accuracy < 0.99:
        logging.warning(
            "feature net test accuracy %.4f < 0.99: FID on this network is a weak yardstick "
            "(fine for tiny smoke configs; raise eval.feature_net_steps for real runs).",
            bundle.test_accuracy,
        )
    features.save_feature_net(path, bundle, train_images.shape[1:], data)
    return features.restore_feature_net(path)
