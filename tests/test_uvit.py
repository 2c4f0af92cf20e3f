"""U-ViT decoder: shapes, zero init, conditioning paths, null condition, dropout, capture."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu import parameter_overview

from configs import imagenet256, imagenet512, mnist
from semantica_jax.models.uvit import UViT, UViTConfig, attention_features, example_inputs

TOKENS, TOKEN_DIM = 5, 12  # tiny encoder: T context tokens of width D

# 28² -> conv 28², 14² -> transformer 7²; both conditioning paths on.
TINY = UViTConfig(
    image_size=28,
    image_channels=1,
    channels=(4, 8),
    blocks=(1, 1),
    transformer_widths=(16,),
    transformer_blocks=(1,),
    transformer_conditioned=(True,),
    heads=2,
    mlp_ratio=2,
    emb_dim=16,
    cross_attention=True,
    cls_film=True,
    dropout=0.5,
)
# 32² -> conv 32² -> transformer stages at 16² (mirrored, unconditioned) and 8².
TWO_STAGE = dataclasses.replace(
    TINY,
    image_size=32,
    image_channels=3,
    channels=(4,),
    blocks=(1,),
    transformer_widths=(8, 16),
    transformer_blocks=(1, 1),
    transformer_conditioned=(False, True),
    cls_film=False,
)
# 28² with a 2x2 patchify stem -> conv 14² -> transformer 7².
PATCH = dataclasses.replace(TINY, stem="patch", patch_size=2, channels=(8,), blocks=(1,))


B = 4  # one batch size everywhere: every (config, train) pair compiles once


def _shapes(cfg: UViTConfig) -> dict:
    inputs = example_inputs(cfg, B, TOKENS, TOKEN_DIM)
    init = lambda rng, *a: UViT(cfg).init(rng, *a, train=False)
    return jax.eval_shape(init, jax.random.key(0), *inputs)["params"]


@functools.cache
def _real_init(cfg: UViTConfig) -> dict:
    """The model's own initialisation (compiling it is slow on CPU: use sparingly)."""
    inputs = example_inputs(cfg, B, TOKENS, TOKEN_DIM)
    init = jax.jit(lambda rng, *a: UViT(cfg).init(rng, *a, train=False))
    # unsafe_rbg: the same initialisers, but far cheaper to compile than threefry on CPU.
    return init(jax.random.key(0, impl="unsafe_rbg"), *inputs)["params"]


def _perturb(params: dict, seed: int = 1, scale: float = 0.3) -> dict:
    """params + noise (numpy, no per-shape compiles), so zero-init layers pass signal.

    Kernels get noise of std 1 / sqrt(fan-in) (activations keep their scale, so every
    path carries signal); other leaves (biases, LayerNorm scales, nulls) get std `scale`.
    """
    rng = np.random.default_rng(seed)

    def noise(path, p):
        shape = tuple(p.shape)
        std = 1.0 / np.sqrt(max(np.prod(shape[:-1]), 1)) if path[-1].key == "kernel" else scale
        return jnp.asarray(
            np.asarray(p, np.float32) + std * rng.standard_normal(shape), jnp.float32
        )

    return jax.tree_util.tree_map_with_path(noise, params)


def _random_params(cfg: UViTConfig, seed: int = 1) -> dict:
    """Random O(1) parameters of the right structure, without compiling the init."""
    base = jax.tree_util.tree_map_with_path(
        lambda path, s: np.ones(s.shape) if path[-1].key == "scale" else np.zeros(s.shape),
        _shapes(cfg),
    )
    return _perturb(base, seed)


@functools.cache
def _apply_fn(cfg: UViTConfig, train: bool = False, capture: bool = False):
    def fn(params, z_t, logsnr, tokens, cls, drop, rng):
        return UViT(cfg).apply(
            {"params": params},
            z_t,
            logsnr,
            tokens,
            cls,
            drop,
            train=train,
            capture_attention=capture,
            rngs={"dropout": rng} if train else {},
            mutable=["intermediates"] if capture else False,
        )

    return jax.jit(fn)


def _inputs(cfg: UViTConfig, seed: int = 0) -> tuple:
    k = jax.random.split(jax.random.key(seed), 4)
    z_t = jax.random.normal(k[0], (B, cfg.image_size, cfg.image_size, cfg.image_channels))
    logsnr = jax.random.uniform(k[1], (B,), minval=-10.0, maxval=10.0)
    tokens = jax.random.normal(k[2], (B, TOKENS, TOKEN_DIM))
    cls = jax.random.normal(k[3], (B, TOKEN_DIM))
    return z_t, logsnr, tokens, cls, jnp.zeros((B,), bool)


def _run(cfg, params, z_t, logsnr, tokens, cls, drop, *, train=False, seed=0) -> np.ndarray:
    out = _apply_fn(cfg, train)(params, z_t, logsnr, tokens, cls, drop, jax.random.key(seed))
    return np.asarray(out)


