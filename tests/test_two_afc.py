"""metrics/two_afc.py: the 2AFC accuracy on hand-made triplets, ties, and the bootstrap."""

import numpy as np
import pytest

from semantica_jax.metrics import two_afc


def test_hand_made_cases():
    # d0 < d1 picks x0; right when g = 0. d1 < d0 picks x1; right when g = 1. Ties: ½.
    d0 = [0.1, 0.1, 0.9, 0.9, 0.5, 0.5]
    d1 = [0.9, 0.9, 0.1, 0.1, 0.5, 0.5]
    g = [0, 1, 1, 0, 0, 1]
    np.testing.assert_array_equal(two_afc.correct(d0, d1, g), [1, 0, 1, 0, 0.5, 0.5])
    assert two_afc.accuracy(d0, d1, g) == pytest.approx(3 / 6)
    assert two_afc.accuracy([0.0], [1.0], [0]) == 1.0
    assert two_afc.accuracy([0.0], [1.0], [1]) == 0.0
    assert two_afc.accuracy([2.0, 2.0], [2.0, 2.0], [0, 1]) == 0.5  # all ties = chance


def test_similarities_enter_as_negated_distances():
    s0, s1, g = np.array([0.9, 0.2]), np.array([0.1, 0.8]), np.array([0, 1])
    assert two_afc.accuracy(-s0, -s1, g) == 1.0


def test_summary_and_its_interval():
    values = np.array([1.0] * 80 + [0.0] * 20)
    d0, d1, g = np.zeros(100), np.ones(100), (values == 0).astype(int)  # 80 right
    result = two_afc.summary(d0, d1, g, seed=3)
    assert result["accuracy"] == pytest.approx(0.8) and result["n"] == 100
    assert 0.65 < result["ci_low"] < 0.8 < result["ci_high"] < 0.95
    assert two_afc.summary(d0, d1, g, seed=3) == result  # seeded
    narrow = two_afc.summary(d0, d1, g, seed=3, level=0.5)
    assert result["ci_low"] <= narrow["ci_low"] <= narrow["ci_high"] <= result["ci_high"]
    perfect = two_afc.summary(d0, d1, np.zeros(100, int))
    assert perfect["ci_low"] == perfect["ci_high"] == perfect["accuracy"] == 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="0 .* or 1"):
        two_afc.accuracy([0.0], [1.0], [2])
    with pytest.raises(ValueError, match=r"\[N\]"):
        two_afc.accuracy([0.0, 1.0], [1.0], [0])
    with pytest.raises(ValueError, match="finite"):
        two_afc.accuracy([np.nan], [1.0], [0])
    with pytest.raises(ValueError, match="no triplets"):
        two_afc.accuracy([], [], [])
    with pytest.raises(ValueError, match="no triplets"):
        two_afc.summary([], [], [])
    with pytest.raises(ValueError, match="level"):
        two_afc.summary([0.0], [1.0], [0], level=1.0)
