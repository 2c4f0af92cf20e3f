"""Building blocks of the U-ViT decoder (pure linen modules and shape helpers).

Everything here is resolution-agnostic; `uvit.py` wires the blocks into the U-shape.
Conventions: feature maps are NHWC `[B, H, W, C]`, token sequences `[B, N, W]`, the
conditioning embedding is `[B, E]`. `dtype` is the compute dtype; parameters stay float32.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Residual branches end in a zero-initialised layer, so every block starts as the identity
# and the whole network starts as an exact zero function (stable early training).
zeros_init = nn.initializers.zeros


def space_to_depth(x: jax.Array, d: int) -> jax.Array:
    """Moves each d x d patch into channels: [B, H, W, C] -> [B, H/d, W/d, d*d*C]."""
    b, h, w, c = x.shape
    if h % d or w % d:
        raise ValueError(f"space_to_depth: {h}x{w} map is not divisible by factor {d}")
    x = x.reshape(b, h // d, d, w // d, d, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // d, w // d, d * d * c)


def depth_to_space(x: jax.Array, d: int) -> jax.Array:
    """Inverse of `space_to_depth`: [B, H, W, d*d*C] -> [B, H*d, W*d, C]."""
    b, h, w, dc = x.shape
    if dc % (d * d):
        raise ValueError(f"depth_to_space: {dc} channels are not divisible by {d}x{d}")
    c = dc // (d * d)
    x = x.reshape(b, h, w, d, d, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * d, w * d, c)


def logsnr_to_time_input(logsnr: jax.Array) -> jax.Array:
    """Maps logSNR [B] to the "inv_cos" time input in (0, 1) [B].

    arctan(exp(-logsnr/2)) / (pi/2) is the unshifted cosine schedule's t(logsnr); it is a
    fixed, bounded, monotone squashing of logSNR, so the network sees the same input for
    the same noise level whatever schedule or shift produced it (METHODS 1.9). It is
    finite for any logSNR (exp overflow gives arctan(inf) = pi/2).
    """
    logsnr = logsnr.astype(jnp.float32)
    return jnp.arctan(jnp.exp(-0.5 * logsnr)) / (0.5 * jnp.pi)


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Transformer-style sinusoidal embedding of scalars: [B] -> [B, dim] (float32).

    Args:
      x: values of order 0..1000 (we feed 1000 * time input).
      dim: embedding width, even.
      max_period: longest period of the geometric frequency ladder.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding width must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = x.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def num_groups(channels: int) -> int:
    """GroupNorm groups for `channels`: at most 32 groups of at least 4 channels each."""
    return math.gcd(32, max(channels // 4, 1))


class FiLM(nn.Module):
    """Scale-shift modulation from the conditioning embedding (METHODS 4).

    h -> h * (1 + scale) + shift with (scale, shift) = Dense(SiLU(emb)); the (1 + scale)
    form keeps the block identity-modulated when the Dense outputs are small.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, emb: jax.Array) -> jax.Array:
        """h [B, ..., C], emb [B, E] -> [B, ..., C]."""
        params = nn.Dense(2 * self.features, dtype=self.dtype, name="scale_shift")(nn.silu(emb))
        scale, shift = jnp.split(params, 2, axis=-1)
        expand = (slice(None),) + (None,) * (h.ndim - 2) + (slice(None),)
        return h * (1.0 + scale[expand]) + shift[expand]


