"""benchmarks/paper_claims.py end to end on tiny arms, and its verdict rule by value."""

import json
import os
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
