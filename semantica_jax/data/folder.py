"""A directory of your own images as a dataset: each sub-folder is an episode.

`config.data.dataset = "folder:PATH"` reads

  PATH/<episode>/<image>     e.g. PATH/page_0001/a.jpg, PATH/page_0001/b.png, ...

and converts it ONCE, at the config's image size and channels, into a real TFDS dataset in
the data dir (`<data_dir>/folder_<fingerprint>/1.0.0`, written in a temporary directory and
renamed into place, like MNIST's preparation), with one split `train`: `image` and `label` =
the episode (sub-folder) index, in sorted folder order; `folder_<fingerprint>.json` beside it
names the episodes and counts what was skipped. The fingerprint hashes every file's relative
path, size and modification time plus the size and channels, so an edited folder is
converted again and never read stale. What a folder may hold, and what happens to it:

  * images Pillow reads (PNG, JPEG, BMP, GIF, WebP, TIFF), of any size and colour mode:
    converted (transparency composited on black, grey or RGB as the config asks; resized so
    the shorter side fits, antialiased, and centre-cropped to a square);
  * a file directly in PATH (outside any sub-folder): belongs to no episode, skipped, and
    counted in one warning;
  * an unreadable or non-image file: skipped, counted in one warning naming the first few;
  * a sub-folder with one image: kept (the image is still data), but it gives no pairs;
    counted in one warning;
  * PATH missing, not a directory, without sub-folders or without one readable image: one
    `error:` line naming PATH.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from semantica_jax.errors import UserError
from semantica_jax.utils import atomic_files

PREFIX = "folder:"
VERSION = "1.0.0"
SPLIT = "train"
# How many skipped file names a warning quotes.
_NAMES_SHOWN = 3


def is_folder_dataset(dataset: str) -> bool:
    return str(dataset).startswith(PREFIX)


def folder_path(dataset: str) -> str:
    """The directory of a `folder:PATH` dataset name (absolute)."""
    path = str(dataset)[len(PREFIX) :]
    if not path:
        raise UserError("data.dataset=folder: needs a path: folder:/path/to/images")
    return os.path.abspath(os.path.expanduser(path))


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What a folder holds.

    Attributes:
      root: the folder.
      episodes: sub-folder names, sorted (episode i = episodes[i]).
      files: (relative path, episode index) of every file inside a sub-folder, sorted.
      top_level: files directly in root (no episode).
    """

    root: str
    episodes: tuple[str, ...]
    files: tuple[tuple[str, int], ...]
    top_level: tuple[str, ...]


