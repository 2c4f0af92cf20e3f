"""A split too large for memory, streamed once from TFDS to disk in per-process shards.

Splits whose uint8 images exceed `config.data.stream_above_mb` are not held in memory
(`assets.load_split` decides). Process p of P streams only rows [p*N/P, (p+1)*N/P) of the
split from TFDS (`tfds_images.read_tfds_images(rows=...)`) and writes them as one shard:

  <store dir>/rows-<start>-<stop>-of-<N>/images.npy    uint8 [stop-start, S, S, C]
                                          labels.npy    int32 [stop-start]
                                          manifest.json identity, rows, images_hash

Each shard is built in a temp dir and renamed into place (a crash leaves no partial shard).
Once every process has written its shard (the caller synchronises), every process opens
all of them as one row array (`disk_array.RowConcat` of `DiskArray`s, read on demand), so a
training batch can pair any two images of the split; nothing but the labels is read into
memory. The directory must be on a file system all processes see (as the cache dir is).

A shard is reused when its manifest matches the identity it is asked for and its files have
the promised sizes; otherwise it is rebuilt with one warning. Its content is not re-hashed
at open (that would read the whole split at every start); `images_hash`, computed while
building, fingerprints it for the embedding cache.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import uuid
from collections.abc import Callable, Iterator

import numpy as np

from semantica_jax.data import disk_array
from semantica_jax.utils import atomic_files

Log = Callable[[str], None]
ReadRows = Callable[[int, int], Iterator[tuple[np.ndarray, np.ndarray]]]

STORE_FORMAT = 1
_MANIFEST = "manifest.json"


def shard_rows(total: int, index: int, count: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `index` of `count` over `total` rows (sizes differ by <= 1)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need 0 <= index < count; got index={index}, count={count}")
    return total * index // count, total * (index + 1) // count


def shard_name(rows: tuple[int, int], total: int) -> str:
    """`rows-<start>-<stop>-of-<total>`, zero-padded so that names sort in row order."""
    return f"rows-{rows[0]:010d}-{rows[1]:010d}-of-{total:010d}"


@dataclasses.dataclass
class StoredSplit:
    """A split opened from its shards.

    images: uint8 [N, S, S, C] row array read on demand; labels: int32 [N] in memory;
    parts: each shard's images (DiskArray [n_i, S, S, C]); shards: (rows, images_hash) per
    shard, in row order.
    """

    images: disk_array.DiskArray | disk_array.RowConcat
    labels: np.ndarray
    parts: list[disk_array.DiskArray]
    shards: list[tuple[tuple[int, int], str]]


def _read_manifest(path: str) -> dict | None:
    return atomic_files.read_json(os.path.join(path, _MANIFEST))


def _problem(path: str, identity: dict, rows: tuple[int, int]) -> str:
    """Why the shard at `path` cannot be used ('' if it can)."""
    manifest = _read_manifest(path)
    if manifest is None:
        return "no readable manifest"
    if manifest.get("format") != STORE_FORMAT:
        return f"format {manifest.get('format')}, this version writes {STORE_FORMAT}"
    if manifest.get("identity") != identity or tuple(manifest.get("rows", ())) != rows:
        return f"built for {manifest.get('identity')} rows {manifest.get('rows')}"
    try:
        images = disk_array.DiskArray(os.path.join(path, "images.npy"))
        labels = np.load(os.path.join(path, "labels.npy"), mmap_mode="r")
    except (OSError, ValueError) as err:
        return f"unreadable ({err})"
    count = rows[1] - rows[0]
    if len(images) != count or labels.shape != (count,):
        return f"holds {len(images)} images and {labels.shape} labels, not {count}"
    return ""


def build_shard(
    path: str,
    identity: dict,
    rows: tuple[int, int],
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    image_shape: tuple[int, int, int],
) -> None:
    """Writes the images and labels of `batches` (rows `rows` of the split) as shard `path`.

    Args:
      path: the shard directory (replaced if present).
      identity: what the split is (dataset, split, size, ...); stored in the manifest.
      rows: (start, stop) of this shard.
      batches: (uint8 [b, S, S, C], int32 [b]) in row order, stop - start rows in all.
      image_shape: (S, S, C).
    """
    count = rows[1] - rows[0]
    tmp = atomic_files.temp_dir_beside(path)
    try:
        labels = np.empty((count,), np.int32)
        images_path = os.path.join(tmp, "images.npy")
        with disk_array.NpyWriter(images_path, (count, *image_shape), np.uint8) as writer:
            for image_batch, label_batch in batches:
                labels[writer.rows : writer.rows + len(label_batch)] = label_batch
                writer.write(image_batch)
        np.save(os.path.join(tmp, "labels.npy"), labels)
        manifest = {
            "format": STORE_FORMAT,
            "identity": identity,
            "rows": list(rows),
            "images_hash": disk_array.fingerprint(disk_array.DiskArray(images_path)),
        }
        atomic_files.write_json(os.path.join(tmp, _MANIFEST), manifest, sort_keys=True)
        if os.path.exists(path):
            aside = f"{path}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, aside)
            shutil.rmtree(aside, ignore_errors=True)
        atomic_files.publish_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_shard(
    directory: str,
    identity: dict,
    total: int,
    index: int,
    count: int,
    read_rows: ReadRows,
    image_shape: tuple[int, int, int],
    log: Log,
    warn: Log,
) -> None:
    """Builds shard `index` of `count` under `directory` unless a usable one is there.

    Args:
      directory: the store directory of this split.
      identity: see `build_shard`.
      total: N, rows of the split.
      index, count: this process's shard (process index, process count).
      read_rows: read_rows(start, stop) -> the (images, labels) batches of those rows.
      image_shape: (S, S, C).
      log, warn: progress; the one message when a shard is stale or damaged.
    """
    rows = shard_rows(total, index, count)
    path = os.path.join(directory, shard_name(rows, total))
    leftovers = glob.glob(os.path.join(directory, f".{os.path.basename(path)}.tmp-*"))
    if leftovers:  # not removed: another run may be writing it right now
        warn(
            f"image store: {len(leftovers)} unfinished copies of this shard are left by "
            f"interrupted runs ({', '.join(sorted(leftovers))}); delete them when no other "
            "run is writing this store"
        )
    if os.path.exists(path):
        problem = _problem(path, identity, rows)
        if not problem:
            return
        warn(f"image store: shard {path} cannot be used ({problem}); rebuilding it")
    else:
        log(f"image store: streaming rows {rows[0]}..{rows[1]} of {total} into {path}")
    build_shard(path, identity, rows, read_rows(*rows), image_shape)


def open_store(directory: str, identity: dict, total: int, count: int) -> StoredSplit:
    """Opens the `count` shards of the split under `directory` as one split.

    Raises:
      FileNotFoundError: a shard is missing or unusable (named, with the reason).
    """
    parts, labels, shards = [], [], []
    for index in range(count):
        rows = shard_rows(total, index, count)
        path = os.path.join(directory, shard_name(rows, total))
        problem = _problem(path, identity, rows)
        if problem:
            raise FileNotFoundError(
                f"image store shard {path} is missing or unusable ({problem}); it is written "
                f"by process {index} of {count} before training starts"
            )
        parts.append(disk_array.DiskArray(os.path.join(path, "images.npy")))
        labels.append(np.load(os.path.join(path, "labels.npy")))
        shards.append((rows, _read_manifest(path)["images_hash"]))
    images = parts[0] if len(parts) == 1 else disk_array.RowConcat(parts)
    return StoredSplit(images, np.concatenate(labels).astype(np.int32), parts, shards)
