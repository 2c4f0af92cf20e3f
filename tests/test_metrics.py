"""Values of FID, precision/recall, the K-shot protocol and the variation metrics."""

import jax
import numpy as np
import pytest

from semantica_jax.metrics import fewshot, fid, precision_recall, variation

# ----------------------------------------------------------------------------- helpers


def _random_covariance(rng: np.random.Generator, f: int, rank: int) -> np.ndarray:
    a = rng.normal(size=(f, rank))
    return a @ a.T / rank


def _fid_reference_eig(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """FID with Tr((S_a S_b)^1/2) = sum sqrt(eig(S_a S_b)) (general eig, not eigh)."""
    eigenvalues = np.linalg.eigvals(sigma_a @ sigma_b)
    trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues.real, 0.0, None)))
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt)


def _brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Direct float64 loops over the definition of improved precision/recall."""

    def radii(points):
        out = []
        for i, p in enumerate(points):
            d = sorted(np.sum((p - q) ** 2) for j, q in enumerate(points) if j != i)
            out.append(d[k - 1])
        return out

    def coverage(queries, ref):
        r = radii(ref)
        hits = [
            any(np.sum((q - p) ** 2) <= rp for p, rp in zip(ref, r, strict=True)) for q in queries
        ]
        return float(np.mean(hits))

    return coverage(fake, real), coverage(real, fake)


# ----------------------------------------------------------------------------- FID


def test_gaussian_stats_unbiased():
    x = np.random.default_rng(0).normal(size=(50, 6))
    mu, sigma = fid.gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False, ddof=1), rtol=1e-12)


def test_fid_self_is_zero_and_noise_is_large():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    scale = np.trace(np.cov(x, rowvar=False))
    assert fid.frechet_distance(x, x) < 1e-6 * scale
    noise = rng.uniform(-20, 20, size=(400, 16))  # isotropic, much wider than x
    assert fid.frechet_distance(x, noise) > scale


def test_fid_closed_form_diagonal_gaussians():
    # Commuting (diagonal) covariances: FID = |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(2)
    mu_a, mu_b = np.array([0.0, 1.0, -1.0, 2.0]), np.array([1.0, 1.0, 0.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([4.0, 1.0, 1.0, 2.0])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    exact = fid.frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert exact == pytest.approx(expected, rel=1e-12)
    a = mu_a + rng.normal(size=(40000, 4)) * np.sqrt(var_a)
    b = mu_b + rng.normal(size=(40000, 4)) * np.sqrt(var_b)
    assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("rank", [64, 20])  # full rank and singular (N < F like) covariances
def test_fid_matches_eig_reference(rank):
    rng = np.random.default_rng(3)
    f = 64
    sigma_a, sigma_b = _random_covariance(rng, f, rank), _random_covariance(rng, f, 64)
    mu_a, mu_b = rng.normal(size=f), rng.normal(size=f)
    got = fid.frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b)
    want = _fid_reference_eig(mu_a, sigma_a, mu_b, sigma_b)
    assert got == pytest.approx(want, rel=1e-8, abs=1e-8)


def test_fid_non_commuting_gaussians_sampled():
    rng = np.random.default_rng(4)
    sigma_a, sigma_b = _random_covariance(rng, 3, 3), _random_covariance(rng, 3, 3)
    mu_a, mu_b = np.zeros(3), np.ones(3)
    want = _fid_reference_eig(mu_a, sigma_a, mu_b, sigma_b)
    a = rng.multivariate_normal(mu_a, sigma_a, size=40000)
    b = rng.multivariate_normal(mu_b, sigma_b, size=40000)
    assert fid.frechet_distance(a, b) == pytest.approx(want, rel=0.03)


def test_fid_bad_input():
    with pytest.raises(ValueError, match="feature widths differ"):
        fid.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\[N,F\]"):
        fid.frechet_distance(np.zeros((5, 3, 1)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fid.frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))


# ----------------------------------------------------------------------------- P/R


def test_pr_identical_sets_is_one():
    x = np.random.default_rng(5).normal(size=(300, 8))
    assert precision_recall.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_pr_far_apart_sets_is_zero():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(100, 8))
    fake = rng.normal(size=(120, 8)) + 100.0
    assert precision_recall.precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_pr_hand_made_case():
    # Real: 0,1,2,3,10 on the x axis and an outlier (0,50); fake: -1,3,5,20.
    # k=1: real radii^2 = 1,1,1,1,49,2500; fake radii^2 = 16,4,4,225.
    # Precision: -1 (d^2=1 to 0, radius 1: tie counts, <=), 3, 5 (25 <= 49) in; 20 out.
    # Recall: every x-axis real point is covered; (0,50) is >= 2501 from every fake.
    real = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [10, 0], [0, 50]], np.float32)
    fake = np.array([[-1, 0], [3, 0], [5, 0], [20, 0]], np.float32)
    np.testing.assert_array_equal(precision_recall.knn_sq_radii(real, k=1), [1, 1, 1, 1, 49, 2500])
    np.testing.assert_array_equal(precision_recall.knn_sq_radii(fake, k=1), [16, 4, 4, 225])
    np.testing.assert_array_equal(precision_recall.knn_radii(fake, k=2), [6, 4, 6, 17])
    for k in (1, 2):
        p, r = precision_recall.precision_recall(real, fake, k=k, block_size=2)
        assert (p, r) == (0.75, pytest.approx(5 / 6)), k
        assert (p, r) == pytest.approx(_brute_force_pr(real, fake, k))


@pytest.mark.parametrize("k", [1, 3])
def test_pr_blocked_equals_unblocked_and_brute_force(k):
    rng = np.random.default_rng(7)
    real = rng.normal(size=(37, 5)).astype(np.float32)
    fake = (rng.normal(size=(23, 5)) * 0.7 + 0.8).astype(np.float32)
    full = precision_recall.precision_recall(real, fake, k=k, block_size=1000)
    for block_size in (1, 5, 16):
        assert precision_recall.precision_recall(real, fake, k=k, block_size=block_size) == full
        # Matmuls of other shapes sum in another order: equal up to float32 round-off.
        np.testing.assert_allclose(
            precision_recall.knn_sq_radii(real, k, block_size),
            precision_recall.knn_sq_radii(real, k, 1000),
            rtol=1e-5,
        )
    assert full == pytest.approx(_brute_force_pr(real, fake, k))
    assert 0.0 < full[0] < 1.0 and 0.0 < full[1] < 1.0  # a non-trivial case


def test_pr_bad_input():
    with pytest.raises(ValueError, match="1 <= k < N"):
        precision_recall.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(ValueError, match="feature widths differ"):
        precision_recall.precision_recall(np.zeros((10, 2)), np.ones((10, 3)), k=3)


# ----------------------------------------------------------------------------- K-shot

NUM_CLASSES, PER_CLASS, DIM = 10, 20, 8


def _class_data(seed: int, per_class: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """Images [N,2,2,2] in [-1,1]: class blobs (features = flattened pixels), shuffled."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).uniform(-0.8, 0.8, size=(NUM_CLASSES, DIM))
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), per_class))
    images = centres[labels] + 0.05 * rng.normal(size=(labels.shape[0], DIM))
    return images.reshape(-1, 2, 2, 2).astype(np.float32), labels.astype(np.int32)


