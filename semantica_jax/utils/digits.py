"""A user's digit made to look like MNIST's: light on dark, centred as MNIST centres digits.

MNIST digits are white strokes on black, size-normalised to fit a 20 x 20 box (aspect ratio
kept, antialiased) and placed in the 28 x 28 field with their centre of mass at the centre.
A dark-on-white scan or a font-rendered digit gives a model trained on MNIST an input it has
never seen (its variations come out as malformed 8s); `prepare` converts it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

INVERT_CHOICES = ("auto", "yes", "no")
BORDER_FRACTION = 0.1  # outer ring (of each side) read as the background
INK_THRESHOLD = 0.1  # after background removal, pixels above this are the digit


def luminance(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] -> float [H, W] in [0, 1] (ITU-R 601 weights for RGB)."""
    x = image.astype(np.float64) / 255.0
    if x.shape[-1] == 1:
        return x[..., 0]
    return x[..., :3] @ np.array([0.299, 0.587, 0.114])


def border_is_brighter(grey: np.ndarray) -> bool:
    """True when the outer ring of a grey image [H, W] is brighter than its centre
    (dark ink on a light background)."""
    h, w = grey.shape
    bh, bw = max(1, int(h * BORDER_FRACTION)), max(1, int(w * BORDER_FRACTION))
    ring = np.ones((h, w), bool)
    ring[bh : h - bh, bw : w - bw] = False
    centre = grey[h // 4 : h - h // 4 or h, w // 4 : w - w // 4 or w]
    return float(grey[ring].mean()) > float(centre.mean())


def should_invert(image: np.ndarray, invert: str) -> bool:
    """Whether to invert uint8 [H, W, C]: 'yes', 'no', or 'auto' (border brighter)."""
    if invert not in INVERT_CHOICES:
        raise ValueError(f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
    if invert == "auto":
        return border_is_brighter(luminance(image))
    return invert == "yes"


def mnist_centre(grey: np.ndarray, size: int = 28) -> np.ndarray:
    """A light-on-dark grey image [H, W] in [0, 1] -> uint8 [size, size, 1], MNIST-style.

    The background level (median of the border ring) is subtracted and the ink rescaled to
    [0, 1]; the bounding box of the ink is scaled (aspect kept, Lanczos) to fit a box of
    round(size * 20 / 28) and pasted so that its centre of mass lands on the field's centre
    (integer shift). An image without ink (flat) comes back black.
    """
    h, w = grey.shape
    bh, bw = max(1, int(h * BORDER_FRACTION)), max(1, int(w * BORDER_FRACTION))
    ring = np.ones((h, w), bool)
    ring[bh : h - bh, bw : w - bw] = False
    ink = np.clip(grey - np.median(grey[ring]), 0.0, None)
    peak = float(ink.max())
    field = np.zeros((size, size), np.float64)
    if peak <= 0:
        return np.zeros((size, size, 1), np.uint8)
    ink = ink / peak
    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(size * 20 / 28))
    scale = box / max(crop.shape)
    new_h, new_w = (max(1, round(d * scale)) for d in crop.shape)
    resized = Image.fromarray((crop * 255).astype(np.uint8), mode="L").resize(
        (new_w, new_h), Image.Resampling.LANCZOS
    )
    digit = np.asarray(resized, np.float64) / 255.0
    total = digit.sum()  # > 0: the crop holds ink above the threshold
    cy = float((np.arange(new_h)[:, None] * digit).sum() / total)
    cx = float((np.arange(new_w)[None, :] * digit).sum() / total)
    top = int(round((size - 1) / 2 - cy))
    left = int(round((size - 1) / 2 - cx))
    top, left = min(max(top, 0), size - new_h), min(max(left, 0), size - new_w)
    field[top : top + new_h, left : left + new_w] = digit
    return np.clip(np.rint(field * 255), 0, 255).astype(np.uint8)[..., None]


def prepare(image: np.ndarray, *, invert: str, centre: bool, size: int) -> tuple[np.ndarray, str]:
    """uint8 [H, W, C] at native size -> (uint8 image, note) made MNIST-like.

    invert: 'auto' | 'yes' | 'no'. centre: size-normalise and centre (grey output
    [size, size, 1]); without it the image keeps its size and channels (only inverted).
    The note says whether it was inverted ("" when not).
    """
    notes = []
    flip = should_invert(image, invert)
    if flip:
        image = 255 - image
        notes.append(
            "inverted (its border is brighter than its centre; MNIST digits are light on dark"
            "; --invert=no keeps it)"
            if invert == "auto"
            else "inverted (--invert=yes)"
        )
    if centre:  # the documented default of MNIST runs: no note for every input
        image = mnist_centre(luminance(image), size)
    return image, "; ".join(notes)
