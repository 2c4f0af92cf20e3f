"""benchmarks/augmentation.py --quick on a tiny trained workdir: every arm, resumable."""

import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import augmentation as benchmark  # noqa: E402


def test_few_shot_subset_is_balanced_seeded_and_excludes():
    labels = np.repeat(np.arange(10), 30)
    a = benchmark.few_shot_subset(labels, 3, seed=1)
    assert np.bincount(labels[a]).tolist() == [3] * 10
    np.testing.assert_array_equal(a, benchmark.few_shot_subset(labels, 3, seed=1))
    b = benchmark.few_shot_subset(labels, 20, seed=2, exclude=a)
    assert not set(a) & set(b) and np.bincount(labels[b]).tolist() == [20] * 10


def test_quick_benchmark_end_to_end(tool_workdir, tmp_path):
    out = tmp_path / "results"
    argv = [f"--workdir={tool_workdir}", f"--out={out}", "--quick"]
    result = benchmark.main(argv)
    row = next(iter(result["main"].values()))["1"]
    assert set(row) == set(benchmark.ARMS)
    for arm in benchmark.ARMS:
        assert 0.0 <= row[arm]["mean"] <= 1.0 and row[arm]["n"] == 1
    assert json.load(open(out / "augmentation.json"))["variations"] == 2
    assert (out / "augmentation.png").stat().st_size > 1000
    assert "a_real" in (out / "augmentation.md").read_text()
    runs = json.load(open(out / "augmentation_runs.json"))
    assert len(runs) == 5
    again = benchmark.main(argv)  # every classifier run and every variation set is reused
    assert next(iter(again["main"].values()))["1"] == row
    # An ablation on the label-trained generator: its own runs, reported apart.
    labelled = benchmark.main(
        argv + [f"--label_workdir={tool_workdir}", "--label_ablations=filter off"]
    )
    cells = labelled["label_ablations"]["filter off"]
    assert set(cells) == {"c_variations", "d_both"} and cells["d_both"]["n"] == 1
    assert "LABEL-TRAINED generator" in (out / "augmentation.md").read_text()
    generator = os.path.basename(os.path.normpath(str(tool_workdir)))
    assert f"{generator}-g1-k10-s0-tau_high=1.01-tau_low=-1.0-c_variations-steps20-m2" in json.load(
        open(out / "augmentation_runs.json")
    )


def test_cached_cells_name_their_generator_and_skip_sampling(tool_workdir, tmp_path):
    """A finished cell never samples again; another generator into the same OUT gets its
    own c and d cells while a, b and e (no generator) are reused."""
    import shutil

    out = tmp_path / "results"
    argv = [f"--out={out}", "--quick"]
    benchmark.main([f"--workdir={tool_workdir}", *argv])
    shutil.rmtree(out / "augmentation")  # the variations; the classifier cells stay cached
    benchmark.main([f"--workdir={tool_workdir}", *argv])
    assert not (out / "augmentation").exists()
    other = tmp_path / "other_generator"
    shutil.copytree(tool_workdir, other)
    benchmark.main([f"--workdir={other}", *argv])
    runs = json.load(open(out / "augmentation_runs.json"))
    assert len(runs) == 7  # 5 + the new generator's c and d
    assert sorted(k for k in runs if k.startswith("other_generator-")) == [
        "other_generator-g0-k1-s0-c_variations-steps20-m2",
        "other_generator-g0-k1-s0-d_both-steps20-m2",
    ]


def test_unknown_ablation_is_refused_before_any_work(tmp_path, capsys):
    """A typo in --ablations exits 2 at once, before the workdir or any data is read."""
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        benchmark.main([f"--workdir={tmp_path / 'missing'}", "--ablations=strength 0.5,nope"])
    assert exit_info.value.code == 2
    assert "unknown --ablations ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main([f"--workdir={tmp_path / 'missing'}", "--label_ablations=nope"])
    assert exit_info.value.code == 2 and "['nope']" in capsys.readouterr().err


def test_paired_differences_match_subsets_by_index():
    base = benchmark._stats([0.5, 0.6, 0.7])
    plus = benchmark._stats([0.8, 0.65], subsets=[2, 0])
    # 0.8 - 0.7 and 0.65 - 0.5: mean 0.125, std 0.0354, both higher.
    assert benchmark._paired(plus, base) == "+0.1250 ± 0.0354 (2/2)"
    # A run split by --first_subset names its cells' subsets from there; a missing arm is
    # left out of its row.
    row = benchmark._row([{"a": 0.5}, {"a": 0.7, "b": 0.1}], ["a", "b"], first=3)
    assert row["a"]["subsets"] == [3, 4] and row["b"]["subsets"] == [4]


def test_label_row_from_cache_needs_no_generator(tool_workdir, tmp_path):
    """--label_from_cache reports the label-trained row from its cached cells alone, each
    arm with the subsets it has, once that generator is gone."""
    import shutil

    out, label = tmp_path / "results", tmp_path / "label_generator"
    shutil.copytree(tool_workdir, label)
    argv = [f"--workdir={tool_workdir}", f"--out={out}", "--quick", f"--label_workdir={label}"]
    benchmark.main(argv)
    shutil.rmtree(label)
    shutil.rmtree(out / "augmentation")
    result = benchmark.main(argv + ["--label_from_cache", "--label_subsets=2"])
    row = result["main"][list(result["main"])[1]]["1"]
    assert set(row) == {"c_variations", "d_both"}
    assert row["d_both"]["subsets"] == [0] and row["d_both"]["n"] == 1
    assert not (out / "augmentation").exists()  # nothing was sampled
    assert result["label_subsets"] == 2
    # --from_cache: every row from the cache, here all five arms of subset 0 at k = 1.
    cached = benchmark.main(argv + ["--from_cache", "--subsets=1"])
    main_row = next(iter(cached["main"].values()))["1"]
    assert set(main_row) == set(benchmark.ARMS) and main_row["a_real"]["subsets"] == [0]
    assert not (out / "augmentation").exists()


def test_consistency_counts_kept_variations_of_the_source_digit_and_keeps_old_entries(tmp_path):
    import augmentation_consistency as consistency

    train_x = np.zeros((4, 2, 2, 1), np.uint8)
    train_x[1], train_x[2, 0], train_x[3, :, 0] = 255, 255, 255  # four distinct digits
    train_y = np.array([0, 1, 2, 3])
    # Variations: copies of train images 1, 2, 2 and 3 (nearest labels 1, 2, 2, 3), the
    # source's label 1 for all; the real image (not a variation) is left out.
    images = np.concatenate([train_x[[0]], train_x[[1, 2, 2, 3]]])
    os.makedirs(tmp_path / "sets" / "g-k1-s3")
    np.savez(
        tmp_path / "sets" / "g-k1-s3" / "augmented.npz",
        images=images,
        labels=np.array([1, 1, 1, 1, 1]),
        is_variation=np.array([False, True, True, True, True]),
    )
    old = {"g-k1-s0": {"kept_variations": 7, "class_consistency": 0.5}}
    got = consistency.measure_sets(str(tmp_path / "sets"), train_x, train_y, old)
    assert got == {**old, "g-k1-s3": {"kept_variations": 4, "class_consistency": 0.25}}
