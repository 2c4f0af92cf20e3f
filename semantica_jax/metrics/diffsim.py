"""DiffSim on the trained U-ViT decoder: the Aligned Attention Score (METHODS §6).

For images A, B and a decoder (EMA params), both are mapped to [-1, 1] and noised to one
logSNR λ, z = α x + σ ε with α² = sigmoid(λ), σ² = sigmoid(-λ); one eval-mode decoder
forward per image captures the Q, K, V of one attention block, each [B, heads, tokens,
head_dim], and

  Attn(Q, K, V) = softmax(Q Kᵀ / √head_dim) V                       (per head, no out-proj)
  AAS(A→B)      = cos(vec Attn(Q_A, K_B, V_B), vec Attn(Q_A, K_A, V_A))
  DiffSim(A, B) = ½ [AAS(A→B) + AAS(B→A)]

with one global cosine per pair over heads × tokens × dims (not a per-token average).

Methods (`method=`):
  * 's' (DiffSim-S): the self-attention of a block named as `uvit.attention_features`
    names it ('transformer_0/block_3'). The forward uses the learned null condition
    (drop_cond=True), so the score depends on the images only, not on the encoder.
  * 'c' (DiffSim-C analogue): the cross-attention of a conditioned block. Q is what that
    layer uses as queries (its `query` projection of A's LayerNorm'd decoder tokens); K, V
    are its `key`/`value` projections of the projected encoder tokens (ContextProjection),
    of B versus of A. Each image's forward is conditioned on its own encoder tokens and
    CLS (a null-conditioned forward would show the cross-attention only the learned null
    sequence, the same for every image). K, V depend on the encoder tokens only, so
    AAS(A→B) asks whether B's encoder tokens answer A's queries as A's own do. The
    projections are read with flax's `capture_intermediates` (layers.Attention sows only
    in self-attention).
  * 'o': "decoder features without alignment", cos(vec Attn(Q_A, K_A, V_A),
    vec Attn(Q_B, K_B, V_B)) of the self-attention block (a baseline for benchmarks).

Noise: `noise='shared'` (default) uses one ε [H, W, C] per seed for every image, so
identical images score exactly 1 and `matrix(q, g)[i, j] == score(q[i], g[j])`;
`'independent'` draws ε per image (the reference's behaviour): image i of the first set
uses fold_in(fold_in(key, 0), i), of the second set fold_in(fold_in(key, 1), i).
`score` and `matrix` take their options as a `Settings` (or as keyword arguments that
override one); its `logsnr`, `block` and `seed` also take sequences: the score is then the
mean over every (λ, seed, block).

Default λ = 0 (α = σ): between the reference's NIGHTS (t = 501, λ ≈ -0.97 on SD1.5) and IP
bench (t = 251, λ ≈ 0.72) settings; MNIST at 28² is trained without a resolution shift.

Example:
  dm = diffsim.from_workdir('workdirs/mnist')
  s = diffsim.score(dm, images_a, images_b)        # [N]
  m = diffsim.matrix(dm, queries, gallery)         # [N, M]
  m = diffsim.matrix(dm, queries, gallery, diffsim.Settings(logsnr=2.0, method="c"))
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semantica_jax.diffusion import losses
from semantica_jax.models import uvit
from semantica_jax.utils import cosine, image_io

Features = tuple[jax.Array, jax.Array, jax.Array]  # (q, k, v), each [N, heads, tokens, dim]
EncodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

METHODS = ("s", "c", "o")
NOISE_MODES = ("shared", "independent")
DEFAULT_LOGSNR = 0.0
# None = the last block of the network that the method can use (self- or cross-attention).
DEFAULT_BLOCK: str | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class DiffSimModel:
    """A decoder ready for DiffSim.

    Attributes:
      model: the U-ViT module.
      params: its (EMA) parameters, the `params` collection.
      encode: `encode(images [N, H, W, C] in [-1, 1]) -> (tokens [N, T, D], cls [N, D])`,
        the frozen encoder the decoder was trained with; only method 'c' needs it.
    """

    model: uvit.UViT
    params: Any
    encode: EncodeFn | None = None

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def channels(self) -> int:
        return self.model.config.image_channels


def from_workdir(workdir: str, *, cache_dir: str = "") -> DiffSimModel:
    """The EMA decoder of a training workdir, with its frozen encoder loaded on first use.

    Args:
      workdir: a directory written by `semantica_jax.main` (config.json + checkpoints/).
      cache_dir: overrides the run's `cache_dir` (where its encoder is cached).
    """
    from semantica_jax import decoder
    from semantica_jax import workdir as run_dir

    config = run_dir.load_config(workdir, cache_dir)
    params, _ = run_dir.restore_ema_params(workdir)
    model = decoder.build_model(config)
    return DiffSimModel(model, params, _lazy_encoder(config))


def _lazy_encoder(config) -> EncodeFn:
    """An `EncodeFn` that loads the run's encoder on its first call (method 's' never does)."""
    loaded = []

    def encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from semantica_jax import assets
        from semantica_jax.encoder.encode import encode as encode_images

        if not loaded:
            loaded.append(assets.load_encoder(config))
        return encode_images(loaded[0], images)

    return encode


