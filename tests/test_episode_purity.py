"""benchmarks/episode_purity.py: the 1-NN accuracy by value, and a run on a tiny workdir."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import episode_purity  # noqa: E402


def test_nearest_neighbour_accuracy_by_value():
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(4), 50)
    centres = np.eye(4, 8) * 10.0
    cls = centres[labels] + rng.normal(0, 0.1, (len(labels), 8))
    assert episode_purity.nearest_neighbour_accuracy(cls, labels, 40) == 1.0
    shuffled = rng.permutation(labels)  # labels unrelated to the embedding
    assert episode_purity.nearest_neighbour_accuracy(cls, shuffled, 40) < 0.6


def test_purity_of_a_tiny_run(tool_workdir, tmp_path, capsys):
    result = episode_purity.main(
        [f"--workdir={tool_workdir}", "--clusters=1,5", "--queries=50", f"--out={tmp_path}"]
    )
    assert json.load(open(tmp_path / "episode_purity.json")) == result
    assert 0.0 <= result["nn_label_accuracy"] <= 1.0
    one, five = result["rows"]
    assert one["clusters"] == 1 and five["clusters"] == 5
    for row in (one, five):
        assert row["pairs_kept"] > 0 and 0.0 <= row["different_digit_before"] <= 1.0
    with pytest.raises(SystemExit) as err:
        episode_purity.main([f"--workdir={tool_workdir}", "--queries=0", f"--out={tmp_path}"])
    assert err.value.code == 2 and "error: --queries" in capsys.readouterr().err
