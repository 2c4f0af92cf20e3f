"""utils/digits.py: a user's digit made MNIST-like, checked by value."""

import numpy as np
import pytest

from semantica_jax.utils import digits


def _stroke(h=64, w=48, light_on_dark=False):
    img = np.zeros((h, w, 1), np.uint8)
    img[5:45, 30:38] = 255  # a tall bar near the right edge
    return img if light_on_dark else 255 - img


def test_auto_inverts_dark_ink_on_light_paper_only():
    assert digits.should_invert(_stroke(), "auto")
    assert not digits.should_invert(_stroke(light_on_dark=True), "auto")
    assert digits.should_invert(_stroke(light_on_dark=True), "yes")
    assert not digits.should_invert(_stroke(), "no")
    with pytest.raises(ValueError, match="invert must be one of"):
        digits.should_invert(_stroke(), "maybe")


def test_centring_fits_a_20_box_and_centres_the_mass():
    out, note = digits.prepare(_stroke(), invert="auto", centre=True, size=28)
    assert "inverted" in note
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8
    grey = out[..., 0].astype(float)
    rows, cols = np.nonzero(grey > 25)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 in (20, 21)
    cy = (np.arange(28)[:, None] * grey).sum() / grey.sum()
    cx = (np.arange(28)[None, :] * grey).sum() / grey.sum()
    assert abs(cy - 13.5) <= 0.75 and abs(cx - 13.5) <= 0.75
    assert grey[0].max() == 0 and grey.max() == 255


def test_background_level_is_removed_and_blank_stays_black():
    grey = np.full((40, 40), 0.3)
    grey[10:30, 18:22] = 0.9
    out = digits.mnist_centre(grey, 28)[..., 0]
    assert out[0, 0] == 0 and out.max() == 255
    assert digits.mnist_centre(np.full((30, 30), 0.5), 28).max() == 0


def test_without_centring_only_inverts():
    img = _stroke()
    out, note = digits.prepare(img, invert="auto", centre=False, size=28)
    np.testing.assert_array_equal(out, 255 - img)
    same, note = digits.prepare(img, invert="no", centre=False, size=28)
    np.testing.assert_array_equal(same, img)
    assert note == ""
