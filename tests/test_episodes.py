"""Episodes and pair filtering: each kind obeys its definition; the filter keeps only
in-range pairs and removes off-topic noise; everything is deterministic from the seed."""

import dataclasses
import json
import os

import numpy as np
import pytest

from semantica_jax.data import episodes as ep

NUM_CLASSES = 5


def _clustered(n: int, dim: int = 16, spread: float = 0.3, seed: int = 0):
    """Synthetic CLS embeddings: one random centre per class plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % NUM_CLASSES
    rng.shuffle(labels)
    centres = rng.normal(size=(NUM_CLASSES, dim))
    cls = centres[labels] + spread * rng.normal(size=(n, dim))
    return cls.astype(np.float32), labels.astype(np.int32)


def _cfg(**overrides) -> ep.EpisodeConfig:
    return dataclasses.replace(ep.EpisodeConfig(), **overrides)


def _assert_partners_valid(pairs: np.ndarray) -> None:
    assert pairs.dtype == np.int32 and pairs.ndim == 2 and pairs.shape[1] == 2
    assert np.all(pairs[:, 0] != pairs[:, 1]), "conditioning must differ from target"
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs), "duplicate pairs"


def test_config_section_is_converted_and_validated():
    from configs.mnist import get_config

    cfg = ep.EpisodeConfig.from_config(get_config().episodes)
    assert cfg.kind == "label" and cfg.num_offtopic == 2  # 0.25 * 8
    with pytest.raises(ValueError, match="episodes.kind"):
        _cfg(kind="urls")
    with pytest.raises(ValueError, match="low < high"):
        _cfg(filter_mode="quantile", low=0.9, high=0.1)
    with pytest.raises(ValueError, match="low < high"):
        _cfg(filter_mode="quantile", low=0.1, high=1.5)


def test_label_pairs_share_the_label_and_count_per_target():
    cls, labels = _clustered(200)
    cfg = _cfg(kind="label", filter=False, pairs_per_image=3)
    pairs, report = ep.build_pairs(cls, labels, cfg, seed=1)
    _assert_partners_valid(pairs)
    assert np.all(labels[pairs[:, 0]] == labels[pairs[:, 1]])
    # Every image is the target of exactly pairs_per_image pairs (classes of 40 images).
    np.testing.assert_array_equal(np.bincount(pairs[:, 1], minlength=200), np.full(200, 3))
    assert report["num_episodes"] == NUM_CLASSES and report["num_kept"] == 600
    assert report["label_mismatch_fraction_before"] == 0.0


def test_self_pairs_are_the_identity_and_never_filtered():
    cls, labels = _clustered(50)
    pairs, report = ep.build_pairs(cls, labels, _cfg(kind="self", filter=True), seed=0)
    np.testing.assert_array_equal(pairs, np.stack([np.arange(50), np.arange(50)], 1))
    assert report["filter"] is False and report["low_cosine"] is None and report["num_kept"] == 50


def test_small_episodes_give_capped_pairs_and_singletons_are_dropped():
    # Class 0: 3 images (2 partners each, below pairs_per_image=4); class 1: a singleton.
    labels = np.array([0, 0, 0, 1, 2, 2, 2, 2, 2, 2])
    cls = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    pairs, report = ep.build_pairs(cls, labels, _cfg(kind="label", filter=False), seed=0)
    _assert_partners_valid(pairs)
    assert report["num_singleton_episodes_dropped"] == 1
    assert 3 not in pairs, "the singleton image cannot be in a pair"
    counts = np.bincount(pairs[:, 1], minlength=10)
    np.testing.assert_array_equal(counts, [2, 2, 2, 0, 4, 4, 4, 4, 4, 4])
    # Class 0 has only 2 partners per target: all of them are used.
    for t in range(3):
        assert set(pairs[pairs[:, 1] == t, 0]) == {0, 1, 2} - {t}


def test_kmeans_recovers_separated_blobs_and_pairs_share_a_cluster():
    cls, labels = _clustered(300, spread=0.05, seed=3)
    cfg = _cfg(kind="kmeans", num_clusters=NUM_CLASSES, filter=False)
    groups = ep.build_episodes("kmeans", cls, labels, cfg, seed=7)
    assert len(groups) == NUM_CLASSES
    for g in groups:  # each cluster is exactly one blob
        assert np.unique(labels[g]).size == 1
    assert sorted(g.size for g in groups) == [60] * NUM_CLASSES
    cluster_of = np.empty(300, dtype=int)
    for k, g in enumerate(groups):
        cluster_of[g] = k
    pairs, report = ep.build_pairs(cls, labels, cfg, seed=7)
    _assert_partners_valid(pairs)
    assert np.all(cluster_of[pairs[:, 0]] == cluster_of[pairs[:, 1]])
    assert report["episode_label_purity"] == 1.0
    # Same seed, same clustering; assignments are a function of the seed only.
    a1, c1 = ep.kmeans(ep.l2_normalize(cls), NUM_CLASSES, seed=7)
    a2, c2 = ep.kmeans(ep.l2_normalize(cls), NUM_CLASSES, seed=7)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(c1, c2)


def test_kmeans_centroids_are_cluster_means():
    x = np.random.default_rng(0).normal(size=(120, 3)).astype(np.float32)
    assign, centroids = ep.kmeans(x, 4, seed=0)
    for k in range(4):
        np.testing.assert_allclose(centroids[k], x[assign == k].mean(0), atol=1e-5)
    # Lloyd fixed point: every point is at its nearest centroid.
    d = ((x[:, None] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assign, d.argmin(1))


def test_pages_have_their_size_and_offtopic_share():
    _, labels = _clustered(400)
    pages, offtopic = ep.simulate_pages(labels, page_size=8, num_offtopic=2, seed=0)
    assert pages.shape[1] == 8 and pages.shape[0] == 400 // 8
    np.testing.assert_array_equal(offtopic.sum(1), np.full(len(pages), 2))
    assert np.unique(pages).size == pages.size, "an image sits on at most one page"
    for page, off in zip(pages, offtopic, strict=True):
        on_labels = labels[page[~off]]
        assert np.unique(on_labels).size == 1, "on-topic images share the page's class"
        assert not np.isin(labels[page[off]], on_labels).any(), "off-topic = another class"
    # Off-topic images are not always in the same slots.
    assert offtopic[:, -1].any() and not offtopic[:, -1].all()


def test_filter_removes_offtopic_pairs_from_pages():
    cls, labels = _clustered(800, spread=0.4)
    cfg = _cfg(kind="pages", page_size=8, page_offtopic=0.25, filter_mode="absolute", low=0.5)
    cfg = dataclasses.replace(cfg, high=0.999)
    pairs, report = ep.build_pairs(cls, labels, cfg, seed=0)
    _assert_partners_valid(pairs)
    before, after = report["offtopic_pair_fraction_before"], report["offtopic_pair_fraction_after"]
    # Every pair of an off-topic target (2/8 of targets) is off-topic; an on-topic target
    # draws its partners uniformly from 7 page mates, 2 of them off-topic: 2/8 + 6/8 * 2/7.
    assert before == pytest.approx(2 / 8 + 6 / 8 * 2 / 7, abs=0.03)
    assert after < 0.15, (before, after)
    assert report["label_mismatch_fraction_after"] < 0.15
    # Quantile mode with a high lower quantile removes the noise too.
    q_cfg = dataclasses.replace(cfg, filter_mode="quantile", low=0.5, high=1.0)
    _, q_report = ep.build_pairs(cls, labels, q_cfg, seed=0)
    assert q_report["offtopic_pair_fraction_after"] < 0.5 * before
    # Same-page pairs: both images belong to the same simulated page.
    pages, _ = ep.simulate_pages(labels, 8, 2, seed=0)
    page_of = np.full(800, -1)
    for i, page in enumerate(pages):
        page_of[page] = i
    assert np.all(page_of[pairs[:, 0]] == page_of[pairs[:, 1]]) and np.all(page_of[pairs] >= 0)


def test_absolute_filter_keeps_only_strictly_in_range_pairs():
    cls, labels = _clustered(300, spread=1.0)
    cfg = _cfg(kind="label", filter_mode="absolute", low=0.2, high=0.6, pairs_per_image=4)
    candidates, _, _ = ep.candidate_pairs(cls, labels, cfg, seed=0)
    sims = ep.pair_similarity(cls, candidates)
    pairs, report = ep.build_pairs(cls, labels, cfg, seed=0)
    kept_sims = ep.pair_similarity(cls, pairs)
    assert np.all((kept_sims > 0.2) & (kept_sims < 0.6))
    assert report["num_kept"] == np.sum((sims > 0.2) & (sims < 0.6)) == len(pairs)
    assert report["num_dropped_low"] == np.sum(sims <= 0.2) > 0
    assert report["num_dropped_high"] == np.sum(sims >= 0.6) > 0
    assert report["num_kept"] + report["num_dropped_low"] + report["num_dropped_high"] == len(sims)
    assert (report["low_cosine"], report["high_cosine"]) == (0.2, 0.6)


def test_filter_bounds_are_strict():
    sims = np.array([0.1, 0.3, 0.30001, 0.7, 0.9], dtype=np.float32)
    np.testing.assert_array_equal(
        ep.filter_pairs(sims, 0.3, 0.7), [False, False, True, False, False]
    )


def test_quantile_thresholds_translate_to_cosine():
    cls, labels = _clustered(400, spread=1.0)
    cfg = _cfg(kind="label", filter_mode="quantile", low=0.1, high=0.8)
    candidates, _, _ = ep.candidate_pairs(cls, labels, cfg, seed=2)
    sims = ep.pair_similarity(cls, candidates)
    pairs, report = ep.build_pairs(cls, labels, cfg, seed=2)
    q_low, q_high = np.quantile(sims.astype(np.float64), [0.1, 0.8])
    assert report["low_cosine"] == pytest.approx(q_low)
    assert report["high_cosine"] == pytest.approx(q_high)
    assert report["kept_fraction"] == pytest.approx(0.7, abs=0.01)
    kept_sims = ep.pair_similarity(cls, pairs)
    assert kept_sims.min() > q_low and kept_sims.max() < q_high


def test_pairs_are_deterministic_from_the_seed():
    cls, labels = _clustered(200)
    for kind in ("label", "kmeans", "pages"):
        cfg = _cfg(kind=kind, num_clusters=NUM_CLASSES, page_size=4, page_offtopic=0.25)
        a, rep_a = ep.build_pairs(cls, labels, cfg, seed=5)
        b, rep_b = ep.build_pairs(cls, labels, cfg, seed=5)
        c, _ = ep.build_pairs(cls, labels, cfg, seed=6)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(rep_a.pop("similarities"), rep_b.pop("similarities"))
        assert rep_a == rep_b
        assert a.shape != c.shape or not np.array_equal(a, c), kind


def test_no_surviving_pair_is_a_clear_error():
    cls, labels = _clustered(60)
    cfg = _cfg(kind="label", filter_mode="absolute", low=0.9999, high=1.0)
    with pytest.raises(ValueError, match="no pair survived"):
        ep.build_pairs(cls, labels, cfg, seed=0)


def test_similarity_report_is_written_atomically(tmp_path):
    cls, labels = _clustered(200, spread=1.0)
    cfg = _cfg(kind="label")
    pairs, report = ep.build_pairs(cls, labels, cfg, seed=0)
    sims = report["similarities"]
    candidates = ep.candidate_pairs(cls, labels, cfg, seed=0)[0]
    np.testing.assert_array_equal(sims, ep.pair_similarity(cls, candidates))
    png, js = tmp_path / "out" / "sims.png", tmp_path / "out" / "sims.json"
    low, high = report["low_cosine"], report["high_cosine"]
    ep.save_similarity_report(sims, low, high, report, str(png), str(js))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(js.read_text())
    assert saved["num_kept"] == len(pairs) == report["num_kept"]
    assert saved["low_cosine"] == pytest.approx(report["low_cosine"])
    assert sum(saved["histogram"]["counts"]) == len(sims) and "similarities" not in saved
    assert sorted(os.listdir(tmp_path / "out")) == ["sims.json", "sims.png"]  # no temp files