class ResBlock(nn.Module):
    """Conv residual block with FiLM scale-shift norm (guided-diffusion / unet3 order).

    GN -> SiLU -> Conv3x3 -> GN -> FiLM(emb) -> SiLU -> Conv3x3 (zero-init) + shortcut,
    the shortcut being a 1x1 projection when the channel count changes.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        """x [B, H, W, Cin], emb [B, E] -> [B, H, W, features]."""
        h = nn.GroupNorm(num_groups(x.shape[-1]), dtype=self.dtype, name="norm_0")(x)
        h = nn.Conv(self.features, (3, 3), dtype=self.dtype, name="conv_0")(nn.silu(h))
        h = nn.GroupNorm(num_groups(self.features), dtype=self.dtype, name="norm_1")(h)
        h = FiLM(self.features, dtype=self.dtype, name="film")(h, emb)
        conv_out = nn.Conv(
            self.features, (3, 3), dtype=self.dtype, kernel_init=zeros_init, name="conv_1"
        )
        h = conv_out(nn.silu(h))
        if x.shape[-1] != self.features:
            x = nn.Dense(self.features, dtype=self.dtype, name="shortcut")(x)
        return x + h


class Downsample(nn.Module):
    """Halves the resolution: 2x2 space-to-depth then a Dense to `features`.

    (Equivalent to a 2x2 stride-2 conv; no padding, so H and W must be even.)
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H/2, W/2, features]."""
        return nn.Dense(self.features, dtype=self.dtype, name="proj")(space_to_depth(x, 2))


class Upsample(nn.Module):
    """Doubles the resolution: Dense to 4 * features then 2x2 depth-to-space.

    (Equivalent to a 2x2 stride-2 transposed conv.)
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, 2H, 2W, features]."""
        h = nn.Dense(4 * self.features, dtype=self.dtype, name="proj")(x)
        return depth_to_space(h, 2)


class Attention(nn.Module):
    """Multi-head attention of queries from x over keys/values from `context`.

    Self-attention when `context` is None. Softmax logits are computed in float32 by
    `jax.nn.dot_product_attention` whatever the compute dtype. The output projection is
    zero-initialised (the residual branch starts at 0).

    With `capture=True` the Q, K, V actually used are sown into the 'intermediates'
    collection as 'q', 'k', 'v', each [B, heads, tokens, head_dim] (the layout DiffSim's
    Aligned Attention Score uses), for the caller to read with `mutable=['intermediates']`.

    Keys and values depend only on `context`, so a sampler computes them once per sample
    (`kv_only=True` returns them, [B, T, heads, head_dim] each) and passes them back as
    `kv` at every reverse step instead of re-projecting the same context.
    """

    width: int
    heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array | None,
        context: jax.Array | None = None,
        *,
        capture: bool = False,
        kv: tuple[jax.Array, ...] | None = None,
        kv_only: bool = False,
    ) -> Any:
        """x [B, N, width], context [B, T, width] | None -> [B, N, width].

        kv: precomputed (k, v) of `context`, each [B, T, heads, head_dim] (context unused),
          or (k, v, key_bias) with key_bias [B, T] added to every query's logits: log
          attention weights per context token (conditioning.py's blends; 0 = plain).
        kv_only: return (k, v) of `context` and nothing else (x unused).
        """
        head_dim = self.width // self.heads
        kv_input = x if context is None else context

        def project(inputs: jax.Array, name: str, use_bias: bool = True) -> jax.Array:
            """[B, tokens, width] -> [B, tokens, heads, head_dim]."""
            dense = nn.DenseGeneral(
                (self.heads, head_dim), use_bias=use_bias, dtype=self.dtype, name=name
            )
            return dense(inputs)

        if kv is None:
            # No key bias: it adds q.b, the same for every key of a query, which the
            # softmax cancels, so it would only drift with float noise (true gradient 0).
            kv = (project(kv_input, "key", use_bias=False), project(kv_input, "value"))
        if kv_only:
            return kv
        k, v, *key_bias = kv
        bias = key_bias[0][:, None, None, :].astype(k.dtype) if key_bias else None
        q = project(x, "query")
        if capture:
            for name, a in (("q", q), ("k", k), ("v", v)):
                self.sow("intermediates", name, a.transpose(0, 2, 1, 3))
        out = jax.nn.dot_product_attention(q, k, v, bias=bias)  # [B, N, heads, head_dim]
        return nn.DenseGeneral(
            self.width, axis=(-2, -1), dtype=self.dtype, kernel_init=zeros_init, name="out"
        )(out)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, [cross-attention], FiLM-modulated MLP.

    x += Drop(SelfAttn(LN(x)));  if cross: x += Drop(CrossAttn(LN(x), context));
    x += Drop(MLP(FiLM(LN(x), emb))). Dropout is active only with train=True.
    The MLP's FiLM carries the time (and optional CLS) embedding into the transformer,
    so the low-resolution stages know the noise level directly.
    """

    width: int
    heads: int
    mlp_ratio: int
    dropout: float
    cross_attention: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        emb: jax.Array,
        context: jax.Array | None,
        *,
        train: bool,
        capture_attention: bool = False,
        cross_kv: tuple[jax.Array, jax.Array] | None = None,
        cross_kv_only: bool = False,
    ) -> Any:
        """x [B, N, width], emb [B, E], context [B, T, width] | None -> [B, N, width].

        cross_kv: the cross-attention's precomputed (k, v) (see `Attention`); context unused.
        cross_kv_only: return the cross-attention's (k, v) of `context` (x, emb unused).
        """
        if cross_kv_only:
            return Attention(self.width, self.heads, dtype=self.dtype, name="cross_attention")(
                None, context, kv_only=True
            )
        drop = nn.Dropout(self.dropout, deterministic=not train)

        h = nn.LayerNorm(dtype=self.dtype, name="norm_self")(x)
        h = Attention(self.width, self.heads, dtype=self.dtype, name="self_attention")(
            h, capture=capture_attention
        )
        x = x + drop(h)

        if self.cross_attention:
            if context is None and cross_kv is None:
                raise ValueError("a cross-attending transformer block needs context tokens")
            h = nn.LayerNorm(dtype=self.dtype, name="norm_cross")(x)
            h = Attention(self.width, self.heads, dtype=self.dtype, name="cross_attention")(
                h, context, kv=cross_kv
            )
            x = x + drop(h)

        h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="norm_mlp")(x)
        h = FiLM(self.width, dtype=self.dtype, name="film")(h, emb)
        h = nn.Dense(self.mlp_ratio * self.width, dtype=self.dtype, name="mlp_in")(h)
        h = drop(nn.gelu(h))
        h = nn.Dense(self.width, dtype=self.dtype, kernel_init=zeros_init, name="mlp_out")(h)
        return x + drop(h)


