"""benchmarks/paper_claims.py end to end on tiny arms, and its verdict rule by value."""

import json
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import paper_claims  # noqa: E402


def _record(arm, value, low, high, seed=0, step=3):
    return {"arm": arm, "seed": seed, "step": step, "m": {"value": value, "low": low, "high": high}}


@pytest.mark.parametrize(
    "b_interval, verdict",
    [
        ((0.1, 0.0, 0.2), "confirmed"),
        ((0.9, 0.8, 1.0), "refuted"),
        ((0.5, 0.3, 0.7), "inconclusive"),
    ],
)
def test_verdict_follows_from_separated_intervals(b_interval, verdict):
    claim = paper_claims.Claim(
        "c",
        "src",
        "a is higher",
        (paper_claims.Arm("a"), paper_claims.Arm("b")),
        (paper_claims.Comparison("m", "a", "b", "higher"),),
        "m",
    )
    records = [_record("a", 0.5, 0.4, 0.6), _record("b", *b_interval)]
    rows, got = paper_claims.judge(claim, records, seeds=1)
    assert got == verdict and len(rows) == 1


def test_every_claim_names_its_own_arms():
    for claim in paper_claims.CLAIMS:
        names = {a.name for a in claim.arms}
        assert len(names) == len(claim.arms), claim.name
        for c in claim.comparisons:
            assert {c.a, c.b} <= names and c.expect in ("higher", "lower"), claim.name


def test_harness_end_to_end_on_tiny_arms(session_cache, tmp_path):
    out, table = tmp_path / "claims", tmp_path / "claims.md"
    argv = [
        "--claim=reconstruction",
        f"--out={out}",
        "--steps=3",
        "--num=20",
        "--tiny",
        f"--cache_dir={session_cache}",
        f"--table={table}",
    ]
    (result,) = paper_claims.main(argv)
    on_disk = json.load(open(out / "reconstruction.json"))
    assert on_disk["verdict"] == result["verdict"]
    assert on_disk["verdict"] in ("confirmed", "refuted", "mixed", "inconclusive")
    assert {r["arm"] for r in on_disk["records"]} == {"pairs (default)", "reconstruction"}
    for r in on_disk["records"]:
        assert r["step"] == 3 and r["num_images"] == 20
        for metric in ("full.fid", "one_shot.recall", "copy_rate", "one_shot.class_consistency"):
            v = paper_claims.metric_of(r, metric)
            assert v["low"] <= v["value"] <= v["high"], (metric, v)
        assert 0.0 <= r["copy_rate"]["value"] <= 1.0
        assert "pairs" not in r  # only a claim that shows its pairs (filtering) keeps them
    assert len(on_disk["comparisons"]) == 3
    assert os.path.getsize(out / "reconstruction.png") > 1000
    assert "reconstruction" in table.read_text() and "not measured yet" in table.read_text()
    # A rerun reuses the finished runs and the stored measurements.
    measurements = sorted(os.listdir(out / "measurements"))
    (again,) = paper_claims.main(argv)
    assert sorted(os.listdir(out / "measurements")) == measurements
    assert [r["full"]["fid"] for r in again["records"]] == [
        r["full"]["fid"] for r in result["records"]
    ]
    # Measured results alone (as committed, without the git-ignored runs) need no training.
    shutil.rmtree(out / "workdirs")
    (third,) = paper_claims.main(argv)
    assert not os.path.exists(out / "workdirs")
    assert third["verdict"] == result["verdict"]


def test_run_key_names_what_the_weights_depend_on(tmp_path):
    def key(cache="a", **changes):
        config = paper_claims.arm_config(
            paper_claims.Arm("x"), steps=10, seed=0, tiny=True, cache_dir=str(tmp_path / cache)
        )
        for dotted, value in changes.items():
            paper_claims._set(config, dotted.replace("__", "."), value)
        return paper_claims.run_key(config)

    same = key()
    assert key(cache="b") == same  # a machine's cache path is not part of the run
    assert key(eval__num_images=7) == same
    # Fields added since runs existed, at their old-behaviour value, keep old names.
    assert key(data__stream_above_mb=1024.0, encoder__max_train_images=0) == same
    assert key(encoder__max_train_images=100) != same
    assert key(encoder__aug_noise=0.1, encoder__aug_elastic=0.0) == same
    assert key(encoder__aug_elastic=34.0) != same
    assert key(train__learning_rate=0.5) != same
    assert key(seed=1) != same and key(seed=1).startswith("tiny-s1-n10-")


