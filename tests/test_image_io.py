"""utils/image_io.py: user images in, PNG grids out."""

import os

import numpy as np
import pytest
from PIL import Image

from semantica_jax.utils import image_io


def test_load_image_converts_png_and_npy(tmp_path):
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[10:30, 12:18] = 255
    Image.fromarray(rgb).save(tmp_path / "a.png")
    image, note = image_io.load_image(str(tmp_path / "a.png"), 28, 1)
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8
    assert "30x40 RGB -> 28x28x1" in note
    assert image.max() > 200 and image[0, 0, 0] == 0  # the bar survived, the corner is black

    grey = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "b.png")
    same, note = image_io.load_image(str(tmp_path / "b.png"), 28, 1)
    assert note is None
    np.testing.assert_array_equal(same[..., 0], grey)

    np.save(tmp_path / "c.npy", grey.astype(np.float32) / 127.5 - 1.0)
    from_npy, note = image_io.load_image(str(tmp_path / "c.npy"), 28, 1)
    assert "[-1, 1]" in note
    np.testing.assert_allclose(from_npy[..., 0].astype(int), grey.astype(int), atol=1)

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(image_io.ImageReadError, match="bad.png"):
        image_io.load_image(str(tmp_path / "bad.png"), 28, 1)
    with pytest.raises(image_io.ImageReadError, match="no such file"):
        image_io.load_image(str(tmp_path / "missing.png"), 28, 1)


def test_save_grid_layout_and_atomic(tmp_path):
    images = np.stack([np.full((28, 28, 1), 40 * i, np.uint8) for i in range(5)])
    path = image_io.save_grid(images, str(tmp_path / "grid.png"), ncols=3, padding=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)
    assert grid[2 + 30 + 5, 2 + 30 + 5] == 160  # image 4: row 1, col 1
    assert grid[1, 1] == 0  # padding
    assert os.listdir(tmp_path) == ["grid.png"]


def test_16_bit_png_is_rescaled_not_saturated(tmp_path):
    """A 16-bit grey PNG keeps its contrast: 257 * v -> v (Pillow alone clips at 255)."""
    values = np.arange(36, 36 + 28 * 28).reshape(28, 28) % 181 + 36  # 36..216
    path = str(tmp_path / "deep.png")
    Image.fromarray((values * 257).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    image, note = image_io.load_image(path, 28, 1)
    np.testing.assert_array_equal(image[..., 0], values.astype(np.uint8))
    assert "16-bit -> 8-bit" in note
    # A 16-bit file holding 8-bit values is taken as it is.
    Image.fromarray(values.astype(np.uint16)).save(path)
    image, _ = image_io.load_image(path, 28, 1)
    np.testing.assert_array_equal(image[..., 0], values.astype(np.uint8))