def _flatten(images: np.ndarray) -> np.ndarray:
    return np.asarray(images).reshape(images.shape[0], -1)


def test_select_conditioning_one_per_class():
    _, labels = _class_data(0)
    picks = fewshot.select_conditioning(labels, NUM_CLASSES, seed=3)
    assert picks.dtype == np.int32 and np.all(np.diff(picks) > 0)
    np.testing.assert_array_equal(np.sort(labels[picks]), np.arange(NUM_CLASSES))
    np.testing.assert_array_equal(picks, fewshot.select_conditioning(labels, NUM_CLASSES, 3))
    assert not np.array_equal(picks, fewshot.select_conditioning(labels, NUM_CLASSES, 4))
    random_picks = fewshot.select_conditioning(labels, 4, seed=0)
    assert len(set(random_picks.tolist())) == 4
    np.testing.assert_array_equal(
        fewshot.select_conditioning(labels, labels.shape[0], 0), np.arange(labels.shape[0])
    )
    with pytest.raises(ValueError, match="k must be in"):
        fewshot.select_conditioning(labels, labels.shape[0] + 1, 0)


def test_samples_per_conditioning():
    assert fewshot.samples_per_conditioning(2000, 10) == 200
    with pytest.raises(ValueError, match="divisible"):
        fewshot.samples_per_conditioning(2000, 3)


def _copier(real_images):
    def generate(cond_indices, num_per_cond, rng):
        del rng
        return np.repeat(real_images[cond_indices], num_per_cond, axis=0)

    return generate