def _as_model(model: DiffSimModel | str) -> DiffSimModel:
    return from_workdir(model) if isinstance(model, str) else model


# --- the scores on captured features (pure jnp) ------------------------------------------


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(Q Kᵀ / √d) V per head: q [N, h, n, d], k, v [N, h, t, d] -> [N, h, n, d]."""
    q, k, v = (jnp.asarray(a, jnp.float32) for a in (q, k, v))
    logits = jnp.einsum("...nd,...td->...nt", q, k) / math.sqrt(q.shape[-1])
    return jnp.einsum("...nt,...td->...nd", jax.nn.softmax(logits, axis=-1), v)


def _flat_cosine(x: jax.Array, y: jax.Array) -> jax.Array:
    """Cosine of the flattened examples, x, y [N, ...] -> [N]; exactly 1 where x_i == y_i.

    The cosine of two unit vectors is 1 only up to float rounding; identical images under
    shared noise have bitwise identical attention outputs, and score exactly 1.
    """
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    return jnp.where(jnp.all(x == y, axis=-1), 1.0, cosine.rowwise_cosine(x, y))


def aas(q_a: jax.Array, k_a: jax.Array, v_a: jax.Array, k_b: jax.Array, v_b: jax.Array):
    """AAS(A→B) = cos(vec Attn(Q_A, K_B, V_B), vec Attn(Q_A, K_A, V_A)), one per pair.

    Args:
      q_a: [N, heads, n, d]; k_a, v_a, k_b, v_b: [N, heads, t, d].

    Returns:
      [N] float32.
    """
    return _flat_cosine(attention(q_a, k_b, v_b), attention(q_a, k_a, v_a))


def diffsim_from_features(features_a: Features, features_b: Features) -> jax.Array:
    """½ [AAS(A→B) + AAS(B→A)] of paired (q, k, v) features: [N]."""
    (q_a, k_a, v_a), (q_b, k_b, v_b) = features_a, features_b
    return 0.5 * (aas(q_a, k_a, v_a, k_b, v_b) + aas(q_b, k_b, v_b, k_a, v_a))


def attention_output_cosine(features_a: Features, features_b: Features) -> jax.Array:
    """cos(vec Attn(Q_A, K_A, V_A), vec Attn(Q_B, K_B, V_B)): features without alignment, [N]."""
    return _flat_cosine(attention(*features_a), attention(*features_b))


def encoder_token_aas(tokens_a: jax.Array, tokens_b: jax.Array) -> jax.Array:
    """DiffSim's symmetrised AAS on encoder tokens used as Q = K = V (one head).

    Args:
      tokens_a, tokens_b: [N, T, D].

    Returns:
      [N] float32.
    """
    fa, fb = ((t[:, None],) * 3 for t in (jnp.asarray(tokens_a), jnp.asarray(tokens_b)))
    return diffsim_from_features(tuple(fa), tuple(fb))


@functools.partial(jax.jit, static_argnames=("kind",))
def indexed_scores(
    features_set: Features, index_a: jax.Array, index_b: jax.Array, kind: str = "s"
) -> jax.Array:
    """Scores of pairs (a_p, b_p) = (index_a[p], index_b[p]) of one feature set: [P].

    Each image's own Attn(Q, K, V) is computed once, however many pairs it is in: the
    benchmark's way of scoring many triplets from features computed once per image.

    Args:
      features_set: (q, k, v) of N images (see `features`).
      index_a, index_b: int [P] rows of the pairs.
      kind: 's' / 'c' (DiffSim) or 'o' (`attention_output_cosine`).
    """
    q, k, v = (jnp.asarray(x, jnp.float32) for x in features_set)
    own = attention(q, k, v)
    if kind == "o":
        return _flat_cosine(own[index_a], own[index_b])
    ab = _flat_cosine(attention(q[index_a], k[index_b], v[index_b]), own[index_a])
    ba = _flat_cosine(attention(q[index_b], k[index_a], v[index_a]), own[index_b])
    return 0.5 * (ab + ba)


def _combine(kind: str, features_a: Features, features_b: Features) -> jax.Array:
    if kind == "o":
        return attention_output_cosine(features_a, features_b)
    return diffsim_from_features(features_a, features_b)


def _aas_cross(q_a: jax.Array, own_a: jax.Array, k_b: jax.Array, v_b: jax.Array) -> jax.Array:
    """AAS(a_i → b_j) of all pairs: [Na, Nb].

    q_a, own_a (= Attn(Q_A, K_A, V_A)): [Na, h, n, d]; k_b, v_b: [Nb, h, t, d].
    """
    logits = jnp.einsum("ahnd,bhtd->abhnt", q_a, k_b) / math.sqrt(q_a.shape[-1])
    retrieved = jnp.einsum("abhnt,bhtd->abhnd", jax.nn.softmax(logits, axis=-1), v_b)
    unit_retrieved = cosine.l2_normalize(retrieved.reshape(*retrieved.shape[:2], -1))
    unit_own = cosine.l2_normalize(own_a.reshape(own_a.shape[0], -1))
    return jnp.einsum("abk,ak->ab", unit_retrieved, unit_own)


@functools.partial(jax.jit, static_argnames=("kind",))
def _pair_block(features_a: Features, features_b: Features, kind: str) -> jax.Array:
    """The score of every (a_i, b_j): [Na, Nb]."""
    fa = tuple(jnp.asarray(x, jnp.float32) for x in features_a)
    fb = tuple(jnp.asarray(x, jnp.float32) for x in features_b)
    own_a, own_b = attention(*fa), attention(*fb)
    if kind == "o":
        a = cosine.l2_normalize(own_a.reshape(own_a.shape[0], -1))
        b = cosine.l2_normalize(own_b.reshape(own_b.shape[0], -1))
        return a @ b.T
    ab = _aas_cross(fa[0], own_a, fb[1], fb[2])
    ba = _aas_cross(fb[0], own_b, fa[1], fa[2])
    return 0.5 * (ab + ba.T)


def _pad_rows(x: jax.Array, n: int) -> jax.Array:
    """Pads [m, ...] to [n, ...] by repeating the last row."""
    if len(x) == n:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], n - len(x), axis=0)])


def pairwise_matrix(
    features_a: Features, features_b: Features, *, kind: str = "s", chunk: int = 32
) -> np.ndarray:
    """The score of every pair of two feature sets, in fixed [chunk, chunk] tiles.

    Args:
      features_a: (q, k, v) of N images; features_b: of M images (see `features`).
      kind: 's' or 'c' (DiffSim, the same formula on either block kind) or 'o'
        (`attention_output_cosine`).
      chunk: tile side; a tile holds chunk² × heads × n × t attention weights.

    Returns:
      [N, M] float32, entry (i, j) = score(a_i, b_j).
    """
    n, m = len(features_a[0]), len(features_b[0])
    ca, cb = max(1, min(chunk, n)), max(1, min(chunk, m))
    out = np.zeros((n, m), np.float32)
    for i in range(0, n, ca):
        fa = tuple(_pad_rows(x[i : i + ca], ca) for x in features_a)
        for j in range(0, m, cb):
            fb = tuple(_pad_rows(x[j : j + cb], cb) for x in features_b)
            tile = np.asarray(_pair_block(fa, fb, kind))
            out[i : i + ca, j : j + cb] = tile[: min(ca, n - i), : min(cb, m - j)]
    return out


# --- capturing Q, K, V -------------------------------------------------------------------


def _is_cross_projection(module: Any, method_name: str) -> bool:
    """capture_intermediates filter: the query/key/value projections of cross-attention."""
    path = module.path
    return (
        method_name == "__call__"
        and len(path) >= 2
        and path[-2] == "cross_attention"
        and path[-1] in ("query", "key", "value")
    )


def _cross_features(intermediates: Any) -> dict[str, Features]:
    """{'<stage>/block_<j>': (q, k, v)} of every cross-attention, each [B, heads, tokens, d]."""
    out = {}
    for stage_name, stage in intermediates.items():
        for block_name, block in stage.items():
            if "cross_attention" in block:
                ca = block["cross_attention"]
                out[f"{stage_name}/{block_name}"] = tuple(
                    ca[p]["__call__"][0].transpose(0, 2, 1, 3) for p in ("query", "key", "value")
                )
    return out


def _capture(model: uvit.UViT, params: Any, inputs: tuple, cross: bool) -> dict[str, Features]:
    """One eval forward; self-attention (cross=False) or cross-attention Q/K/V by block.

    inputs: the model's positional inputs (z_t, logsnr, cond_tokens, cond_cls, drop_cond).
    """
    capture = dict(capture_intermediates=_is_cross_projection) if cross else {}
    _, state = model.apply(
        {"params": params},
        *inputs,
        train=False,
        capture_attention=not cross,
        mutable=["intermediates"],
        **capture,
    )
    inter = state.get("intermediates", {})
    return _cross_features(inter) if cross else uvit.attention_features(inter)


@functools.cache
def _layout(model: uvit.UViT) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(self-attention block names, names of those with cross-attention), network order."""
    inputs = uvit.example_inputs(model.config, 1, 1, 1)

    def run():
        variables = model.init(jax.random.key(0), *inputs, train=False)
        _, state = model.apply(
            variables,
            *inputs,
            train=False,
            capture_attention=True,
            capture_intermediates=_is_cross_projection,
            mutable=["intermediates"],
        )
        return state["intermediates"]

    intermediates = jax.eval_shape(run)  # shapes only; its dicts come back key-sorted
    names = tuple(uvit.attention_features(intermediates))  # restores network order
    cross = tuple(
        name
        for name in names
        if "cross_attention" in intermediates[name.split("/")[0]][name.split("/")[1]]
    )
    return names, cross


