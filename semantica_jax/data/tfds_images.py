"""Reading TFDS image datasets as uint8 numpy arrays (into memory or streamed), offline.

Every read goes through TFDS with an explicit `data_dir` and no download: the machines
that run this code cannot reach the internet, so a dataset must already be prepared
there (`tfds build NAME --data_dir=DIR`, or `semantica_jax.data.mnist.prepare_mnist`).

TensorFlow is imported lazily (it costs seconds at import) and, when it is, hidden from
accelerators: JAX owns the GPU/TPU, TF only decodes images on the host.
"""

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from types import ModuleType

import numpy as np

from semantica_jax.utils import progress

# Examples per tf.data batch when reading a split.
_READ_BATCH = 4096


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not prepared in the data_dir it was looked for in."""


def import_tf() -> ModuleType:
    """Imports TensorFlow quietly with accelerators hidden from it; returns the module.

    TF would otherwise grab GPU memory that JAX needs. `set_visible_devices` only works
    before TF initialises its devices; if that already happened elsewhere, TF's device
    list is left as it is.
    """
    if "tensorflow" not in sys.modules:
        # Silences TF's C++ INFO/WARNING start-up chatter; must be set before import.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = importlib.import_module("tensorflow")
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # devices already initialised by an earlier TF user in this process
    return tf


def import_tfds() -> ModuleType:
    """Imports tensorflow_datasets (after `import_tf`, so TF starts without GPUs)."""
    import_tf()
    if importlib.util.find_spec("importlib_resources") is None:
        # tfds 4.9.10 uses the `importlib_resources` backport on every Python although it
        # declares it only for Python < 3.9 (tensorflow/datasets#11212); preparing any
        # dataset then fails with ModuleNotFoundError. On 3.9+ the backport's API is the
        # standard library's `importlib.resources`, so alias it when the backport is absent.
        stdlib_resources = importlib.import_module("importlib.resources")
        sys.modules.setdefault("importlib_resources", stdlib_resources)
    return importlib.import_module("tensorflow_datasets")


def resize_center_crop(image, image_size: int, channels: int):
    """Converts channels, resizes the shorter side to `image_size`, crops the centre.

    Args:
      image: uint8 [H, W, C] (numpy array or tf.Tensor), C in {1, 3, 4}; 4 = RGBA, the
        alpha channel is dropped.
      image_size: S, side of the square output.
      channels: 1 (grey, ITU-R 601 luma) or 3 (RGB; grey is repeated).

    Returns:
      uint8 tf.Tensor [S, S, channels]. Resizing is bilinear with antialiasing, so
      downscaling averages over the source pixels instead of aliasing.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    return _resize_center_crop(import_tf(), image, image_size, channels)


