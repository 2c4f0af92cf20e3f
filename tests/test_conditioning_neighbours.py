"""benchmarks/conditioning_neighbours.py: neighbour labels by value, a run on a tiny workdir."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import conditioning_neighbours  # noqa: E402


def test_neighbour_label_counts_by_value():
    gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    labels = np.array([0, 0, 1, 1, 2])
    queries = np.array([[1.0, 0.05], [0.05, 1.0], [0.6, 0.65]])
    got = conditioning_neighbours.neighbour_label_counts(gallery, labels, queries, 2, 3)
    assert got.tolist() == [[2, 0, 0], [0, 2, 0], [0, 1, 1]]


def test_neighbours_of_a_tiny_run(tool_workdir, tmp_path, capsys):
    result = conditioning_neighbours.main(
        [f"--workdir={tool_workdir}", "--k=7", f"--out={tmp_path}"]
    )
    assert json.load(open(tmp_path / "conditioning_neighbours.json")) == result
    rows = result["rows"]
    # The tiny config's two sample-grid rows: distinct classes first.
    assert len(rows) == 2 and rows[0]["label"] != rows[1]["label"]
    for row in rows:
        assert sum(row["neighbour_labels"]) == 7
        assert row["own_class_share"] == row["neighbour_labels"][row["label"]] / 7
    picked = conditioning_neighbours.main(
        [f"--workdir={tool_workdir}", "--indices=5,0", "--k=3", f"--out={tmp_path}"]
    )
    assert [r["test_index"] for r in picked["rows"]] == [5, 0]
    for bad, why in (
        ("--indices=x", "comma-separated"),
        ("--indices=-1", "must lie"),
        ("--k=0", "--k"),
    ):
        with pytest.raises(SystemExit) as err:
            conditioning_neighbours.main([f"--workdir={tool_workdir}", bad, f"--out={tmp_path}"])
        assert err.value.code == 2 and why in capsys.readouterr().err