def _unwrap(model: DiffSimModel | uvit.UViT) -> uvit.UViT:
    return model.model if isinstance(model, DiffSimModel) else model


def block_names(model: DiffSimModel | uvit.UViT) -> list[str]:
    """Names of the self-attention blocks, network order (e.g. ['transformer_0/block_0'])."""
    return list(_layout(_unwrap(model))[0])


def cross_block_names(model: DiffSimModel | uvit.UViT) -> list[str]:
    """Names of the blocks that have a cross-attention (method 'c'), network order."""
    return list(_layout(_unwrap(model))[1])


def _resolve_blocks(
    model: uvit.UViT, block: str | Sequence[str] | None, method: str
) -> tuple[str, ...]:
    """The block names to use, validated for `method`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    names, cross = _layout(model)
    valid = cross if method == "c" else names
    if method == "c" and not valid:
        raise ValueError(
            "DiffSim-C (method='c') needs a block with cross-attention, but this decoder has "
            "none (model.cross_attention is off); use method='s'"
        )
    if block is None:
        block = DEFAULT_BLOCK if DEFAULT_BLOCK in valid else valid[-1]
    blocks = (block,) if isinstance(block, str) else tuple(block)
    if not blocks:
        raise ValueError("pass at least one block name")
    for b in blocks:
        if method == "c" and b in names and b not in cross:
            raise ValueError(
                f"block {b!r} has no cross-attention (its stage is not in "
                f"model.transformer_conditioned); blocks with cross-attention: {list(cross)}"
            )
        if b not in valid:
            raise ValueError(f"unknown block {b!r}; valid blocks: {list(valid)}")
    return blocks


def _null_condition(
    model: uvit.UViT, params: Any, n: int
) -> tuple[jax.Array | None, jax.Array | None]:
    """Placeholder cond_tokens [n, T, D] / cond_cls [n, D] of the shapes the params expect.

    With drop_cond=True the model replaces them by its learned null condition.
    """
    cfg = model.config
    tokens = cls = None
    if cfg.cross_attention:
        k = cfg.transformer_conditioned.index(True)
        context = params[f"context_{k}"]
        shape = (n, context["null_context"].shape[0], context["norm"]["scale"].shape[0])
        tokens = jnp.zeros(shape, jnp.float32)
    if cfg.cls_film:
        cls = jnp.zeros((n, params["cond_embedding"]["cls_norm"]["scale"].shape[0]), jnp.float32)
    return tokens, cls


def _noise(key: jax.Array, stream: int, index: jax.Array, shape: tuple, mode: str) -> jax.Array:
    """ε [B, H, W, C]: one draw for all (shared) or fold_in(fold_in(key, stream), i) per image."""
    if mode == "shared":
        return jnp.broadcast_to(jax.random.normal(key, shape[1:]), shape)
    stream_key = jax.random.fold_in(key, stream)
    keys = jax.vmap(lambda i: jax.random.fold_in(stream_key, i))(index)
    return jax.vmap(lambda k: jax.random.normal(k, shape[1:]))(keys)


def _batch_features(params, x, index, key, logsnr, cond, *, model, blocks, method, noise, stream):
    """Noises a batch x [B, H, W, C] and captures {block: (q, k, v)} (traced, not jitted)."""
    b = x.shape[0]
    lam = jnp.full((b,), logsnr, jnp.float32)
    z_t = losses.diffuse(x, _noise(key, stream, index, x.shape, noise), lam)
    cross = method == "c"
    if cross:
        tokens, cls = cond
        drop = jnp.zeros((b,), bool)
    else:
        tokens, cls = _null_condition(model, params, b)
        drop = jnp.ones((b,), bool)
    feats = _capture(model, params, (z_t, lam, tokens, cls, drop), cross)
    return {name: feats[name] for name in blocks}


_STATIC = ("model", "blocks", "method", "noise")
_features_jit = jax.jit(_batch_features, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _pair_scores(
    params, xa, xb, index, key, logsnr, cond_a, cond_b, *, model, blocks, method, noise
):
    """Scores of a batch of pairs for every block: [len(blocks), B]."""
    static = dict(model=model, blocks=blocks, method=method, noise=noise)
    fa = _batch_features(params, xa, index, key, logsnr, cond_a, stream=0, **static)
    fb = _batch_features(params, xb, index, key, logsnr, cond_b, stream=1, **static)
    return jnp.stack([_combine(method, fa[name], fb[name]) for name in blocks])


# --- inputs ------------------------------------------------------------------------------


def _model_input(dm: DiffSimModel, images: Any, name: str) -> np.ndarray:
    """uint8 [N, H, W, C] or float in [-1, 1] -> float32 [N, H, W, C] in [-1, 1].

    The range conversion and its checks are `image_io.as_model_input`'s; here only the
    shape the decoder needs is checked.
    """
    images = np.asarray(images)
    want = (dm.image_size, dm.image_size, dm.channels)
    if images.ndim != 4 or images.shape[1:] != want or not len(images):
        raise ValueError(
            f"{name} must be [N>0, {want[0]}, {want[1]}, {want[2]}], got {images.shape}"
        )
    return image_io.as_model_input(images)


def _as_tuple(value: Any, name: str) -> tuple:
    values = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else (value,)
    if not values:
        raise ValueError(f"{name} must not be empty")
    return values


def _logsnrs(logsnr: float | Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in _as_tuple(logsnr, "logsnr"))
    if not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"logsnr must be finite (λ = ±inf is a clean or a pure-noise image), got {values}"
        )
    return values


def _check_options(noise: str, batch_size: int) -> None:
    if noise not in NOISE_MODES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {', '.join(NOISE_MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _condition(dm: DiffSimModel, x: np.ndarray, method: str) -> tuple | None:
    """(cond_tokens, cond_cls) float32 of the images for method 'c', else None."""
    if method != "c":
        return None
    if dm.encode is None:
        raise ValueError(
            "method='c' conditions each forward on the image's encoder tokens: build the "
            "DiffSimModel with encode=... (from_workdir does)"
        )
    tokens, cls = dm.encode(x)
    return np.asarray(tokens, np.float32), np.asarray(cls, np.float32)


def _slice(cond: tuple | None, start: int, size: int) -> tuple | None:
    """Rows start..start+size of a condition, padded by repeating the last row."""
    if cond is None:
        return None
    return tuple(_pad_rows(jnp.asarray(c[start : start + size]), size) for c in cond)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The options of `score` and `matrix`; they average over every (λ, seed, block).

    Attributes:
      logsnr: λ or several.
      block: a block name, several, or None (`DEFAULT_BLOCK`, else the last block usable
        by `method`); see `block_names` / `cross_block_names`.
      noise: 'shared' or 'independent' (see the module docstring).
      seed: noise seed or several.
      batch_size: images per forward (`score`: pairs per jitted call, 2x the images).
      method: 's' (DiffSim-S), 'c' (DiffSim-C analogue) or 'o' (output cosine).
    """

    logsnr: float | Sequence[float] = DEFAULT_LOGSNR
    block: str | Sequence[str] | None = DEFAULT_BLOCK
    noise: str = "shared"
    seed: int | Sequence[int] = 0
    batch_size: int = 64
    method: str = "s"


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Settings checked against one decoder, every option as a tuple."""

    logsnrs: tuple[float, ...]
    seeds: tuple[int, ...]
    blocks: tuple[str, ...]
    noise: str
    batch_size: int
    method: str

    def grid(self) -> list[tuple[float, int]]:
        """Every (λ, seed) the score is averaged over."""
        return list(itertools.product(self.logsnrs, self.seeds))


def _plan(model: uvit.UViT, settings: Settings | None, options: dict[str, Any]) -> _Plan:
    """`settings` with `options` (Settings field names) applied, validated for `model`."""
    s = dataclasses.replace(settings or Settings(), **options)
    _check_options(s.noise, s.batch_size)
    seeds = tuple(int(v) for v in _as_tuple(s.seed, "seed"))
    blocks = _resolve_blocks(model, s.block, s.method)
    return _Plan(_logsnrs(s.logsnr), seeds, blocks, s.noise, int(s.batch_size), s.method)


def check_settings(
    model: DiffSimModel | uvit.UViT, settings: Settings | None = None, **options: Any
) -> tuple[str, ...]:
    """Checks settings against a decoder's architecture (no parameters needed).

    Returns:
      The block names a score under these settings averages over.

    Raises:
      ValueError: what `score` / `matrix` would raise for these settings.
    """
    return _plan(_unwrap(model), settings, options).blocks


def _log_rate(log: Callable[[str], None] | None, what: str, pairs: int, since: float) -> None:
    if log:
        elapsed = max(time.perf_counter() - since, 1e-9)
        log(f"{what} in {elapsed:.1f}s ({pairs / elapsed:.1f} pairs/s)")


# --- public API --------------------------------------------------------------------------


def features(
    model: DiffSimModel | str,
    images: Any,
    *,
    logsnr: float = DEFAULT_LOGSNR,
    blocks: str | Sequence[str] | None = None,
    seed: int = 0,
    noise: str = "shared",
    method: str = "s",
    cond: tuple[np.ndarray, np.ndarray] | None = None,
    batch_size: int = 64,
    stream: int = 0,
) -> dict[str, Features]:
    """Captured Q, K, V of the images at one λ and seed.

    Args:
      model: a DiffSimModel or a workdir path.
      images: uint8 [N, H, W, C] or float in [-1, 1].
      logsnr: the noise level λ.
      blocks: a block name, several, or None (the default block of `method`).
      seed: PRNG seed of the noise.
      noise: 'shared' (one ε for every image) or 'independent' (ε per image, from
        fold_in(fold_in(key, stream), i)).
      method: 's' / 'o' (self-attention, null condition) or 'c' (cross-attention,
        conditioned on each image's own encoder tokens).
      cond: (cond_tokens [N, T, D], cond_cls [N, D]) for 'c'; None = `model.encode`.
      batch_size: images per forward (the last batch is padded: one compilation).
      stream: the independent-noise stream (score uses 0 for A and 1 for B).

    Returns:
      {block: (q [N, heads, n, d], k [N, heads, t, d], v [N, heads, t, d])}; for 'c', t is
      the number of encoder tokens.
    """
    dm = _as_model(model)
    x = _model_input(dm, images, "images")
    lam = _logsnrs(logsnr)
    if len(lam) != 1:
        raise ValueError("features takes one logsnr; call it once per noise level")
    _check_options(noise, batch_size)
    names = _resolve_blocks(dm.model, blocks, method)
    if method == "c" and cond is None:
        cond = _condition(dm, x, method)
    n = len(x)
    batch = min(batch_size, n)
    key = jax.random.key(int(seed))
    static = dict(model=dm.model, blocks=names, method=method, noise=noise)
    parts = []
    for start in range(0, n, batch):
        xb = _pad_rows(jnp.asarray(x[start : start + batch]), batch)
        index = jnp.arange(start, start + batch)
        cb = _slice(cond, start, batch) if method == "c" else None
        out = _features_jit(dm.params, xb, index, key, lam[0], cb, stream=stream, **static)
        valid = min(batch, n - start)
        parts.append({b: tuple(a[:valid] for a in qkv) for b, qkv in out.items()})
    return {b: tuple(jnp.concatenate([p[b][i] for p in parts]) for i in range(3)) for b in names}


def score(
    model: DiffSimModel | str,
    images_a: Any,
    images_b: Any,
    settings: Settings | None = None,
    *,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> np.ndarray:
    """DiffSim of paired images, averaged over every (λ, seed, block) of the settings.

    Args:
      model: a DiffSimModel or a workdir path.
      images_a, images_b: uint8 [N, H, W, C] or float in [-1, 1]; pair i is (a_i, b_i).
      settings: the options (default `Settings()`).
      log: optional `log(str)` for a throughput line.
      **options: `Settings` fields (logsnr, block, noise, seed, batch_size, method) that
        override `settings`.

    Returns:
      [N] float32 in [-1, 1]; 1 for identical images under shared noise.
    """
    dm = _as_model(model)
    xa = _model_input(dm, images_a, "images_a")
    xb = _model_input(dm, images_b, "images_b")
    if len(xa) != len(xb):
        raise ValueError(f"images_a ({len(xa)}) and images_b ({len(xb)}) must pair up")
    plan = _plan(dm.model, settings, options)
    cond_a, cond_b = _condition(dm, xa, plan.method), _condition(dm, xb, plan.method)
    static = dict(model=dm.model, blocks=plan.blocks, method=plan.method, noise=plan.noise)
    n, batch = len(xa), min(plan.batch_size, len(xa))
    start_time = time.perf_counter()
    total = np.zeros((n,), np.float64)
    for lam, seed in plan.grid():
        key = jax.random.key(seed)
        for start in range(0, n, batch):
            rows = [_pad_rows(jnp.asarray(x[start : start + batch]), batch) for x in (xa, xb)]
            conds = [_slice(c, start, batch) for c in (cond_a, cond_b)]
            index = jnp.arange(start, start + batch)
            out = _pair_scores(dm.params, *rows, index, key, lam, *conds, **static)
            valid = min(batch, n - start)
            total[start : start + valid] += np.asarray(out).mean(0)[:valid]
    count = len(plan.grid())
    _log_rate(log, f"diffsim: {n} pairs x {count} settings", n * count, start_time)
    return (total / count).astype(np.float32)


def matrix(
    model: DiffSimModel | str,
    queries: Any,
    gallery: Any | None = None,
    settings: Settings | None = None,
    *,
    chunk: int = 32,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> np.ndarray:
    """DiffSim of every (query, gallery) pair; each image's Q, K, V is computed once.

    Under shared noise entry (i, j) equals `score(queries[i:i+1], gallery[j:j+1])` (same
    options); under independent noise query i uses stream 0 and gallery image j stream 1,
    so only the diagonal matches `score(queries, gallery)`.

    Args:
      model: a DiffSimModel or a workdir path.
      queries: uint8 [N, H, W, C] or float in [-1, 1].
      gallery: [M, H, W, C] likewise; None = the queries themselves (one feature pass).
      settings, log, **options: as in `score`.
      chunk: tile side of the all-pairs contraction (`pairwise_matrix`).

    Returns:
      [N, M] float32.
    """
    dm = _as_model(model)
    xq = _model_input(dm, queries, "queries")
    xg = xq if gallery is None else _model_input(dm, gallery, "gallery")
    plan = _plan(dm.model, settings, options)
    cond_q = _condition(dm, xq, plan.method)
    cond_g = cond_q if gallery is None else _condition(dm, xg, plan.method)
    reuse = gallery is None and plan.noise == "shared"  # the queries' features serve twice
    opts = dict(blocks=plan.blocks, noise=plan.noise, method=plan.method)
    opts.update(batch_size=plan.batch_size)
    start_time = time.perf_counter()
    total = np.zeros((len(xq), len(xg)), np.float64)
    for lam, seed in plan.grid():
        fq = features(dm, xq, logsnr=lam, seed=seed, cond=cond_q, stream=0, **opts)
        fg = fq if reuse else features(dm, xg, logsnr=lam, seed=seed, cond=cond_g, stream=1, **opts)
        for name in plan.blocks:
            total += pairwise_matrix(fq[name], fg[name], kind=plan.method, chunk=chunk)
    count = len(plan.grid()) * len(plan.blocks)
    what = f"diffsim matrix: {total.shape[0]}x{total.shape[1]} x {len(plan.grid())} settings"
    _log_rate(log, f"{what} x {len(plan.blocks)} blocks", total.size * count, start_time)
    return (total / count).astype(np.float32)