def test_exact_zero_at_init_then_signal_when_perturbed():
    params = _real_init(TINY)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    out = _run(TINY, params, *_inputs(TINY))
    assert out.shape == (B, 28, 28, 1) and out.dtype == np.float32
    assert np.all(out == 0.0)  # zero-initialised head
    perturbed = _run(TINY, _perturb(params), *_inputs(TINY))
    assert np.all(np.isfinite(perturbed)) and np.abs(perturbed).mean() > 1e-2


@pytest.mark.parametrize("cfg", [TWO_STAGE, PATCH], ids=["32_two_stage", "patch"])
def test_output_shape(cfg):
    out = _run(cfg, _random_params(cfg), *_inputs(cfg))
    assert out.shape == (B, cfg.image_size, cfg.image_size, cfg.image_channels)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.abs(out).mean() > 1e-2


def test_depends_on_z_t_and_logsnr_and_rows_are_independent():
    params = _random_params(TINY)
    z_t, logsnr, tokens, cls, drop = _inputs(TINY)
    base = _run(TINY, params, z_t, logsnr, tokens, cls, drop)
    other_z = _run(TINY, params, z_t.at[1].multiply(-1.0), logsnr, tokens, cls, drop)
    other_t = _run(TINY, params, z_t, logsnr.at[1].add(3.0), tokens, cls, drop)
    for out in (other_z, other_t):
        assert np.abs(out[1] - base[1]).max() > 1e-3  # row 1 changed with its input
        rest = [0, 2, 3]
        np.testing.assert_allclose(out[rest], base[rest], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cross_attention,cls_film", [(True, False), (False, True)])
def test_tokens_matter_iff_cross_attention_and_cls_iff_film(cross_attention, cls_film):
    cfg = dataclasses.replace(TINY, cross_attention=cross_attention, cls_film=cls_film)
    params = _random_params(cfg)
    z_t, logsnr, tokens, cls, drop = _inputs(cfg)
    base = _run(cfg, params, z_t, logsnr, tokens, cls, drop)
    new_tokens = _run(cfg, params, z_t, logsnr, tokens[::-1], cls, drop)
    new_cls = _run(cfg, params, z_t, logsnr, tokens, cls[::-1], drop)
    assert (np.abs(new_tokens - base).max() > 1e-3) == cross_attention
    assert (np.abs(new_cls - base).max() > 1e-3) == cls_film
    if not cross_attention:
        np.testing.assert_array_equal(new_tokens, base)
    if not cls_film:
        np.testing.assert_array_equal(new_cls, base)


def test_dropped_examples_ignore_conditioning():
    """Rows with drop_cond use the learned nulls: no trace of their tokens or CLS."""
    params = _random_params(TINY)
    z_t, logsnr, tokens, cls, _ = _inputs(TINY)
    # Same noisy image and logSNR in every row; conditioning differs per row.
    z_t = jnp.broadcast_to(z_t[:1], z_t.shape)
    logsnr = jnp.full_like(logsnr, 1.5)
    drop = jnp.array([True, True, False, False])
    out = _run(TINY, params, z_t, logsnr, tokens, cls, drop)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)
    assert np.abs(out[2] - out[3]).max() > 1e-3  # kept conditions do matter
    assert np.abs(out[0] - out[2]).max() > 1e-3  # and differ from the null condition
    # Garbage (NaN) conditioning in dropped rows changes nothing and does not leak.
    nan_tokens = tokens.at[:2].set(jnp.nan)
    nan_cls = cls.at[:2].set(jnp.nan)
    out_nan = _run(TINY, params, z_t, logsnr, nan_tokens, nan_cls, drop)
    np.testing.assert_allclose(out_nan, out, rtol=1e-5, atol=1e-6)


def test_dropout_only_with_train():
    params = _random_params(TINY)
    inputs = _inputs(TINY)
    eval_a = _run(TINY, params, *inputs, train=False, seed=0)
    eval_b = _run(TINY, params, *inputs, train=False, seed=1)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = _run(TINY, params, *inputs, train=True, seed=0)
    train_b = _run(TINY, params, *inputs, train=True, seed=1)
    np.testing.assert_array_equal(train_a, _run(TINY, params, *inputs, train=True, seed=0))
    assert np.abs(train_a - train_b).max() > 1e-3
    assert np.abs(train_a - eval_a).max() > 1e-3
    # With rate 0 the train path is the eval path: dropout is the only difference.
    no_drop = dataclasses.replace(TINY, dropout=0.0)
    np.testing.assert_allclose(
        _run(no_drop, params, *inputs, train=True), eval_a, rtol=1e-5, atol=1e-5
    )


