"""augmentation.py: SGID's guidance mapping, prototypes, the filter and DA-Fusion mixing."""

import numpy as np
import pytest

from semantica_jax import augmentation as aug


def test_sgid_f_at_its_landmarks():
    np.testing.assert_allclose(aug.sgid_f([0.0, 0.25, 0.5, 0.65]), [1.0, 1.25, 1.0, 0.61])
    assert abs(aug.sgid_f(0.809)) < 1e-2 and aug.sgid_f(0.9) < 0


def test_guidance_from_similarity_rescales_then_clips():
    # lo -> s' = 0 -> w0; the middle of [lo, hi] -> s' = 0.25 -> 1.25 w0; hi and above -> w0.
    w = aug.guidance_from_similarity([0.3, 0.6, 0.9, 1.2, -1.0], w0=0.5, lo=0.3, hi=0.9)
    np.testing.assert_allclose(w, [0.5, 0.625, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(aug.rescale_similarity([0.45, 0.75], 0.3, 0.9), [0.125, 0.375])
    assert np.all(aug.guidance_from_similarity(np.linspace(-1, 2, 31), w0=1.0, lo=0, hi=1) >= 0)
    with pytest.raises(ValueError, match="hi > lo"):
        aug.rescale_similarity(0.5, 0.9, 0.3)


def test_prototype_similarity_is_leave_one_out():
    cls = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, -5.0]])
    labels = np.array([0, 0, 0, 1])
    s = aug.prototype_similarity(cls, labels)
    # image 0 vs mean of images 1, 2 = (0.5, 1): cos = 0.5 / sqrt(1.25)
    np.testing.assert_allclose(s[0], 0.5 / np.sqrt(1.25))
    np.testing.assert_allclose(s[2], 1.0)  # (1, 1) vs (0.5, 0.5)
    assert s[3] == 1.0  # alone in its class


def test_filter_accepts_the_half_open_band():
    source = np.array([[1.0, 0.0]] * 4)
    angles = np.array([0.0, 0.5, 1.0, 1.4])  # cos = 1, .878, .540, .170
    variations = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    keep, cos = aug.accept_variations(variations, source, low=0.5, high=0.98)
    np.testing.assert_array_equal(keep, [False, True, True, False])
    np.testing.assert_allclose(cos, np.cos(angles))
    assert aug.accept_variations(variations[2:3], source[:1], low=np.cos(1.0) - 1e-12, high=1.0)[0][
        0
    ]


def test_same_class_percentile():
    cls = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    labels = np.array([0, 0, 0, 1])
    # class 0 pairs: cos 1, 0, 0 -> median 0, max 1
    assert aug.same_class_cosine_percentile(cls, labels, 50) == pytest.approx(0.0)
    assert aug.same_class_cosine_percentile(cls, labels, 100) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two images"):
        aug.same_class_cosine_percentile(cls[:1], labels[:1], 10)


def test_dafusion_mixing_rate_and_slots():
    rng = np.random.default_rng(0)
    num_variations = np.array([10, 3, 0])
    source = np.tile([0, 1, 2], 20_000)
    use, slot = aug.dafusion_draws(rng, source, num_variations, 0.5)
    assert abs(use[source != 2].mean() - 0.5) < 0.01
    assert not use[source == 2].any()  # nothing kept: stays real
    assert slot[source == 0].max() == 9 and slot[(source == 1) & use].max() == 2
    assert set(np.unique(slot[(source == 1) & use])) == {0, 1, 2}
    with pytest.raises(ValueError, match="probability"):
        aug.dafusion_draws(rng, source, num_variations, 1.5)


def test_standard_augment_moves_pixels_keeps_range_and_is_seeded():
    import jax
    import jax.numpy as jnp

    x = jnp.full((4, 28, 28, 1), -1.0).at[:, 8:20, 12:16].set(1.0)
    a = aug.standard_augment(jax.random.key(0), x)
    b = aug.standard_augment(jax.random.key(0), x)
    c = aug.standard_augment(jax.random.key(1), x, elastic=False)
    assert a.shape == x.shape and float(a.min()) >= -1.0 - 1e-5 and float(a.max()) <= 1.0 + 1e-5
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.mean(jnp.abs(a - x))) > 0.01 and float(jnp.mean(jnp.abs(c - x))) > 0.01
    # Ink is moved, not created: the mean brightness stays close (scale 0.9-1.1).
    assert abs(float(jnp.mean(c)) - float(jnp.mean(x))) < 0.1