def scan(root: str) -> FolderScan:
    """Lists a folder's episodes and files (hidden entries ignored; sub-folders recursed)."""
    if not os.path.exists(root):
        raise UserError(f"data.dataset folder {root} does not exist; give a folder of images")
    if not os.path.isdir(root):
        raise UserError(f"data.dataset folder {root} is not a directory")
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    episodes = tuple(e for e in entries if os.path.isdir(os.path.join(root, e)))
    top_level = tuple(e for e in entries if os.path.isfile(os.path.join(root, e)))
    if not episodes:
        raise UserError(
            f"{root} has no sub-folders; each sub-folder is an episode (a group of related "
            "images): put the images in PATH/<episode>/"
        )
    files = []
    for index, name in enumerate(episodes):
        for directory, dirs, names in os.walk(os.path.join(root, name)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in sorted(n for n in names if not n.startswith(".")):
                files.append((os.path.relpath(os.path.join(directory, file), root), index))
    return FolderScan(root, episodes, tuple(files), top_level)


def fingerprint(listing: FolderScan, image_size: int, channels: int) -> str:
    """sha256 (hex, 16 chars) of relative paths, sizes, mtimes, image size and channels."""
    digest = hashlib.sha256(f"{VERSION}|{image_size}|{channels}".encode())
    for rel, index in listing.files:
        stat = os.stat(os.path.join(listing.root, rel))
        digest.update(f"|{rel}|{index}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def read_image(path: str, image_size: int, channels: int) -> np.ndarray | None:
    """uint8 [S, S, channels] of an image file, or None if Pillow cannot read it."""
    try:
        with Image.open(path) as image:
            image.load()
            image = image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    mode = "L" if channels == 1 else "RGB"
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = ImageOps.fit(image.convert(mode), (image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(image, np.uint8).reshape(image_size, image_size, channels)


def _warn_skipped(what: str, names: list[str], consequence: str) -> None:
    if names:
        shown = ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")
        logging.warning("%d %s (%s): %s", len(names), what, shown, consequence)


def convert(listing: FolderScan, image_size: int, channels: int) -> dict:
    """Reads every image of the folder: {'image' uint8 [N,S,S,C], 'label' int [N], report}."""
    images, labels, unreadable = [], [], []
    for rel, index in listing.files:
        image = read_image(os.path.join(listing.root, rel), image_size, channels)
        if image is None:
            unreadable.append(rel)
            continue
        images.append(image)
        labels.append(index)
    if not images:
        raise UserError(f"{listing.root} holds no readable image in its sub-folders")
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels, minlength=len(listing.episodes))
    single = [listing.episodes[i] for i in np.flatnonzero(counts == 1)]
    empty = [listing.episodes[i] for i in np.flatnonzero(counts == 0)]
    _warn_skipped(
        f"files at the top level of {listing.root}",
        list(listing.top_level),
        "they belong to no episode and were skipped",
    )
    _warn_skipped("unreadable or non-image files", unreadable, "skipped")
    _warn_skipped("episodes with a single image", single, "kept, but they give no pairs")
    _warn_skipped("episodes without a readable image", empty, "they add nothing")
    report = {
        "root": listing.root,
        "episodes": list(listing.episodes),
        "images": len(images),
        "images_per_episode": counts.tolist(),
        "skipped_top_level": list(listing.top_level),
        "skipped_unreadable": unreadable,
        "single_image_episodes": single,
    }
    return {"image": np.stack(images), "label": labels, "report": report}


def prepare(dataset: str, data_dir: str, image_size: int, channels: int) -> str:
    """Converts a `folder:PATH` dataset into TFDS in `data_dir` once; returns its TFDS name.

    Atomic: built in a temporary directory inside data_dir and renamed into place, so a
    crash never leaves a dataset that looks prepared; a concurrent preparer's copy wins.
    """
    from semantica_jax.data.tfds_images import store_image_dataset

    listing = scan(folder_path(dataset))
    name = f"folder_{fingerprint(listing, image_size, channels)}"
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    final_dir = os.path.join(data_dir, name, VERSION)
    if os.path.isfile(os.path.join(final_dir, "dataset_info.json")):
        return name
    logging.info("converting %s (%d files) into TFDS %s", listing.root, len(listing.files), name)
    data = convert(listing, image_size, channels)
    os.makedirs(data_dir, exist_ok=True)
    build_dir = tempfile.mkdtemp(prefix=f".{name}-prepare-", dir=data_dir)
    try:
        store_image_dataset(
            name,
            {SPLIT: {"image": data["image"], "label": data["label"]}},
            build_dir,
            num_classes=len(listing.episodes),
            version=VERSION,
            description=f"Images of {listing.root}; label = episode (sub-folder) index.",
        )
        atomic_files.write_json(
            os.path.join(build_dir, name, VERSION, "folder.json"), data["report"]
        )
        os.makedirs(os.path.dirname(final_dir), exist_ok=True)
        try:
            os.rename(os.path.join(build_dir, name, VERSION), final_dir)
        except OSError:
            if not os.path.isfile(os.path.join(final_dir, "dataset_info.json")):
                raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    logging.info(
        "folder dataset: %d images in %d episodes -> %s",
        data["report"]["images"],
        len(listing.episodes),
        final_dir,
    )
    return name


def tfds_name(dataset: str, split: str, data_dir: str, image_size: int, channels: int) -> str:
    """The TFDS name of a folder dataset (converted once, see `prepare`); checks the split."""
    if split.split("[")[0] != SPLIT:
        raise UserError(
            f"a folder dataset has one split, {SPLIT!r}; got {split!r} (set data.train_split "
            f"and data.eval_split to {SPLIT!r})"
        )
    return prepare(dataset, data_dir, image_size, channels)


def load_split(
    dataset: str, split: str, data_dir: str, image_size: int, channels: int, max_examples: int
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, S, S, C], episode index int32 [N]) of a folder dataset."""
    from semantica_jax.data.tfds_images import load_tfds_images

    name = tfds_name(dataset, split, data_dir, image_size, channels)
    return load_tfds_images(name, split, data_dir, image_size, channels, max_examples)


def report(dataset: str, data_dir: str, image_size: int, channels: int) -> dict:
    """The conversion report (episodes, counts, what was skipped) of a prepared folder."""
    name = prepare(dataset, data_dir, image_size, channels)
    path = os.path.join(os.path.abspath(data_dir), name, VERSION, "folder.json")
    with open(path) as f:
        return json.load(f)
