"""Embedding cache: frozen-encoder tokens and CLS of every image of a split, computed once.

Layout (the directory is chosen by `assets.embedded_split`:
`<cache_dir>/embeddings/<encoder key>/<dataset>-<split>[-first<n>]/`), holding
  * `tokens.npy`: float16 [N, T, D] (read back memory-mapped: 60k MNIST images are ~380 MB),
  * `cls.npy`: float32 [N, D] (small, and the cosine filters want full precision),
  * `manifest.json`: what the arrays were computed from: encoder key, a hash of the actual
    encoder parameters, dataset, split, max_examples, count, a hash of the image bytes, and
    the shapes, dtypes and sha256 of each array file.
A cache is reused only if every identity field matches and the files have the recorded
shapes and checksums; otherwise it is reported as stale or damaged (naming the fields or
the file, one warning) and rebuilt, never used silently. Checking the sha256 of the
~380 MB of MNIST tokens takes about a second per job start. A build is written
into a temp dir next to the final one and renamed into place, so a crash leaves no partial
cache (a leftover `.tmp-*` dir is ignored and can be deleted).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable

import numpy as np
from absl import logging

from semantica_jax.data import disk_array
from semantica_jax.encoder.bundle import EncoderBundle
from semantica_jax.encoder.encode import effective_batch, iter_encode
from semantica_jax.utils import atomic_files, progress

Log = Callable[[str], None]

CACHE_FORMAT = 2  # 2: per-file sha256 in the manifest
_MANIFEST = "manifest.json"


def images_hash(images: np.ndarray) -> str:
    """sha256 of the image bytes, shape and dtype (hex, 16 chars): the data's fingerprint.

    Reads `images` in chunks, so a split on disk (`disk_array`) is never loaded whole.
    """
    return disk_array.fingerprint(images)


def cache_identity(
    bundle: EncoderBundle,
    images: np.ndarray,
    *,
    dataset: str,
    split: str,
    max_examples: int,
    fingerprint: str = "",
) -> dict:
    """Everything the cached arrays depend on; any difference makes a cache stale.

    `fingerprint`: the images' `images_hash` if already known (an image-store shard records
    it), so that it is not recomputed by reading them all.
    """
    return {
        "format": CACHE_FORMAT,
        "encoder_key": bundle.key,
        "params_hash": bundle.params_hash,
        "dataset": dataset,
        "split": split,
        "max_examples": int(max_examples),
        "count": int(len(images)),
        "images_hash": fingerprint or images_hash(images),
    }


def file_sha256(path: str) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_manifest(directory: str) -> dict | None:
    return atomic_files.read_json(os.path.join(directory, _MANIFEST))


def _stale_reasons(directory: str, manifest: dict, identity: dict) -> list[str]:
    """Why the cache in `directory` cannot be reused (empty list: it can)."""
    reasons = [
        f"{k}: cached {manifest.get('identity', {}).get(k)!r} != wanted {v!r}"
        for k, v in identity.items()
        if manifest.get("identity", {}).get(k) != v
    ]
    if reasons:
        return reasons
    for name in ("tokens", "cls"):
        try:
            array = np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r")
        except (OSError, ValueError) as err:
            return [f"{name}.npy unreadable ({err})"]
        want = manifest.get("arrays", {}).get(name, {})
        if list(array.shape) != want.get("shape") or str(array.dtype) != want.get("dtype"):
            return [f"{name}.npy is {array.dtype} {array.shape}, manifest says {want}"]
        path = os.path.join(directory, f"{name}.npy")
        if _unchanged_since_build(path, want):
            continue  # hashing a split's tokens at every start would cost minutes at scale
        if file_sha256(path) != want.get("sha256"):
            return [f"{name}.npy does not match its recorded sha256 (damaged)"]
    return []


def _file_stamp(path: str) -> dict[str, int]:
    """Size and modification time (ns) of a file: what a rewrite or truncation changes."""
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


# Files above this size are trusted when size and mtime are as recorded at build time. The
# stamp is taken after hashing, seconds after the last write at this size, so any later
# write has a later mtime even on file systems with coarse timestamps.
TRUST_STAMP_ABOVE_BYTES = 1 << 30


def _unchanged_since_build(path: str, recorded: dict) -> bool:
    """True for a large file with the size and mtime recorded right after it was hashed (a
    copy, a rewrite or a truncation changes them; then the sha256 decides)."""
    stamp = recorded.get("stamp")
    if not stamp or stamp["size"] <= TRUST_STAMP_ABOVE_BYTES:
        return False
    return _file_stamp(path) == stamp


def _build(
    directory: str,
    bundle: EncoderBundle,
    images: np.ndarray,
    identity: dict,
    batch_size: int,
    log: Log,
) -> None:
    """Encodes all images into a temp dir, then renames it to `directory` (replacing it)."""
    parent, name = os.path.split(directory)
    tmp = atomic_files.temp_dir_beside(directory)
    try:
        num = len(images)
        num_tokens = bundle.model.config.num_tokens
        width = bundle.model.config.width
        cls = np.zeros((num, width), np.float32)
        batch = effective_batch(num, batch_size)
        report = progress.loop(
            -(-num // batch), f"embeddings: {num} images in batches of {batch}", log=log
        )
        finite = True
        # Written in batches (not through a memmap), so memory stays one batch however
        # large the split.
        tokens_path = os.path.join(tmp, "tokens.npy")
        with disk_array.NpyWriter(tokens_path, (num, num_tokens, width), np.float16) as tokens:
            batches = iter_encode(bundle, images, batch_size, with_tokens=True)
            for step, (start, tok, c) in enumerate(batches, 1):
                tok = tok.astype(np.float16)
                finite = finite and bool(np.isfinite(tok).all() and np.isfinite(c).all())
                tokens.write(tok)
                cls[start : start + len(c)] = c
                report(step)
        if not finite:
            raise ValueError(
                f"the encoder {identity['encoder_key']} gave non-finite embeddings; retrain it "
                "(delete its directory under <cache_dir>/encoder)"
            )
        np.save(os.path.join(tmp, "cls.npy"), cls)
        shapes = {"tokens": ([num, num_tokens, width], "float16"), "cls": ([num, width], "float32")}
        arrays = {}
        for n, (shape, dtype) in shapes.items():
            path = os.path.join(tmp, f"{n}.npy")  # rename keeps size and mtime
            arrays[n] = {
                "shape": shape,
                "dtype": dtype,
                "sha256": file_sha256(path),
                "stamp": _file_stamp(path),
            }
        manifest = {
            "identity": identity,
            "arrays": arrays,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_files.write_json(os.path.join(tmp, _MANIFEST), manifest, sort_keys=True)
        old = None
        if os.path.exists(directory):
            # Move the stale cache aside first: rename cannot replace a non-empty directory.
            old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(directory, old)
        os.rename(tmp, directory)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def cached_embeddings(
    directory: str,
    bundle: EncoderBundle,
    images: np.ndarray,
    identity: dict,
    *,
    batch_size: int = 256,
    log: Log = logging.info,
    warn: Log = logging.warning,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns the embeddings of `images` from `directory`, (re)building it if needed.

    Args:
      directory: cache directory of this (encoder, dataset, split).
      bundle: the encoder.
      images: uint8 [N, H, W, C] (or float in [-1, 1]).
      identity: from `cache_identity`; compared field by field with the cached manifest.
      batch_size: encoding batch.
      log: progress messages.
      warn: the one message when a cache is stale or damaged and is rebuilt.

    Returns:
      (tokens float16 [N, T, D] read-only memmap, cls float32 [N, D]).
    """
    directory = os.path.abspath(directory)
    manifest = _read_manifest(directory)
    if manifest is not None:
        reasons = _stale_reasons(directory, manifest, identity)
        if not reasons:
            return _open(directory)
        warn(f"embeddings: stale or damaged cache {directory} ({'; '.join(reasons)}); rebuilding")
    elif os.path.exists(directory):
        warn(f"embeddings: {directory} has no readable manifest; rebuilding")
    else:
        log(f"embeddings: computing {len(images)} embeddings into {directory}")
    _build(directory, bundle, images, identity, batch_size, log)
    return _open(directory)


def verified_embeddings(directory: str, identity: dict) -> tuple[str, np.ndarray]:
    """A cache another process built: (path of tokens.npy, cls float32 [N, D]), checked.

    Raises:
      ValueError: it is missing, stale or damaged (the reasons are named).
    """
    manifest = _read_manifest(directory)
    reasons = (
        ["no readable manifest"]
        if manifest is None
        else _stale_reasons(directory, manifest, identity)
    )
    if reasons:
        raise ValueError(
            f"embedding cache {directory} cannot be used: {'; '.join(reasons)}; delete it and "
            "start again (the process that owns it rebuilds it)"
        )
    return os.path.join(directory, "tokens.npy"), np.load(os.path.join(directory, "cls.npy"))


def _open(directory: str) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.load(os.path.join(directory, "tokens.npy"), mmap_mode="r")
    cls = np.load(os.path.join(directory, "cls.npy"))
    return tokens, cls
