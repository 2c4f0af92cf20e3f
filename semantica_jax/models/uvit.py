"""U-ViT decoder of Semantica (DESIGN 2, METHODS 1.8, 3, 4).

Layout, for conv stage channels c_0..c_{n-1} and transformer widths w_0..w_{m-1}:

  stem: 1x1 conv (Dense) to c_0, or d x d stride-d patchify (space-to-depth + Dense)
  down: conv stage i = blocks[i] ResBlocks (FiLM) at c_i, every output kept as a skip,
        then Downsample x2 (to c_{i+1}, or w_0 after the last conv stage)
  transformer stages at the lowest resolutions: stage k < m-1 runs transformer_blocks[k]
        blocks, is downsampled x2 into stage k+1, and on the way back is upsampled,
        added to its own input (residual connection) and runs the same number of blocks
        again; the last (lowest) stage runs once. Blocks of stages marked in
        transformer_conditioned cross-attend to the projected encoder tokens when
        cross_attention is on. Dropout lives only in these blocks.
  up:   Upsample x2 and conv stage i (reversed): blocks[i] ResBlocks, each on the
        concatenation with one skip of the mirrored down stage
  head: GroupNorm -> SiLU -> zero-initialised Dense (-> depth-to-space for the patch stem)

The paper gives neither the up-path of the 32x32 transformer stage nor its position
embeddings; we mirror that stage (as its conv neighbours are) and add a learned position
embedding at the entry of every transformer stage.

Attention capture (DiffSim): `apply(..., capture_attention=True, mutable=['intermediates'])`
returns, for every self-attention block, the Q, K, V it used, each [B, heads, tokens,
head_dim], under the stable path
  intermediates / <stage> / block_<j> / self_attention / {q, k, v}   (1-tuples)
where <stage> is `transformer_<k>` for the lowest stage and `transformer_<k>_down` /
`transformer_<k>_up` for the mirrored ones. `attention_features` flattens that into
{'<stage>/block_<j>': (q, k, v)}.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from semantica_jax.models.layers import (
    ConditioningEmbedding,
    ContextProjection,
    Downsample,
    ResBlock,
    TransformerBlock,
    Upsample,
    depth_to_space,
    num_groups,
    space_to_depth,
    zeros_init,
)

STEMS = ("conv", "patch")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise TypeError(f"model.{name} must be a tuple (one entry per stage), got {value!r}")


@dataclasses.dataclass(frozen=True)
class UViTConfig:
    """Typed hyper-parameters of the U-ViT (the `model` config section, validated).

    Attributes:
      image_size: H = W of z_t.
      image_channels: C of z_t (and of the output).
      stem: 'conv' (1x1 conv) or 'patch' (patch_size x patch_size stride-d patchify).
      patch_size: d of the patch stem; must be 1 for the conv stem.
      channels: channels of the conv ResBlock stages, highest resolution first.
      blocks: ResBlocks per conv stage (same length as channels).
      transformer_widths: width of each transformer stage, highest resolution first.
      transformer_blocks: blocks per transformer stage (lowest stage last).
      transformer_conditioned: per transformer stage, whether it cross-attends.
      heads: attention heads (must divide every transformer width).
      mlp_ratio: transformer MLP hidden = mlp_ratio * width.
      emb_dim: width of the conditioning (time [+ CLS]) embedding.
      cross_attention: cross-attend to encoder tokens in the conditioned stages.
      cls_film: add Dense(LN(CLS)) to the time embedding (drives every FiLM).
      dropout: dropout rate inside the transformer blocks.
      dtype: compute dtype name, 'float32' or 'bfloat16' (parameters stay float32).
    """

    image_size: int
    image_channels: int
    stem: str = "conv"
    patch_size: int = 1
    channels: tuple[int, ...] = (32, 64)
    blocks: tuple[int, ...] = (1, 1)
    transformer_widths: tuple[int, ...] = (128,)
    transformer_blocks: tuple[int, ...] = (4,)
    transformer_conditioned: tuple[bool, ...] = (True,)
    heads: int = 4
    mlp_ratio: int = 4
    emb_dim: int = 128
    cross_attention: bool = True
    cls_film: bool = False
    dropout: float = 0.1
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_config(
        cls, cfg_model: ml_collections.ConfigDict, image_size: int, channels: int
    ) -> "UViTConfig":
        """Builds the typed config from `config.model` and the data's image size/channels.

        `cfg_model.transformer_width` may be an int (every transformer stage) or a tuple
        with one width per transformer stage.
        """
        blocks_t = tuple(
            int(b) for b in _as_tuple(cfg_model.transformer_blocks, "transformer_blocks")
        )
        width = cfg_model.transformer_width
        if isinstance(width, (list, tuple)):
            widths = tuple(int(w) for w in width)
        else:
            widths = (int(width),) * len(blocks_t)
        return cls(
            image_size=int(image_size),
            image_channels=int(channels),
            stem=str(cfg_model.stem),
            patch_size=int(cfg_model.patch_size),
            channels=tuple(int(c) for c in _as_tuple(cfg_model.channels, "channels")),
            blocks=tuple(int(b) for b in _as_tuple(cfg_model.blocks, "blocks")),
            transformer_widths=widths,
            transformer_blocks=blocks_t,
            transformer_conditioned=tuple(
                bool(c)
                for c in _as_tuple(cfg_model.transformer_conditioned, "transformer_conditioned")
            ),
            heads=int(cfg_model.heads),
            mlp_ratio=int(cfg_model.mlp_ratio),
            emb_dim=int(cfg_model.emb_dim),
            cross_attention=bool(cfg_model.cross_attention),
            cls_film=bool(cfg_model.cls_film),
            dropout=float(cfg_model.dropout),
            dtype=str(cfg_model.dtype),
        )

    @property
    def stem_factor(self) -> int:
        """Resolution reduction of the stem (patch_size for 'patch', else 1)."""
        return self.patch_size if self.stem == "patch" else 1

    @property
    def conv_resolutions(self) -> tuple[int, ...]:
        """Side length of each conv stage's feature map."""
        r = self.image_size // self.stem_factor
        return tuple(r // 2**i for i in range(len(self.channels)))

    @property
    def transformer_resolutions(self) -> tuple[int, ...]:
        """Side length of each transformer stage's token grid (tokens = side**2)."""
        r = self.conv_resolutions[-1] // 2
        return tuple(r // 2**k for k in range(len(self.transformer_blocks)))

    @property
    def compute_dtype(self) -> Any:
        """The jnp dtype named by `dtype`."""
        return DTYPES[self.dtype]


def _validate(c: UViTConfig) -> None:
    """Raises ValueError naming the first inconsistent field and how to fix it."""
    if c.stem not in STEMS:
        raise ValueError(f"model.stem={c.stem!r}: choose one of {STEMS}")
    if c.patch_size < 1:
        raise ValueError(f"model.patch_size must be >= 1, got {c.patch_size}")
    if c.stem == "conv" and c.patch_size != 1:
        raise ValueError(
            f"model.patch_size={c.patch_size} only applies to stem='patch'; set it to 1 "
            "or use stem='patch'"
        )
    if c.image_size % c.stem_factor:
        raise ValueError(
            f"image size {c.image_size} is not divisible by model.patch_size={c.patch_size}"
        )
    if not c.channels or len(c.channels) != len(c.blocks):
        raise ValueError(
            f"model.channels {c.channels} and model.blocks {c.blocks} must be non-empty and "
            "of equal length (one entry per conv stage)"
        )
    if min(c.channels) < 1 or min(c.blocks) < 1:
        raise ValueError("model.channels and model.blocks entries must be >= 1")
    m = len(c.transformer_blocks)
    if m == 0 or min(c.transformer_blocks) < 1:
        raise ValueError(
            f"model.transformer_blocks={c.transformer_blocks}: need >= 1 stage of >= 1 block"
        )
    if len(c.transformer_widths) != m or len(c.transformer_conditioned) != m:
        raise ValueError(
            f"model.transformer_width {c.transformer_widths} and model.transformer_conditioned "
            f"{c.transformer_conditioned} need one entry per transformer stage "
            f"(transformer_blocks has {m})"
        )
    for w in c.transformer_widths:
        if w < 1 or w % c.heads:
            raise ValueError(f"transformer width {w} is not divisible by model.heads={c.heads}")
    if c.cross_attention and not any(c.transformer_conditioned):
        raise ValueError(
            "model.cross_attention is on but no stage is marked in "
            "model.transformer_conditioned; mark one (usually the last) or turn it off"
        )
    if c.emb_dim < 2 or c.emb_dim % 2:
        raise ValueError(f"model.emb_dim must be even and >= 2, got {c.emb_dim}")
    if c.mlp_ratio < 1:
        raise ValueError(f"model.mlp_ratio must be >= 1, got {c.mlp_ratio}")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {c.dropout}")
    if c.dtype not in DTYPES:
        raise ValueError(f"model.dtype={c.dtype!r}: choose one of {tuple(DTYPES)}")
    # Every map that is downsampled must have an even side (no padding anywhere).
    r = c.image_size // c.stem_factor
    names = [f"conv stage {i}" for i in range(len(c.channels))]
    names += [f"transformer stage {k}" for k in range(m - 1)]
    for name in names:
        if r < 2 or r % 2:
            raise ValueError(
                f"{name} runs at {r}x{r}, which cannot be downsampled by 2 (image size "
                f"{c.image_size}, stem factor {c.stem_factor}); use fewer stages in "
                "model.channels / model.transformer_blocks or an image size divisible by "
                f"{2 ** len(names) * c.stem_factor}"
            )
        r //= 2


class TransformerStage(nn.Module):
    """A run of transformer blocks on one resolution: map in, map out.

    [B, h, w, width] -> tokens [B, h*w, width] (+ learned position embedding) -> blocks
    -> LayerNorm -> [B, h, w, width].
    """

    width: int
    depth: int
    heads: int
    mlp_ratio: int
    dropout: float
    cross_attention: bool
    position_embedding: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        h: jax.Array,
        emb: jax.Array,
        context: jax.Array | None,
        *,
        train: bool,
        capture_attention: bool,
        cross_kv: tuple | None = None,
        cross_kv_only: bool = False,
    ) -> Any:
        """h [B, h, w, width], emb [B, E], context [B, T, width] | None -> [B, h, w, width].

        cross_kv: per block, the cross-attention's precomputed (k, v) (context unused).
        cross_kv_only: return that tuple for `context` instead (h and emb unused).
        """
        if cross_kv_only:
            return tuple(
                self._block(j)(None, None, context, train=False, cross_kv_only=True)
                for j in range(self.depth)
            )
        b, hh, ww, c = h.shape
        x = h.reshape(b, hh * ww, c)
        if self.position_embedding:
            pos = self.param("pos_embedding", nn.initializers.normal(0.02), (hh * ww, c))
            x = x + pos.astype(x.dtype)[None]
        for j in range(self.depth):
            x = self._block(j)(
                x,
                emb,
                context,
                train=train,
                capture_attention=capture_attention,
                cross_kv=None if cross_kv is None else cross_kv[j],
            )
        x = nn.LayerNorm(dtype=self.dtype, name="norm_out")(x)
        return x.reshape(b, hh, ww, c)

    def _block(self, j: int) -> TransformerBlock:
        return TransformerBlock(
            self.width,
            self.heads,
            self.mlp_ratio,
            self.dropout,
            self.cross_attention,
            dtype=self.dtype,
            name=f"block_{j}",
        )


class UViT(nn.Module):
    """The U-ViT denoiser; all hyper-parameters in `config` (see module docstring)."""

    config: UViTConfig

    @nn.compact
    def __call__(
        self,
        z_t: jax.Array,
        logsnr: jax.Array,
        cond_tokens: jax.Array | None,
        cond_cls: jax.Array | None,
        drop_cond: jax.Array | None,
        *,
        train: bool,
        capture_attention: bool = False,
        cond_cache: Mapping[str, Any] | None = None,
        condition_only: bool = False,
    ) -> Any:
        """Predicts the network output (v, eps or x per the diffusion config).

        Args:
          z_t: noisy images [B, H, W, C].
          logsnr: log signal-to-noise ratio per example [B].
          cond_tokens: encoder tokens [B, T, D]; required when cross_attention is on.
          cond_cls: encoder CLS [B, D]; required when cls_film is on.
          drop_cond: [B] bool; True = use the learned null condition (tokens and CLS
            jointly) for that example. None = keep every condition.
          train: enables dropout (needs the 'dropout' rng).
          capture_attention: sow self-attention Q/K/V into 'intermediates'.
          cond_cache: what `condition` returned for these conditions (then cond_tokens,
            cond_cls and drop_cond are unused): the noise-independent part is not
            recomputed. Same output as passing the conditions. An optional 'key_bias'
            [B, T] adds per-token log weights to every cross-attention (blends).
          condition_only: return the cache instead (z_t and logsnr unused); prefer
            `condition`.

        Returns:
          [B, H, W, C] float32; exactly 0 at initialisation.
        """
        cfg = self.config
        dtype = cfg.compute_dtype
        if condition_only or cond_cache is None:
            b = _check_inputs(cfg, z_t, logsnr, cond_tokens, cond_cls, drop_cond, condition_only)
            if drop_cond is None:
                drop_cond = jnp.zeros((b,), bool)
            drop_cond = drop_cond.astype(bool)
        embedding = ConditioningEmbedding(
            cfg.emb_dim, cfg.cls_film, dtype=dtype, name="cond_embedding"
        )
        m = len(cfg.transformer_blocks)

        def stage(k: int, name: str, position_embedding: bool) -> TransformerStage:
            return TransformerStage(
                cfg.transformer_widths[k],
                cfg.transformer_blocks[k],
                cfg.heads,
                cfg.mlp_ratio,
                cfg.dropout,
                k in conditioned,
                position_embedding,
                dtype=dtype,
                name=name,
            )

        conditioned = [
            k for k, c in enumerate(cfg.transformer_conditioned) if c and cfg.cross_attention
        ]
        if cond_cache is None:
            contexts = {
                k: ContextProjection(cfg.transformer_widths[k], dtype=dtype, name=f"context_{k}")(
                    cond_tokens.astype(dtype), drop_cond
                )
                for k in conditioned
            }
        if condition_only:
            cache = {"cls_term": embedding(None, cond_cls, drop_cond, cls_only=True), "kv": {}}
            for k in conditioned:
                names = [f"transformer_{k}_down", f"transformer_{k}_up"] if k < m - 1 else []
                for name in names or [f"transformer_{k}"]:
                    cache["kv"][name] = stage(k, name, False)(
                        None,
                        None,
                        contexts[k],
                        train=False,
                        capture_attention=False,
                        cross_kv_only=True,
                    )
            return cache
        if cond_cache is None:
            emb = embedding(logsnr, cond_cls, drop_cond)
            kv = {}
        else:
            emb = embedding(logsnr, None, None, cls_term=cond_cache["cls_term"])
            contexts = {k: None for k in conditioned}
            kv = cond_cache["kv"]
            if cond_cache.get("key_bias") is not None:  # per-token log weights (blends)
                bias = cond_cache["key_bias"]
                kv = {name: tuple((*b, bias) for b in blocks) for name, blocks in kv.items()}

        # Stem.
        h = z_t.astype(dtype)
        if cfg.stem == "patch":
            h = space_to_depth(h, cfg.patch_size)
        h = nn.Dense(cfg.channels[0], dtype=dtype, name="stem")(h)

        # Conv down path.
        n = len(cfg.channels)
        skips = []
        for i, (c, nb) in enumerate(zip(cfg.channels, cfg.blocks, strict=True)):
            for j in range(nb):
                h = ResBlock(c, dtype=dtype, name=f"down_{i}_res_{j}")(h, emb)
                skips.append(h)
            nxt = cfg.channels[i + 1] if i + 1 < n else cfg.transformer_widths[0]
            h = Downsample(nxt, dtype=dtype, name=f"down_{i}_downsample")(h)

        # Transformer stages.
        widths = cfg.transformer_widths

        def run(k: int, name: str, position_embedding: bool, h: jax.Array) -> jax.Array:
            return stage(k, name, position_embedding)(
                h,
                emb,
                contexts.get(k),
                train=train,
                capture_attention=capture_attention,
                cross_kv=kv.get(name),
            )

        stage_inputs = []
        for k in range(m - 1):
            stage_inputs.append(h)
            h = run(k, f"transformer_{k}_down", True, h)
            h = Downsample(widths[k + 1], dtype=dtype, name=f"transformer_{k}_downsample")(h)
        h = run(m - 1, f"transformer_{m - 1}", True, h)
        for k in reversed(range(m - 1)):
            h = Upsample(widths[k], dtype=dtype, name=f"transformer_{k}_upsample")(h)
            h = h + stage_inputs[k]  # residual across the lower stages, no concat skip
            h = run(k, f"transformer_{k}_up", False, h)

        # Conv up path, mirrored, with one skip per ResBlock.
        for i in reversed(range(n)):
            h = Upsample(cfg.channels[i], dtype=dtype, name=f"up_{i}_upsample")(h)
            for j in range(cfg.blocks[i]):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResBlock(cfg.channels[i], dtype=dtype, name=f"up_{i}_res_{j}")(h, emb)

        # Head: zero-initialised so that the model is exactly 0 at init.
        h = nn.GroupNorm(num_groups(h.shape[-1]), dtype=dtype, name="head_norm")(h)
        out_features = cfg.image_channels * cfg.stem_factor**2
        h = nn.Dense(out_features, dtype=dtype, kernel_init=zeros_init, name="head")(nn.silu(h))
        if cfg.stem == "patch":
            h = depth_to_space(h, cfg.patch_size)
        return h.astype(jnp.float32)

    def condition(
        self, cond_tokens: jax.Array | None, cond_cls: jax.Array | None, drop_cond: jax.Array
    ) -> dict[str, Any]:
        """The noise-independent part of the network for these conditions, computed once.

        Use as `model.apply(variables, tokens, cls, drop, method=UViT.condition)` and pass
        the result as `cond_cache` at every reverse step.

        Args:
          cond_tokens: [B, T, D] (cross-attention on) or None.
          cond_cls: [B, D] (cls_film on) or None.
          drop_cond: [B] bool; True = the learned null condition.

        Returns:
          {'cls_term': [B, emb_dim] or None (cls_film off), 'kv': {stage name: per block
          (k, v) of its cross-attention, each [B, T, heads, head_dim]}}.
        """
        return self(None, None, cond_tokens, cond_cls, drop_cond, train=False, condition_only=True)


def _check_inputs(
    cfg: UViTConfig,
    z_t: jax.Array,
    logsnr: jax.Array,
    cond_tokens: jax.Array | None,
    cond_cls: jax.Array | None,
    drop_cond: jax.Array | None,
    condition_only: bool = False,
) -> int:
    """Validates input shapes against the config; returns the batch size B.

    condition_only: z_t and logsnr are not needed (B comes from drop_cond).
    """
    if condition_only:
        if drop_cond is None or drop_cond.ndim != 1:
            raise ValueError("condition: drop_cond must be [B] bool")
        b = drop_cond.shape[0]
    else:
        want = (cfg.image_size, cfg.image_size, cfg.image_channels)
        if z_t.ndim != 4 or tuple(z_t.shape[1:]) != want:
            raise ValueError(f"z_t must be [B, {want[0]}, {want[1]}, {want[2]}], got {z_t.shape}")
        b = z_t.shape[0]
        if logsnr.shape != (b,):
            raise ValueError(f"logsnr must be [B]=({b},), got {logsnr.shape}")
    if drop_cond is not None and drop_cond.shape != (b,):
        raise ValueError(f"drop_cond must be [B]=({b},) bool, got {drop_cond.shape}")
    if cfg.cross_attention:
        if cond_tokens is None or cond_tokens.ndim != 3 or cond_tokens.shape[0] != b:
            shape = None if cond_tokens is None else cond_tokens.shape
            raise ValueError(
                f"cross_attention is on: cond_tokens must be [B={b}, T, D], got {shape}"
            )
    if cfg.cls_film:
        if cond_cls is None or cond_cls.ndim != 2 or cond_cls.shape[0] != b:
            shape = None if cond_cls is None else cond_cls.shape
            raise ValueError(f"cls_film is on: cond_cls must be [B={b}, D], got {shape}")
    return b


def example_inputs(
    cfg: UViTConfig, batch_size: int, num_tokens: int, token_dim: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Zero inputs of the right shapes for `init` / `jax.eval_shape`.

    Returns:
      (z_t [B,H,W,C], logsnr [B], cond_tokens [B,T,D], cond_cls [B,D], drop_cond [B]).
    """
    b = batch_size
    return (
        jnp.zeros((b, cfg.image_size, cfg.image_size, cfg.image_channels), jnp.float32),
        jnp.zeros((b,), jnp.float32),
        jnp.zeros((b, num_tokens, token_dim), jnp.float32),
        jnp.zeros((b, token_dim), jnp.float32),
        jnp.zeros((b,), bool),
    )


def attention_features(
    intermediates: Mapping[str, Any],
) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
    """Flattens captured Q/K/V to {'<stage>/block_<j>': (q, k, v)}, network order.

    Args:
      intermediates: the 'intermediates' collection returned by
        `model.apply(..., capture_attention=True, mutable=['intermediates'])`.

    Returns:
      For every self-attention block, (q, k, v) each [B, heads, tokens, head_dim].
    """
    out = {}
    # Collections come back from jit with sorted keys; restore execution order explicitly.
    for stage_name in sorted(intermediates, key=_stage_order):
        stage = intermediates[stage_name]
        for block_name in sorted(stage, key=lambda name: int(name.rsplit("_", 1)[1])):
            sa = stage[block_name]["self_attention"]
            out[f"{stage_name}/{block_name}"] = (sa["q"][0], sa["k"][0], sa["v"][0])
    return out


def _stage_order(name: str) -> tuple[int, int]:
    """Execution order of transformer stage names: down stages, lowest, up stages."""
    parts = name.split("_")  # transformer_<k>[_down|_up]
    k = int(parts[1])
    if len(parts) == 2:
        return (1, 0)
    return (0, k) if parts[2] == "down" else (2, -k)