class ConditioningEmbedding(nn.Module):
    """The embedding that drives every FiLM: time MLP [+ projected CLS] (METHODS 1.9, 4).

    emb = MLP(sinusoid(1000 * inv_cos(logsnr))) [+ Dense(LN(cls))], where the CLS term is
    replaced by a learned null vector [emb_dim] for examples with drop_cond (the guidance
    branch, METHODS 3), jointly with the null context sequence. The CLS term does not
    depend on the noise level: `cls_only=True` returns it ([B, emb_dim]) and a sampler
    passes it back as `cls_term` at every step.
    """

    emb_dim: int
    cls_film: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        logsnr: jax.Array | None,
        cond_cls: jax.Array | None,
        drop_cond: jax.Array,
        *,
        cls_term: jax.Array | None = None,
        cls_only: bool = False,
    ) -> jax.Array:
        """logsnr [B], cond_cls [B, D] | None, drop_cond [B] bool -> emb [B, emb_dim].

        cls_term: the precomputed CLS term [B, emb_dim] (cond_cls unused).
        cls_only: return the CLS term [B, emb_dim] (logsnr unused).
        """
        if self.cls_film and cls_term is None:
            if cond_cls is None:
                raise ValueError("cls_film is on: pass cond_cls [B, D] (or turn cls_film off)")
            c = nn.LayerNorm(dtype=self.dtype, name="cls_norm")(cond_cls)
            c = nn.Dense(self.emb_dim, dtype=self.dtype, name="cls_proj")(c)
            null = self.param("null_cls", nn.initializers.normal(1.0), (self.emb_dim,))
            cls_term = jnp.where(drop_cond[:, None], null.astype(c.dtype)[None], c)
        if cls_only:
            return cls_term
        t = sinusoidal_embedding(1000.0 * logsnr_to_time_input(logsnr), self.emb_dim)
        emb = nn.Dense(4 * self.emb_dim, dtype=self.dtype, name="time_0")(t)
        emb = nn.Dense(self.emb_dim, dtype=self.dtype, name="time_1")(nn.silu(emb))
        return emb if cls_term is None else emb + cls_term


class ContextProjection(nn.Module):
    """Projects encoder tokens to the transformer width; learned null where dropped.

    context = Dense(LN(cond_tokens)); examples with drop_cond get the learned null
    sequence [T, width] instead (after projection, so the null does not pass through the
    encoder-token statistics). T is fixed at init by the tokens seen then; conditions of
    n * T tokens (several reference images, conditioning.py) get the null tiled n times,
    which attention treats exactly as the null itself (duplicated keys with equal values).
    """

    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cond_tokens: jax.Array, drop_cond: jax.Array) -> jax.Array:
        """cond_tokens [B, T, D], drop_cond [B] bool -> context [B, T, width]."""
        c = nn.LayerNorm(dtype=self.dtype, name="norm")(cond_tokens)
        c = nn.Dense(self.width, dtype=self.dtype, name="proj")(c)
        if self.has_variable("params", "null_context"):  # T as at init, whatever T' is now
            null = self.get_variable("params", "null_context")
        else:
            null = self.param(
                "null_context", nn.initializers.normal(1.0), (cond_tokens.shape[1], self.width)
            )
        if null.shape[0] != cond_tokens.shape[1]:
            if cond_tokens.shape[1] % null.shape[0]:
                raise ValueError(
                    f"{cond_tokens.shape[1]} condition tokens are not a whole number of "
                    f"reference images of {null.shape[0]} tokens"
                )
            null = jnp.tile(null, (cond_tokens.shape[1] // null.shape[0], 1))
        return jnp.where(drop_cond[:, None, None], null.astype(c.dtype)[None], c)
