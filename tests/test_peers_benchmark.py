"""benchmarks/peers.py: our U-ViT matched to a peer's size, and the ratios it reports."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import peers  # noqa: E402


@pytest.mark.parametrize("target", [2_607_681, 9_898_113, 15_722_625])
def test_matched_width_is_within_tolerance_of_each_peer(target):
    overrides, count = peers.matched_overrides(target)
    assert abs(count - target) <= peers.TOLERANCE * target
    assert count == peers.decoder_params(overrides)
    assert "data.image_size=32" in overrides


def test_an_unreachable_size_is_refused():
    with pytest.raises(ValueError, match="within 15%"):
        peers.matched_overrides(10)


def test_summary_takes_medians_and_ratios():
    peer_runs = [
        dict(
            params=100,
            train_images_per_s=t,
            sample_images_per_s=s,
            achieved_train_gflops=g,
            train_flops_per_step=64e9,
        )
        for t, s, g in ((10.0, 1.0, 50.0), (12.0, 3.0, 60.0), (11.0, 2.0, 55.0))
    ]
    train_runs = [
        dict(num_params=110, images_per_s=v, achieved_gflops_per_s=2 * v, flops_per_image=0.5e9)
        for v in (30.0, 33.0, 36.0)
    ]
    sample_runs = [{"rows": [{"images_per_s": v}]} for v in (4.0, 8.0, 6.0)]
    row = peers.summarize(peers.PEERS[0], peer_runs, train_runs, sample_runs, ["x=1"], 200.0)
    assert row["peer_train_images_per_s"] == 11.0 and row["ours_train_images_per_s"] == 33.0
    assert row["train_ratio"] == 3.0 and row["sample_ratio"] == 3.0
    assert row["peer_gflop_per_image"] == 1.0 and row["ours_gflop_per_image"] == 0.5
    assert row["ours_train_pct_of_peak"] == 33.0 and row["peer_train_pct_of_peak"] == 27.5
    assert "(**3.0x**)" in peers.table([row])
