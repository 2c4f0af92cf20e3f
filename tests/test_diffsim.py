"""DiffSim on the U-ViT: the AAS formula, exact identities, batching, options and errors.

A tiny U-ViT from configs/mnist.py:tiny with random parameters: the identities (1 for
identical images, symmetry, matrix == pairwise score) hold for any weights, and the
translation property below is one of the architecture (see its docstring).
"""

import dataclasses

import jax
import numpy as np
import pytest

from configs import mnist
from semantica_jax.data import mnist as mnist_data
from semantica_jax.metrics import diffsim
from semantica_jax.models import uvit

PATCH, TOKEN_DIM = 4, 16  # the fake encoder: 4x4 pixel patches as tokens (tiny's T=49, D=16)
BLOCK = "transformer_0/block_0"  # the only transformer block of the tiny model


def _model(variant: str) -> uvit.UViT:
    cfg = mnist.get_config(variant)
    return uvit.UViT(uvit.UViTConfig.from_config(cfg.model, cfg.data.image_size, cfg.data.channels))


def _fake_encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stand-in for the frozen encoder: pixel patches [N, 49, 16], mean CLS."""
    x = np.asarray(images, np.float32)
    n, s = len(x), x.shape[1] // PATCH
    tokens = x.reshape(n, s, PATCH, s, PATCH).transpose(0, 1, 3, 2, 4).reshape(n, s * s, -1)
    return tokens, tokens.mean(axis=1)


@pytest.fixture(scope="module")
def dm() -> diffsim.DiffSimModel:
    model = _model("tiny")
    inputs = uvit.example_inputs(model.config, 1, (28 // PATCH) ** 2, TOKEN_DIM)
    init = jax.jit(lambda rng: model.init(rng, *inputs, train=False)["params"])
    return diffsim.DiffSimModel(model, init(jax.random.key(0)), _fake_encode)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), np.uint8)


def _np_attention(q, k, v):
    """Per-example, per-head softmax(q kᵀ / √d) v with explicit loops."""
    out = np.zeros(q.shape, np.float64)
    for i in range(q.shape[0]):
        for h in range(q.shape[1]):
            logits = q[i, h] @ k[i, h].T / np.sqrt(q.shape[-1])
            w = np.exp(logits - logits.max(-1, keepdims=True))
            out[i, h] = (w / w.sum(-1, keepdims=True)) @ v[i, h]
    return out


def _np_cos(x, y):
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    return (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)


def test_aas_matches_numpy():
    rng = np.random.default_rng(1)
    n, heads, tq, tk, d = 3, 4, 7, 5, 8
    q_a = rng.normal(size=(n, heads, tq, d))
    q_b = rng.normal(size=(n, heads, tq, d))
    k_a, v_a, k_b, v_b = (rng.normal(size=(n, heads, tk, d)) for _ in range(4))
    want = _np_cos(_np_attention(q_a, k_b, v_b), _np_attention(q_a, k_a, v_a))
    np.testing.assert_allclose(diffsim.aas(q_a, k_a, v_a, k_b, v_b), want, atol=1e-5)
    want_b = _np_cos(_np_attention(q_b, k_a, v_a), _np_attention(q_b, k_b, v_b))
    got = diffsim.diffsim_from_features((q_a, k_a, v_a), (q_b, k_b, v_b))
    np.testing.assert_allclose(got, 0.5 * (want + want_b), atol=1e-5)
    want_o = _np_cos(_np_attention(q_a, k_a, v_a), _np_attention(q_b, k_b, v_b))
    got_o = diffsim.attention_output_cosine((q_a, k_a, v_a), (q_b, k_b, v_b))
    np.testing.assert_allclose(got_o, want_o, atol=1e-5)


def test_encoder_token_aas_is_symmetric_aas_of_tokens():
    rng = np.random.default_rng(2)
    ta, tb = rng.normal(size=(2, 2, 6, 5))
    one = lambda t: t[:, None]  # one head
    a2b = _np_cos(_np_attention(one(ta), one(tb), one(tb)), _np_attention(*(one(ta),) * 3))
    b2a = _np_cos(_np_attention(one(tb), one(ta), one(ta)), _np_attention(*(one(tb),) * 3))
    np.testing.assert_allclose(diffsim.encoder_token_aas(ta, tb), 0.5 * (a2b + b2a), atol=1e-5)
    np.testing.assert_allclose(diffsim.encoder_token_aas(ta, ta), 1.0, atol=1e-6)


def test_block_names():
    tiny, default = _model("tiny"), _model("default")
    assert diffsim.block_names(tiny) == ["transformer_0/block_0"]
    assert diffsim.cross_block_names(tiny) == ["transformer_0/block_0"]
    assert diffsim.block_names(default) == [f"transformer_0/block_{j}" for j in range(4)]
    assert diffsim.cross_block_names(default) == diffsim.block_names(default)
    # Mirrored stages: down, lowest, up; only the conditioned (lowest) stage cross-attends.
    two = uvit.UViT(
        dataclasses.replace(
            tiny.config,
            image_size=32,
            transformer_blocks=(1, 2),
            transformer_widths=(32, 32),
            transformer_conditioned=(False, True),
        )
    )
    assert diffsim.block_names(two) == [
        "transformer_0_down/block_0",
        "transformer_1/block_0",
        "transformer_1/block_1",
        "transformer_0_up/block_0",
    ]
    assert diffsim.cross_block_names(two) == ["transformer_1/block_0", "transformer_1/block_1"]


def test_features_shapes(dm, images):
    q, k, v = diffsim.features(dm, images[:3], blocks=BLOCK)[BLOCK]
    assert q.shape == k.shape == v.shape == (3, 2, 49, 16)  # 7x7 tokens, 2 heads of 16
    q, k, v = diffsim.features(dm, images[:3], method="c")[BLOCK]
    assert q.shape == k.shape == v.shape == (3, 2, 49, 16)  # 49 encoder tokens as keys
    # Queries depend on the image; cross-attention keys/values only on the encoder tokens.
    cond = _fake_encode(images[:3] / 127.5 - 1.0)  # what dm.encode sees for images[:3]
    q_b, k_b, v_b = diffsim.features(dm, images[3:6], method="c", cond=cond)[BLOCK]
    assert np.abs(q_b - q).max() > 1e-3
    np.testing.assert_allclose(k_b, k, atol=1e-5)
    np.testing.assert_allclose(v_b, v, atol=1e-5)


@pytest.mark.parametrize("method", ["s", "c", "o"])
def test_identical_one_different_less_symmetric(dm, images, method):
    a, b = images[:3], images[3:]
    same = diffsim.score(dm, a, a, method=method)
    np.testing.assert_allclose(same, 1.0, atol=1e-6)
    ab = diffsim.score(dm, a, b, method=method)
    assert np.all(ab < 0.999), ab
    np.testing.assert_allclose(diffsim.score(dm, b, a, method=method), ab, atol=1e-6)


def test_score_matches_features(dm, images):
    a, b = images[:3], images[3:]
    lam = 1.5
    for noise in ("shared", "independent"):
        fa = diffsim.features(dm, a, logsnr=lam, seed=4, noise=noise, stream=0)
        fb = diffsim.features(dm, b, logsnr=lam, seed=4, noise=noise, stream=1)
        want = diffsim.diffsim_from_features(fa[BLOCK], fb[BLOCK])
        got = diffsim.score(dm, a, b, logsnr=lam, seed=4, noise=noise)
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("method", ["s", "c", "o"])
def test_matrix_equals_pairwise_score(dm, images, method):
    queries, gallery = images[:3], images[3:]
    got = diffsim.matrix(dm, queries, gallery, method=method, seed=3, batch_size=3, chunk=2)
    assert got.shape == (3, 3)
    # Every (query, gallery) pair as a row of one paired score (batches of 3, as above).
    pairs = diffsim.score(
        dm,
        queries.repeat(3, axis=0),
        np.tile(gallery, (3, 1, 1, 1)),
        method=method,
        seed=3,
        batch_size=3,
    )
    np.testing.assert_allclose(got, pairs.reshape(3, 3), atol=1e-5)


def test_self_matrix(dm, images):
    got = diffsim.matrix(dm, images[:3], chunk=2, batch_size=3)  # padded tiles
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, got.T, atol=1e-6)
    assert np.all(got[~np.eye(3, dtype=bool)] < 0.999)


def test_batching_does_not_change_scores(dm, images):
    a, b = images[:5], images[1:]
    np.testing.assert_allclose(
        diffsim.score(dm, a, b, batch_size=2, noise="independent"),
        diffsim.score(dm, a, b, batch_size=3, noise="independent"),
        atol=1e-5,
    )


def test_seed_and_noise_modes(dm, images):
    a, b = images[:3], images[3:]
    first = diffsim.score(dm, a, b, seed=7)
    np.testing.assert_array_equal(diffsim.score(dm, a, b, seed=7), first)
    assert np.abs(diffsim.score(dm, a, b, seed=8) - first).max() > 1e-4
    independent = diffsim.score(dm, a, b, seed=7, noise="independent")
    np.testing.assert_array_equal(diffsim.score(dm, a, b, seed=7, noise="independent"), independent)
    assert np.abs(independent - first).max() > 1e-4
    # Separate noise draws: an image against itself no longer scores exactly 1.
    self_independent = diffsim.score(dm, a, a, noise="independent")
    assert np.all(self_independent < 1.0 - 1e-4) and np.all(self_independent > 0.5)


def test_averaging_over_logsnr_and_seeds(dm, images):
    a, b = images[:3], images[3:]
    grid = [diffsim.score(dm, a, b, logsnr=lam, seed=s) for lam in (-2.0, 3.0) for s in (0, 1)]
    both = diffsim.score(dm, a, b, logsnr=(-2.0, 3.0), seed=(0, 1))
    np.testing.assert_allclose(both, np.mean(grid, axis=0), atol=1e-6)
    assert np.abs(grid[0] - grid[2]).max() > 1e-4  # lambda matters
    got = diffsim.matrix(dm, a, b, logsnr=(-2.0, 3.0), seed=(0, 1))
    np.testing.assert_allclose(np.diag(got), both, atol=1e-5)


def test_errors(dm, images):
    a = images[:2]
    with pytest.raises(ValueError, match=r"unknown block 'nope'.*transformer_0/block_0"):
        diffsim.score(dm, a, a, block="nope")
    for bad in (float("inf"), float("nan"), (0.0, -float("inf"))):
        with pytest.raises(ValueError, match="logsnr must be finite"):
            diffsim.score(dm, a, a, logsnr=bad)
    with pytest.raises(ValueError, match="noise"):
        diffsim.score(dm, a, a, noise="fresh")
    with pytest.raises(ValueError, match="method"):
        diffsim.score(dm, a, a, method="x")
    with pytest.raises(ValueError, match=r"\[N>0, 28, 28, 1\]"):
        diffsim.score(dm, a[..., 0], a[..., 0])
    with pytest.raises(ValueError, match="encode"):
        diffsim.score(dataclasses.replace(dm, encode=None), a, a, method="c")
    # A block without cross-attention (unconditioned stage) and a decoder without any.
    two = dataclasses.replace(
        dm.model.config,
        image_size=32,
        transformer_blocks=(1, 1),
        transformer_widths=(32, 32),
        transformer_conditioned=(False, True),
    )
    two_dm = diffsim.DiffSimModel(uvit.UViT(two), params=None)
    x32 = np.zeros((1, 32, 32, 1), np.uint8)
    with pytest.raises(ValueError, match=r"has no cross-attention.*\['transformer_1/block_0'\]"):
        diffsim.score(two_dm, x32, x32, block="transformer_0_down/block_0", method="c")
    film = diffsim.DiffSimModel(
        uvit.UViT(dataclasses.replace(dm.model.config, cross_attention=False)), params=None
    )
    with pytest.raises(ValueError, match="has none"):
        diffsim.score(film, a, a, method="c")


def test_translated_copy_scores_higher_than_other_digit(dm, mnist_data_dir):
    """A digit shifted by one decoder token (4 px) is more similar than another digit.

    This holds with random weights: the conv stem and patchify are translation-equivariant
    and A's queries find the shifted keys wherever they moved (the alignment of AAS), while
    the output cosine without alignment ('o') is not shift-invariant. Trained weights are not
    needed for it. A 1 px shift (a quarter token) holds on average only.
    """
    images, labels = mnist_data.load_split("mnist", "test", mnist_data_dir, 28, 1, 64)
    a = images[:16]
    b = np.stack([images[16:][labels[16:] != labels[i]][0] for i in range(16)])  # another class
    shifted = np.roll(a, (4, 4), axis=(1, 2))  # MNIST's empty 4 px border: a pure translation
    lam = 4.0
    translated = diffsim.score(dm, a, shifted, logsnr=lam)
    other = diffsim.score(dm, a, b, logsnr=lam)
    assert np.all(translated > other), (translated, other)
    unaligned = diffsim.score(dm, a, shifted, logsnr=lam, method="o")
    assert translated.mean() - other.mean() > 2 * (1.0 - translated.mean())
    assert np.all(unaligned < translated)
    small = diffsim.score(dm, a, np.roll(a, (1, 1), axis=(1, 2)), logsnr=lam)
    assert small.mean() > other.mean()


@pytest.mark.parametrize("method", ["s", "o"])
def test_indexed_scores_match_paired_features(dm, images, method):
    feats = diffsim.features(dm, images, blocks=BLOCK, logsnr=1.0)[BLOCK]
    ia, ib = np.array([0, 0, 2, 5, 3]), np.array([1, 4, 2, 0, 3])
    got = diffsim.indexed_scores(feats, ia, ib, method)
    fa, fb = (tuple(x[idx] for x in feats) for idx in (ia, ib))
    combine = diffsim.attention_output_cosine if method == "o" else diffsim.diffsim_from_features
    np.testing.assert_allclose(got, combine(fa, fb), atol=1e-5)
    assert got[2] == 1.0 and got[4] == 1.0  # an image against itself: exactly 1


def test_settings_and_options(dm, images):
    a, b = images[:3], images[3:]
    settings = diffsim.Settings(logsnr=(-1.0, 2.0), seed=5, method="o")
    by_settings = diffsim.score(dm, a, b, settings)
    np.testing.assert_array_equal(
        by_settings, diffsim.score(dm, a, b, logsnr=(-1.0, 2.0), seed=5, method="o")
    )
    # Keyword options override the settings.
    np.testing.assert_array_equal(
        diffsim.score(dm, a, b, settings, method="s"),
        diffsim.score(dm, a, b, logsnr=(-1.0, 2.0), seed=5),
    )
    np.testing.assert_allclose(np.diag(diffsim.matrix(dm, a, b, settings)), by_settings, atol=1e-5)
    assert diffsim.check_settings(dm.model) == (BLOCK,)
    assert diffsim.check_settings(dm, method="c", block=[BLOCK, BLOCK]) == (BLOCK, BLOCK)
    with pytest.raises(ValueError, match="unknown block"):
        diffsim.check_settings(dm, block="transformer_0/block_9")
    with pytest.raises(TypeError):
        diffsim.score(dm, a, b, blocks=BLOCK)  # `features` spells it blocks; score: block


def test_float_input_range_is_image_ios(dm, images):
    x = images[:2].astype(np.float32) / 127.5 - 1.0
    overshoot = np.where(x >= 1.0, 1.3, np.where(x <= -1.0, -1.4, x))  # clipped back to x
    np.testing.assert_array_equal(diffsim.score(dm, x, overshoot), 1.0)
    with pytest.raises(ValueError, match="rescale"):
        diffsim.score(dm, x * 127.5 + 127.5, x)  # 0..255 floats: a scale mistake
