"""Image files and the pixel range: user images (PNG/JPEG/.npy) in, PNG grids out, and the
one conversion between uint8 pixels and the model's [-1, 1] range (`to_model_range`,
`to_uint8`, `as_model_input`).

`load_image` is what the command-line tools use for their inputs; `save_grid` writes sample
sheets. Both are used by several tools, so their behaviour is kept simple and explicit.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from semantica_jax.utils import atomic_files


class ImageReadError(ValueError):
    """An input image could not be read; the message names the file and the reason."""


def _array_to_uint8(array: np.ndarray, path: str) -> tuple[np.ndarray, str | None]:
    """Brings a .npy array to uint8 [H, W, C]; floats are read as [0, 1] or [-1, 1]."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageReadError(
            f"{path}: .npy must hold [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
            f"got shape {array.shape}"
        )
    if array.dtype == np.uint8:
        return array, None
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ImageReadError(f"{path}: .npy dtype {array.dtype} is not numeric")
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ImageReadError(f"{path}: .npy holds NaN or inf")
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        values, note = values * 255.0, "float [0, 1] -> uint8"
    elif lo >= -1.0 and hi <= 1.0:
        values, note = (values + 1.0) * 127.5, "float [-1, 1] -> uint8"
    else:
        note = f"values in [{lo:.3g}, {hi:.3g}] clipped to [0, 255]"
    return np.clip(np.rint(values), 0, 255).astype(np.uint8), note


def _read(path: str) -> tuple[Image.Image, list[str]]:
    notes: list[str] = []
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: no such file")
    if path.lower().endswith(".npy"):
        try:
            # allow_pickle=False: a .npy from elsewhere must not run code.
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ImageReadError(f"{path}: not a readable .npy array ({err})") from err
        array, note = _array_to_uint8(np.asarray(array), path)
        if note:
            notes.append(note)
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
        return Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode), notes
    try:
        with Image.open(path) as image:
            image.load()
            image = image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not a readable image ({err})") from err
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit grey (Pillow's convert('L') would saturate it at 255): rescale.
        array = np.asarray(image)
        if image.mode == "F":
            array, note = _array_to_uint8(array, path)
        else:
            deep = int(array.max(initial=0)) > 255
            array = np.rint(array / 257.0) if deep else array
            array = np.clip(array, 0, 255).astype(np.uint8)[..., None]
            note = f"{image.mode} 16-bit -> 8-bit (/257)" if deep else None
        if note:
            notes.append(note)
        image = Image.fromarray(array[..., 0], mode="L")
    return image, notes


def load_image(
    path: str, image_size: int, channels: int, transform=None
) -> tuple[np.ndarray, str | None]:
    """Reads an image file and converts it to the model's size and colour.

    Args:
      path: PNG/JPEG (anything Pillow reads) or .npy ([H, W] or [H, W, C]; uint8, or float
        in [0, 1] / [-1, 1]).
      image_size: S of the output (resized to S x S with antialiasing; no cropping, so a
        non-square image is squashed: the note says so).
      channels: 1 (grey) or 3 (RGB).
      transform: optional `transform(uint8 [H, W, channels]) -> (uint8 [h, w, c], note)`
        applied at the file's own resolution before the resize (tools' digit preparation).

    Returns:
      (uint8 [S, S, channels], note) where note describes any conversion, or None.

    Raises:
      ImageReadError: unreadable or unsupported file (message names the file).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image, notes = _read(path)
    original = f"{image.width}x{image.height} {image.mode}"
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
        if has_alpha:
            # Composite transparent pixels on black: MNIST digits are white on black.
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        image = image.convert(mode)
    if transform is not None:
        array = np.asarray(image, np.uint8).reshape(image.height, image.width, channels)
        array, note = transform(array)
        if note:
            notes.append(note)
        image = Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    converted = f"{image.width}x{image.height} {image.mode}"
    if converted != original:
        notes.append(f"{original} -> {image_size}x{image_size}x{channels}")
    array = np.asarray(image, np.uint8).reshape(image_size, image_size, channels)
    return array, ("; ".join(notes) or None)


# Model range: images are float32 in [-1, 1]; files and caches hold uint8 [0, 255].
# Float inputs may overshoot [-1, 1] a little (unclipped samples) and are clipped; further
# out than this is a scale mistake (e.g. 0..255 floats) and an error.
FLOAT_RANGE_SLACK = 0.5


def to_model_range(images: Any) -> Any:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is taken as [-1, 1] already.

    Works on numpy and jax arrays (traced ones too) and returns the same kind.
    """
    xp = jnp if isinstance(images, jax.Array) else np
    images = xp.asarray(images)
    if images.dtype == xp.uint8:
        return images.astype(xp.float32) / 127.5 - 1.0
    return images.astype(xp.float32)


def to_uint8(images: Any) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clipped); uint8 passes through. Numpy out."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def as_model_input(images: Any) -> np.ndarray:
    """A checked batch for a network: [N, H, W, C] -> float32 numpy in [-1, 1].

    uint8 is converted; float must lie within [-1, 1] up to FLOAT_RANGE_SLACK and is clipped.

    Raises:
      ValueError: not 4-D, or floats outside the tolerated range (the message says how to
        rescale).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}")
    if images.dtype == np.uint8:
        return to_model_range(images)
    images = images.astype(np.float32)
    bound = 1.0 + FLOAT_RANGE_SLACK
    if images.size and (images.min() < -bound or images.max() > bound):
        raise ValueError(
            f"float images must be in [-1, 1], got [{images.min():.3g}, {images.max():.3g}]; "
            "pass uint8 or rescale with x / 127.5 - 1"
        )
    return np.clip(images, -1.0, 1.0)


def make_grid(
    images: np.ndarray, ncols: int | None = None, padding: int = 2, scale: int = 1
) -> np.ndarray:
    """Tiles images into one uint8 array [rows*(H+p)+p, cols*(W+p)+p, C] (black borders).

    Args:
      images: [N, H, W, C] uint8, or float in [-1, 1]; C = 1 or 3. Row-major order.
      ncols: images per row; None = ceil(sqrt(N)).
      padding: pixels of black between images.
      scale: integer nearest-neighbour upscaling of the whole grid (28 px digits are small).
    """
    images = to_uint8(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"a grid needs [N>0, H, W, 1|3] images, got {images.shape}")
    num, height, width, chans = images.shape
    ncols = ncols or math.ceil(math.sqrt(num))
    nrows = math.ceil(num / ncols)
    grid = np.zeros(
        (nrows * (height + padding) + padding, ncols * (width + padding) + padding, chans),
        np.uint8,
    )
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        grid[top : top + height, left : left + width] = image
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def save_png(image: np.ndarray, path: str) -> str:
    """Writes one uint8 [H, W, C] image as PNG atomically (temp file, then rename)."""
    image = np.asarray(image, np.uint8)
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return atomic_files.write_bytes_atomic(path, lambda f: pil.save(f, format="PNG"))


def save_grid(
    images: np.ndarray, path: str, ncols: int | None = None, padding: int = 2, scale: int = 1
) -> str:
    """Writes images as one PNG grid atomically (see `make_grid`); returns the path."""
    return save_png(make_grid(images, ncols, padding, scale), path)