def _same_class_real(real_labels, pool_images, pool_labels):
    """Returns random *other* real images (a disjoint pool) of the conditioning class."""

    def generate(cond_indices, num_per_cond, rng):
        seed = int(jax.random.randint(rng, (), 0, 2**30))
        draw = np.random.default_rng(seed)
        rows = [
            draw.choice(np.flatnonzero(pool_labels == real_labels[i]), num_per_cond, False)
            for i in cond_indices
        ]
        return pool_images[np.concatenate(rows)]

    return generate


def test_kshot_copier_vs_same_class_model():
    real, labels = _class_data(seed=1)
    # Other draws of the same distribution, enough to sample without replacement.
    pool, pool_labels = _class_data(seed=2, per_class=2 * PER_CLASS)
    n = real.shape[0]
    rng = jax.random.key(0)
    common = dict(feature_fn=_flatten, rng=rng, seed=0)

    copier = fewshot.run_kshot(real, labels, NUM_CLASSES, generate_fn=_copier(real), **common)
    model = _same_class_real(labels, pool, pool_labels)
    good = fewshot.run_kshot(real, labels, NUM_CLASSES, generate_fn=model, **common)
    full = fewshot.run_kshot(real, labels, n, generate_fn=_copier(real), **common)

    # Copier, one-shot: only the 10 conditioning images themselves are recalled.
    assert copier.metrics["recall"] <= NUM_CLASSES / n + 1e-9
    assert copier.metrics["precision"] == 1.0
    assert good.metrics["recall"] > 0.8 and good.metrics["precision"] > 0.8
    # Full-set protocol (every real image conditions itself): the copier looks perfect.
    assert full.metrics["recall"] == 1.0 and full.metrics["fid"] < 1e-6
    # Copies lack the within-class spread, which FID sees (weakly: ~10x here).
    assert copier.metrics["fid"] > 3 * good.metrics["fid"]

    assert copier.metrics["num_per_cond"] == PER_CLASS and copier.samples.shape == real.shape
    np.testing.assert_array_equal(
        copier.samples[:PER_CLASS], np.repeat(real[copier.cond_indices[:1]], PER_CLASS, 0)
    )
    sample_labels = labels[copier.cond_indices]
    assert sorted(sample_labels.tolist()) == list(range(NUM_CLASSES))


def test_kshot_rejects_wrong_sample_count():
    real, labels = _class_data(seed=1)

    def short(cond_indices, num_per_cond, rng):
        return _copier(real)(cond_indices, num_per_cond - 1, rng)

    with pytest.raises(ValueError, match="expected 200"):
        fewshot.run_kshot(
            real, labels, NUM_CLASSES, generate_fn=short, feature_fn=_flatten, rng=jax.random.key(0)
        )


# ----------------------------------------------------------------------------- variation


def test_alignment_and_diversity_of_copies():
    cond = np.random.default_rng(8).normal(size=(5, 7))
    copies = np.repeat(cond[:, None], 4, axis=1)
    assert variation.alignment(cond, copies) == pytest.approx(1.0, abs=1e-12)
    assert variation.diversity(copies) == 0.0


def test_alignment_and_diversity_hand_values():
    cond = np.array([[1.0, 0.0]])
    samples = np.array([[[2.0, 0.0], [0.0, 3.0]]])  # cosines 1 and 0
    assert variation.alignment(cond, samples) == pytest.approx(0.5)
    assert variation.alignment(-cond, samples[:, :1]) == pytest.approx(-1.0)
    line = np.array([[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], [[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]]])
    # Pairs: (1, 3, 2) -> mean 2; (5, 0, 5) -> mean 10/3.
    assert variation.diversity(line) == pytest.approx((2.0 + 10.0 / 3.0) / 2.0)
    with pytest.raises(ValueError, match=r"\[K,S,F\]"):
        variation.diversity(line.reshape(6, 2))
    with pytest.raises(ValueError, match="cond_emb"):
        variation.alignment(cond.T, samples)


def test_class_consistency_overall_per_class_and_worst():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 0, 0, 1, 1, 1, 2, 0, 0, 0])
    got = variation.class_consistency(predicted, labels)
    assert got["class_consistency"] == pytest.approx(6 / 10)
    assert got["class_consistency_per_class"] == {"0": 0.75, "1": 1.0, "2": 0.25}
    assert got["class_consistency_min"] == 0.25 and got["class_consistency_min_class"] == "2"
    with pytest.raises(ValueError, match="one predicted class per variation"):
        variation.class_consistency(predicted[:3], labels)