def test_bfloat16_compute_close_to_float32():
    bf16 = dataclasses.replace(TINY, dtype="bfloat16")
    params = _random_params(TINY)
    inputs = _inputs(TINY)
    ref = _run(TINY, params, *inputs)
    out = _run(bf16, params, *inputs)
    assert out.dtype == np.float32
    assert all(s.dtype == jnp.float32 for s in jax.tree_util.tree_leaves(_shapes(bf16)))
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert 0.0 < rel < 0.05, rel  # bf16 really used (not identical) yet close


def test_capture_attention_qkv():
    cfg = TWO_STAGE
    params = _random_params(cfg)
    z_t, logsnr, tokens, cls, drop = _inputs(cfg)
    z_t = jnp.broadcast_to(z_t[:1], z_t.shape)  # rows differ only by their tokens
    logsnr = jnp.full_like(logsnr, 0.5)
    key = jax.random.key(0)
    out, state = _apply_fn(cfg, capture=True)(params, z_t, logsnr, tokens, cls, drop, key)
    plain = _run(cfg, params, z_t, logsnr, tokens, cls, drop)
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-5)  # capturing changes nothing
    feats = attention_features(state["intermediates"])
    assert list(feats) == [
        "transformer_0_down/block_0",
        "transformer_1/block_0",
        "transformer_0_up/block_0",
    ]
    for name, qkv in feats.items():
        side, width = (16, 8) if name.startswith("transformer_0") else (8, 16)
        for a in qkv:
            assert a.shape == (B, cfg.heads, side * side, width // cfg.heads), name
    # Only blocks after the (only) conditioned stage's cross-attention see the tokens.
    for name, same in [
        ("transformer_0_down/block_0", True),
        ("transformer_1/block_0", True),  # its self-attention precedes its cross-attention
        ("transformer_0_up/block_0", False),
    ]:
        q = np.asarray(feats[name][0])
        assert np.allclose(q[0], q[1], atol=1e-5) == same, name
    # Q and K are projections of the same normalised input with this block's weights:
    # K = (Q - b_q) W_q^{-1} W_k (W_q is square: width -> heads x head_dim; keys carry no
    # bias, which the softmax would cancel).
    sa = params["transformer_1"]["block_0"]["self_attention"]
    w, hd = 16, 16 // cfg.heads
    wq = np.asarray(sa["query"]["kernel"], np.float64).reshape(w, w)
    bq = np.asarray(sa["query"]["bias"], np.float64).reshape(w)
    wk = np.asarray(sa["key"]["kernel"], np.float64).reshape(w, w)
    assert set(sa["key"]) == {"kernel"}
    q, k, _ = (np.asarray(a, np.float64) for a in feats["transformer_1/block_0"])
    q_rows = q.transpose(0, 2, 1, 3).reshape(-1, w)  # [B * tokens, width]
    x_norm = np.linalg.solve(wq.T, (q_rows - bq).T).T
    k_rec = (x_norm @ wk).reshape(B, -1, cfg.heads, hd).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(k_rec, k, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(image_size=30, channels=(4, 8)), "cannot be downsampled by 2"),
        (dict(channels=(4, 8, 8), blocks=(1, 1, 1)), r"7x7, which cannot be downsampled"),
        (dict(stem="patch", patch_size=3), "not divisible by model.patch_size=3"),
        (dict(patch_size=2), "only applies to stem='patch'"),
        (dict(stem="wavelet"), "model.stem='wavelet'"),
        (dict(blocks=(1,)), "equal length"),
        (dict(transformer_conditioned=(True, False)), "one entry per transformer stage"),
        (dict(heads=3), "not divisible by model.heads=3"),
        (dict(transformer_conditioned=(False,)), "no stage is marked"),
        (dict(dtype="float16"), "model.dtype='float16'"),
        (dict(dropout=1.0), "model.dropout"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **changes)


def test_call_validates_inputs():
    params = _random_params(TINY)
    z_t, logsnr, tokens, cls, drop = _inputs(TINY)
    model = UViT(TINY)
    with pytest.raises(ValueError, match="z_t must be"):
        model.apply({"params": params}, z_t[:, :14], logsnr, tokens, cls, drop, train=False)
    with pytest.raises(ValueError, match="cond_tokens must be"):
        model.apply({"params": params}, z_t, logsnr, None, cls, drop, train=False)
    with pytest.raises(ValueError, match="cond_cls must be"):
        model.apply({"params": params}, z_t, logsnr, tokens, None, drop, train=False)


def test_from_config_reads_mnist_model_section():
    cfg = UViTConfig.from_config(mnist.get_config().model, 28, 1)
    # 2x2 patchify: one conv stage at 14x14, the transformer at 7x7.
    assert cfg.stem == "patch" and cfg.patch_size == 2
    assert cfg.channels == (64,) and cfg.transformer_widths == (128,)
    assert cfg.cross_attention and cfg.cls_film and cfg.dropout == 0.0
    assert cfg.conv_resolutions == (14,) and cfg.transformer_resolutions == (7,)
    film = UViTConfig.from_config(mnist.get_config("film").model, 28, 1)
    assert not film.cross_attention and film.cls_film
    with pytest.raises(ValueError, match="cannot be downsampled"):
        UViTConfig.from_config(mnist.get_config().model, 30, 1)


def _param_count(config, num_tokens: int | None = None) -> tuple[UViTConfig, int]:
    cfg = UViTConfig.from_config(config.model, config.data.image_size, config.data.channels)
    num_tokens = config.encoder.num_tokens if num_tokens is None else num_tokens
    inputs = example_inputs(cfg, 1, num_tokens, config.encoder.width)
    shapes = jax.eval_shape(lambda *a: UViT(cfg).init(jax.random.key(0), *a, train=False), *inputs)
    return cfg, parameter_overview.count_parameters(shapes["params"])


def test_imagenet256_paper_sizes():
    config = imagenet256.get_config()
    assert (config.data.dataset, config.data.image_size, config.data.channels) == (
        "imagenet2012",
        256,
        3,
    )
    assert config.diffusion.noise_resolution == 32 and config.train.batch_size == 2048
    assert config.train.learning_rate == 2e-4 and config.train.ema_decay == 0.9999
    cfg, count = _param_count(config)
    assert cfg.conv_resolutions == (256, 128, 64) and cfg.transformer_resolutions == (32, 16)
    assert cfg.transformer_widths == (512, 1024) and cfg.transformer_blocks == (3, 16)
    assert 3.0e8 < count < 4.5e8, count  # 363,531,267 with 256-token DINOv2-B/14 context


def test_imagenet512_paper_sizes():
    config = imagenet512.get_config()
    assert config.data.image_size == 512 and config.model.stem == "patch"
    cfg, count = _param_count(config)
    assert cfg.conv_resolutions == (256, 128, 64) and cfg.transformer_resolutions == (32, 16)
    assert cfg.channels + cfg.transformer_widths == (128, 256, 1024, 2048, 4096)
    assert cfg.blocks + cfg.transformer_blocks == (2, 3, 3, 3, 12)
    assert 3.5e9 < count < 4.7e9, count


@pytest.mark.parametrize(
    "variant, expected", [("default", 1_643_012), ("film", 1_363_588), ("tiny", 38_100)]
)
def test_mnist_parameter_counts(variant, expected):
    """The counts the README quotes; the encoder gives (28 / 4)^2 = 49 tokens."""
    config = mnist.get_config(variant)
    num_tokens = (config.data.image_size // config.encoder.patch_size) ** 2
    assert _param_count(config, num_tokens)[1] == expected


# Both transformer stages cross-attend (the mirrored one twice: down and up), CLS-FiLM on.
CACHED = dataclasses.replace(TWO_STAGE, transformer_conditioned=(True, True), cls_film=True)


@pytest.mark.parametrize("cfg", [TINY, CACHED], ids=["one_stage", "two_stage_mirrored"])
def test_condition_cache_gives_the_same_output(cfg):
    """UViT.condition + cond_cache == the plain call, for kept and dropped conditions."""
    params = _random_params(cfg)
    z_t, logsnr, tokens, cls, _ = _inputs(cfg)
    drop = jnp.array([False, True, False, True])
    model = UViT(cfg)
    # Jitted: eagerly, op by op, the two-stage model takes 10 s on 2 cores.
    condition = jax.jit(
        lambda p, t, c, d: model.apply({"params": p}, t, c, d, method=UViT.condition)
    )
    cache = condition(params, tokens, cls, drop)
    b, heads = B, cfg.heads
    mirrored = {"transformer_0_down", "transformer_0_up", "transformer_1"}
    assert set(cache["kv"]) == (mirrored if cfg is CACHED else {"transformer_0"})
    k, v = cache["kv"][sorted(cache["kv"])[-1]][0]
    assert k.shape == v.shape == (b, TOKENS, heads, cfg.transformer_widths[-1] // heads)
    assert cache["cls_term"].shape == (b, cfg.emb_dim)
    ref = _run(cfg, params, z_t, logsnr, tokens, cls, drop)
    apply_cached = jax.jit(
        lambda p, z, s, c: model.apply(
            {"params": p}, z, s, None, None, None, train=False, cond_cache=c
        )
    )
    out = apply_cached(params, z_t, logsnr, cache)
    assert np.abs(ref).mean() > 1e-2
    # Two differently compiled programs: float32 reassociation only.
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=2e-4)
    # The null rows of the cache are one learned condition, whatever the inputs.
    np.testing.assert_array_equal(np.asarray(k[1]), np.asarray(k[3]))
    np.testing.assert_array_equal(cache["cls_term"][1], cache["cls_term"][3])