def _resize_center_crop(tf: ModuleType, image, image_size: int, channels: int):
    """`resize_center_crop` with TF passed in: traceable inside tf.data without imports."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(f"expected one image [H, W, C], got shape {image.shape}")
    x = tf.cast(image, tf.float32)
    x = _convert_channels(tf, x, channels)
    height = tf.cast(tf.shape(x)[0], tf.float32)
    width = tf.cast(tf.shape(x)[1], tf.float32)
    scale = image_size / tf.minimum(height, width)
    # max(.., S) guards against rounding the shorter side to S - 1.
    new_h = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), image_size)
    new_w = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), image_size)
    x = tf.image.resize(x, [new_h, new_w], method="bilinear", antialias=True)
    top = (new_h - image_size) // 2
    left = (new_w - image_size) // 2
    x = x[top : top + image_size, left : left + image_size, :]
    x = tf.ensure_shape(x, [image_size, image_size, channels])
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _convert_channels(tf: ModuleType, x, channels: int):
    """float32 [H, W, C] with C in {1, 3, 4} -> float32 [H, W, channels]."""
    in_channels = x.shape[-1]
    if in_channels not in (1, 3, 4):
        raise ValueError(f"images must have 1, 3 or 4 channels, got {in_channels}")
    if in_channels == 4:
        x = x[..., :3]
        in_channels = 3
    if in_channels == channels:
        return x
    if channels == 1:
        return tf.image.rgb_to_grayscale(x)
    return tf.tile(x, [1, 1, 3])


def split_with_limit(split: str, max_examples: int) -> str:
    """'train', 5 -> 'train[:5]'; max_examples = 0 keeps the split whole.

    A split that already carries a TFDS slice ('train[10:20]') cannot take a second one.
    """
    if max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 (0 = whole split), got {max_examples}")
    if max_examples == 0:
        return split
    if "[" in split or "+" in split:
        raise ValueError(
            f"split {split!r} is already sliced or combined; pass max_examples=0 and put the "
            f"limit into the split itself (e.g. 'train[:{max_examples}]')"
        )
    return f"{split}[:{max_examples}]"


def prepared_builder(dataset: str, data_dir: str):
    """Returns the TFDS builder of `dataset` in `data_dir`, which must be prepared.

    Raises:
      DatasetNotPreparedError: the dataset is not prepared there (and cannot be
        downloaded here); the message says how to prepare it.
    """
    tfds = import_tfds()
    how = (
        f"prepare it on a machine that has its files, e.g. `tfds build {dataset} "
        f"--data_dir={data_dir}` (with --manual_dir=... for datasets that need manual "
        f"downloads, such as imagenet2012), then copy {data_dir}/{dataset.split('/')[0]} here "
        f"or point config.data.data_dir at a prepared TFDS data dir"
    )
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetNotPreparedError(
            f"TFDS dataset {dataset!r} is neither known to tensorflow_datasets nor prepared "
            f"in data_dir={data_dir!r}; check the name, or {how}. ({e})"
        ) from e
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"TFDS dataset {dataset!r} is not prepared in data_dir={data_dir!r} (looked for "
            f"{builder.data_dir}); nothing is downloaded at run time, so {how}."
        )
    return builder


def _limited_split(builder, split: str, max_examples: int) -> tuple[str, int]:
    """(the split string with the limit applied, its number of examples)."""
    if max_examples and "[" not in split and "+" not in split:
        # A limit above the split's size keeps the whole split (a small user folder).
        max_examples = min(max_examples, builder.info.splits[split].num_examples)
    split = split_with_limit(split, max_examples)
    return split, builder.info.splits[split].num_examples


def split_size(dataset: str, split: str, data_dir: str, max_examples: int = 0) -> int:
    """Examples `read_tfds_images` would yield for this split and limit (reads no data)."""
    return _limited_split(prepared_builder(dataset, data_dir), split, max_examples)[1]


def read_tfds_images(
    dataset: str,
    split: str,
    data_dir: str,
    image_size: int,
    channels: int,
    max_examples: int = 0,
    rows: tuple[int, int] | None = None,
) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """Streams a prepared TFDS image split in batches, square and with `channels`.

    Images whose stored shape is already [S, S, channels] are passed through untouched;
    others go through `resize_center_crop`. Datasets without a 'label' feature
    (e.g. lsun) get label -1 everywhere. Memory: one read batch at a time.

    Args:
      dataset: TFDS name, e.g. 'mnist', 'imagenet2012', 'lsun/church_outdoor'.
      split: TFDS split, e.g. 'train', 'test', 'validation'.
      data_dir: the TFDS data dir that holds the prepared dataset.
      image_size: S.
      channels: 1 or 3.
      max_examples: >0 keeps the first n examples of the split; 0 = whole split.
      rows: (start, stop) reads only those examples of the (limited) split: one process's
        shard. TFDS reads only the files that hold them when the split is a plain name.

    Returns:
      (number of examples the iterator yields, iterator of (images uint8 [b, S, S, C],
      labels int32 [b]) in split order).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    tf = import_tf()
    tfds = import_tfds()
    builder = prepared_builder(dataset, data_dir)
    features = builder.info.features
    if "image" not in features:
        raise ValueError(
            f"TFDS dataset {dataset!r} has no 'image' feature (features: {list(features)}); "
            "only image datasets can be loaded"
        )
    has_label = "label" in features
    stored_shape = tuple(features["image"].shape)
    needs_resize = stored_shape != (image_size, image_size, channels)

    plain = "[" not in split and "+" not in split
    split, total = _limited_split(builder, split, max_examples)
    start, stop = (0, total) if rows is None else rows
    if not 0 <= start <= stop <= total:
        raise ValueError(f"rows {rows} outside the {total} examples of {dataset}:{split}")
    if start == stop:  # an empty shard (more processes than examples): TFDS refuses [a:a]
        return 0, iter(())
    if rows is not None and plain:
        split = f"{split.split('[')[0]}[{start}:{stop}]"  # TFDS opens only those files
    # One file after the other: TFDS's default for a shuffled dataset interleaves 16 files
    # in blocks of 16 examples, so a slice's order would differ from the whole split's.
    read_config = tfds.ReadConfig(interleave_cycle_length=1)
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    if rows is not None and not plain:
        ds = ds.skip(start).take(stop - start)  # a sliced or combined split: no nesting

    # Plain TF ops with Python-static branches: AutoGraph has nothing to convert.
    @tf.autograph.experimental.do_not_convert
    def to_pair(example):
        image = example["image"]
        if needs_resize:
            image = _resize_center_crop(tf, image, image_size, channels)
        label = tf.cast(example["label"], tf.int32) if has_label else tf.constant(-1, tf.int32)
        return image, label

    ds = ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE).batch(_READ_BATCH)
    count = stop - start
    report = progress.loop(
        -(-count // _READ_BATCH),
        f"reading {dataset}:{split}: {count} images in batches of {_READ_BATCH}",
    )

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        done = 0
        for step, (image_batch, label_batch) in enumerate(tfds.as_numpy(ds), 1):
            done += len(label_batch)
            if done > count:
                raise ValueError(
                    f"{dataset}:{split} holds more examples than its dataset_info.json records "
                    f"({total}); the prepared data is damaged: delete it to prepare it again"
                )
            yield image_batch, label_batch
            report(step)
        if done < count:
            raise ValueError(
                f"{dataset}:{split} holds fewer examples ({start + done} read up to row "
                f"{stop}) than its dataset_info.json records ({total}); the prepared data is "
                "damaged: delete it to prepare it again"
            )

    return count, batches()


def load_tfds_images(
    dataset: str,
    split: str,
    data_dir: str,
    image_size: int,
    channels: int,
    max_examples: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a prepared TFDS image split into memory (see `read_tfds_images` for the args).

    Returns:
      (images uint8 [N, S, S, channels], labels int32 [N]).
    """
    total, batches = read_tfds_images(dataset, split, data_dir, image_size, channels, max_examples)
    # Filled in place: peak memory is the split once (plus one read batch), not twice as
    # with a list of batches and a concatenation.
    images = np.empty((total, image_size, image_size, channels), np.uint8)
    labels = np.empty((total,), np.int32)
    done = 0
    for image_batch, label_batch in batches:
        images[done : done + len(label_batch)] = image_batch
        labels[done : done + len(label_batch)] = label_batch
        done += len(label_batch)
    return images[:done], labels[:done]


def store_image_dataset(
    name: str,
    splits: dict[str, dict[str, np.ndarray]],
    data_dir: str,
    *,
    num_classes: int,
    version: str = "1.0.0",
    description: str = "",
    shuffled: bool = False,
    num_shards: int | None = None,
) -> None:
    """Writes in-memory images as a real TFDS dataset that `tfds.load(name, data_dir=...)` reads.

    Args:
      name: TFDS dataset name.
      splits: split name -> {"image": uint8 [N,H,W,C], "label": int [N], and any further
        int arrays [N] (stored as int64 scalar features, e.g. provenance)}.
      data_dir: TFDS data dir (`<data_dir>/<name>/<version>` is written).
      num_classes: labels are a ClassLabel of this many classes.
      version: dataset version.
      description: stored in dataset_info.
      shuffled: let TFDS shuffle the examples into its files, as most published datasets
        are prepared (default: file order = source order, so 'train[:n]' is the first n).
      num_shards: files per split (None: TFDS decides by size).
    """
    tf = import_tf()
    tfds = import_tfds()
    first = next(iter(splits.values()))
    extra = [k for k in first if k not in ("image", "label")]
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=tuple(first["image"].shape[1:])),
            "label": tfds.features.ClassLabel(num_classes=num_classes),
            **{k: tfds.features.Scalar(dtype=np.int64) for k in extra},
        }
    )

    def encode(example):
        # PNG-encode in tf.data's parallel C++ threads, with the op and settings the Image
        # feature would run one example at a time from Python; it stores bytes as is.
        return {**example, "image": tf.io.encode_png(example["image"])}

    split_datasets = {
        split: tf.data.Dataset.from_tensor_slices(
            {
                "image": arrays["image"],
                "label": np.asarray(arrays["label"], np.int64),
                **{k: np.asarray(arrays[k], np.int64) for k in extra},
            }
        ).map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        for split, arrays in splits.items()
    }
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version=version,
        features=features,
        split_datasets=split_datasets,
        data_dir=data_dir,
        description=description,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=num_shards),
        disable_shuffling=not shuffled,
    )