def test_encoder_attribution_separates_the_encoders_misses():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    encoder = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 0])  # wrong on 2 zeros and 1 two
    predicted = np.array([0, 1, 1, 0, 1, 1, 2, 2, 0, 0])
    got = variation.encoder_attribution(predicted, encoder, labels)
    assert got["encoder_knn_accuracy"] == pytest.approx(7 / 10)
    assert got["encoder_knn_accuracy_per_class"] == {"0": 0.5, "1": 1.0, "2": 0.75}
    # Where the encoder is right (zeros 0-1, the ones, twos 6-8): one zero, one two missed.
    assert got["class_consistency_encoder_right"] == pytest.approx(5 / 7)
    assert got["class_consistency_encoder_right_per_class"] == pytest.approx(
        {"0": 0.5, "1": 1.0, "2": 2 / 3}
    )
    # Where it is wrong (2, 3, 9): the samples are of the encoder's class in 2 of 3.
    assert got["encoder_wrong_share"] == pytest.approx(3 / 10)
    assert got["follows_encoder_where_wrong"] == pytest.approx(2 / 3)
    right = variation.encoder_attribution(predicted, labels, labels)
    assert right["encoder_wrong_share"] == 0 and np.isnan(right["follows_encoder_where_wrong"])
    assert right["class_consistency_encoder_right"] == pytest.approx(6 / 10)
    with pytest.raises(ValueError, match="one per variation"):
        variation.encoder_attribution(predicted, encoder[:3], labels)


def test_real_floor():
    rng = np.random.default_rng(9)
    feats = rng.normal(size=(1000, 4))
    floor = variation.real_floor(feats, 400, seed=0)
    shifted = fewshot.kshot_metrics(feats[:400], feats[400:800] + 1.0)
    assert floor["n"] == 400 and floor["fid"] < 0.1 < 1.0 < shifted["fid"]
    assert floor["precision"] > 0.9 and floor["recall"] > 0.9
    # Disjoint halves: the same seed gives the same sets, and they are not identical sets.
    assert variation.real_floor(feats, 400, seed=0) == floor
    assert floor["fid"] > 0.0
    other = rng.normal(size=(500, 4))
    assert variation.real_floor(feats, 400, seed=0, other=other)["fid"] < 0.1
    with pytest.raises(ValueError, match="2n"):
        variation.real_floor(feats, 600, seed=0)


def test_per_sample_diversity_averages_to_diversity():
    feats = np.random.default_rng(0).normal(size=(3, 4, 5))
    per = variation.per_sample_diversity(feats)
    assert per.shape == (12,)
    np.testing.assert_allclose(per.mean(), variation.diversity(feats), rtol=1e-12)
    copies = np.repeat(feats[:, :1], 4, axis=1)
    np.testing.assert_array_equal(variation.per_sample_diversity(copies), 0.0)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    from semantica_jax.metrics import bootstrap

    rng = np.random.default_rng(1)
    small = bootstrap.mean_interval(rng.normal(size=50), seed=0)
    large = bootstrap.mean_interval(rng.normal(size=5000), seed=0)
    assert small["low"] <= small["value"] <= small["high"]
    assert large["high"] - large["low"] < 0.3 * (small["high"] - small["low"])
    assert -0.1 < large["low"] < 0.0 < large["high"] < 0.1
    assert bootstrap.separated(large, {"low": 0.5, "high": 0.6}) == -1
    assert bootstrap.separated({"low": 0.7, "high": 0.8}, large) == 1
    assert bootstrap.separated(large, large) == 0
    with pytest.raises(ValueError, match="level"):
        bootstrap.mean_interval(np.ones(3), level=1.5)


def test_precision_recall_intervals_match_the_point_estimates():
    from semantica_jax.metrics import bootstrap

    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(200, 4)), rng.normal(size=(150, 4)) + 0.5
    got = bootstrap.precision_recall_intervals(real, fake, k=3, num_resamples=50)
    want = precision_recall.precision_recall(real, fake, k=3)
    assert got["precision"]["value"] == pytest.approx(want[0])
    assert got["recall"]["value"] == pytest.approx(want[1])
    got_fid = bootstrap.fid_interval(real, fake, num_resamples=20)
    assert got_fid["value"] == pytest.approx(fid.frechet_distance(real, fake))
    assert got_fid["low"] <= got_fid["value"] <= got_fid["high"] and got_fid["bias"] > 0