def test_committed_measurements_keep_their_names():
    """The default arm's run key at 1,500 steps: if a config change alters it, the committed
    measurements (benchmarks/results/claims) would no longer be found; give the new field
    its old-behaviour value in workdir.ADDED_FIELDS instead."""
    config = paper_claims.arm_config(
        paper_claims.Arm("default"), steps=1500, seed=0, tiny=False, cache_dir=""
    )
    assert paper_claims.run_key(config) == "default-s0-n1500-31287f02"


def test_default_workdir_stands_in_only_with_the_claims_recipe(tmp_path, capsys):
    """The demo's run (Min-SNR since the default changed) is not the claims' default arm
    (eps): it is left unused with a note, and an eps default run is used."""
    from configs import mnist
    from semantica_jax import workdir as run_dir

    assert paper_claims.CLAIMS_RECIPE == (("diffusion.loss", "eps"),)
    assert mnist.get_config("default").diffusion.loss == "min_snr"
    for loss, steps in (("min_snr", None), ("eps", 5)):
        path = tmp_path / loss
        path.mkdir()
        config = mnist.get_config("default")
        config.diffusion.loss = loss
        run_dir.write_config(config, str(path))
        (path / "summary.json").write_text(json.dumps({"final_step": 5}))
        args = paper_claims.parse_args([f"--default_workdir={path}", "--claim=guidance"])
        assert args.default_steps == steps
        note = capsys.readouterr().err
        assert ("diffusion.loss='min_snr'" in note) == (loss == "min_snr")
        assert paper_claims.recipe_differences(str(path)) == (
            ["diffusion.loss='min_snr'"] if loss == "min_snr" else []
        )


def test_pair_statistics_outlive_the_run_and_show_in_plot_and_table(tmp_path):
    workdir, copy = tmp_path / "run", tmp_path / "claims" / "pairs" / "key.json"
    workdir.mkdir()
    stats = {k: 0.5 for k in paper_claims.PAIR_FIELDS}
    stats.update(num_kept=10, low_cosine=0.5, high_cosine=None, kept_fraction=0.42)
    stats["histogram"] = {"edges": [-1.0, 0.0, 0.5, 1.0], "counts": [1, 3, 6]}
    stats["offtopic_pair_fraction_before"], stats["offtopic_pair_fraction_after"] = 0.46, 0.2
    (workdir / "pair_similarity.json").write_text(json.dumps({**stats, "extra": 1}))
    got = paper_claims.pair_statistics(str(workdir), str(copy))
    assert got == stats and copy.is_file()
    shutil.rmtree(workdir)  # the run is git-ignored; the copy is what stays
    assert paper_claims.pair_statistics(str(workdir), str(copy)) == stats
    assert paper_claims.pair_statistics(str(workdir), str(tmp_path / "none.json")) == {}

    claim = paper_claims.BY_NAME["filtering"]
    interval = {"value": 100.0, "low": 90.0, "high": 110.0}
    records = [
        {"arm": a.name, "seed": 0, "step": 3, "one_shot": {"fid": interval}, "pairs": stats}
        for a in claim.arms
    ]
    paper_claims.plot(claim, records, str(tmp_path / "filtering.png"))
    assert (tmp_path / "filtering.png").stat().st_size > 1000
    line = paper_claims._pairs_line(records)
    assert line.count("42% (46% -> 20%)") == len(claim.arms)


def test_default_workdir_must_be_a_finished_default_run(tool_workdir, tmp_path, capsys):
    for path, why in ((tool_workdir, "variant 'tiny'"), (tmp_path / "none", "not a finished")):
        with pytest.raises(SystemExit) as err:
            paper_claims.parse_args([f"--default_workdir={path}"])
        message = capsys.readouterr().err
        assert err.value.code == 2 and message.startswith("error: --default_workdir")
        assert why in message
