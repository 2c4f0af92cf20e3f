"""benchmarks/similarity_2afc.py --quick on the tiny trained workdir: the report's structure,
accuracies in [0, 1], and what holds by construction."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "similarity_2afc", os.path.join(ROOT, "benchmarks", "similarity_2afc.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_triplets_by_construction(bench, mnist_data_dir):
    from semantica_jax.data import mnist as mnist_data

    images, labels = mnist_data.load_split("mnist", "test", mnist_data_dir, 28, 1, 300)
    t = bench.make_triplets(images, labels, 40, seed=1)
    f = len(bench.FAMILIES)
    assert t.alternatives.shape == (f, 2, 40, 28, 28, 1) and t.closer.shape == (f, 40)
    assert t.alternatives.min() >= -1.0 and t.alternatives.max() <= 1.0
    assert 0 < t.closer.mean() < 1  # the closer one sits at either position
    np.testing.assert_array_equal(
        t.alternatives, bench.make_triplets(images, labels, 40, 1).alternatives
    )
    # The same noise draw at two strengths: the closer one is nearer in pixels, always.
    noise = bench.FAMILIES.index("noise")
    idx = np.arange(40)
    near = t.alternatives[noise, t.closer[noise], idx]
    far = t.alternatives[noise, 1 - t.closer[noise], idx]
    distance = lambda x: ((x - t.refs) ** 2).reshape(40, -1).sum(1)
    assert np.all(distance(near) < distance(far))
    with pytest.raises(ValueError, match="exceeds"):
        bench.make_triplets(images, labels, 301, 0)


def test_quick_run(bench, tool_workdir, tmp_path):
    report = bench.main(["--workdir", tool_workdir, "--quick", "--out", str(tmp_path)])
    written = json.load(open(tmp_path / "similarity_2afc.json"))
    assert written["methods"] == json.loads(json.dumps(report["methods"]))
    assert (tmp_path / "similarity_2afc_heatmap.png").stat().st_size > 0
    table = (tmp_path / "similarity_2afc.md").read_text()
    assert "--quick" in table and "| pixel L2 |" in table
    families, n = report["families"], bench.QUICK_TRIPLETS
    assert families == list(bench.FAMILIES) and report["triplets_per_family"] == n
    want = {key for key, _ in bench.TABLE_ROWS}
    assert set(report["methods"]) == want
    for method, by_family in report["methods"].items():
        assert set(by_family) == set(families), method
        for r in by_family.values():
            assert 0.0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1.0 and r["n"] == n
    grid = report["diffsim_s_grid"]
    assert set(grid["blur"]) == {"transformer_0/block_0"}
    assert set(grid["blur"]["transformer_0/block_0"]) == {"0", "2"}
    # Pixel L2 on the same noise draw at two strengths is right by construction.
    assert report["methods"]["pixel_l2"]["noise"]["accuracy"] > 0.9
    assert report["methods"]["pixel_l2"]["noise"]["ci_low"] > 0.5
    timing, machine = report["timing"], report["machine"]
    assert timing["wall_s"] > 0 and timing["diffsim_s_pairs_per_s"] > 0
    assert machine["cores"] >= 1 and machine["cpu"] and len(report["git"]["revision"]) == 40
