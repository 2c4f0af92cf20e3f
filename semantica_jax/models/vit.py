"""Small Vision Transformer: the frozen image encoder of Semantica on MNIST.

The encoder maps an image in [-1, 1] to
  * `tokens` [B, T, D]: the final-LayerNorm'd patch tokens (T = (H / patch)^2, 49 for 28/4),
    which the decoder cross-attends to;
  * `cls` [B, D]: the final-LayerNorm'd CLS token. This is THE conditioning / similarity
    vector used downstream: the decoder's CLS path, pair filtering and the similarity tools
    all use cosine(cls_a, cls_b).
The projection head `embed(cls) -> [B, E]` exists only for the training losses (contrastive
/ NT-Xent act on its L2-normalised output); it is a single linear map, so cosine geometry
learned in the head is (up to that map) present in `cls` too. It is never used downstream.

Architecture: optional 3x3 conv stem (`stem_channels` > 0; 0 = the plain ViT stem that
pretrained DINOv2-style weights expect), d x d patchify (a strided conv), learned position
embeddings (CLS included),
pre-LayerNorm transformer blocks (self-attention, MLP with GELU), final LayerNorm.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Typed hyper-parameters of `ViTEncoder` (built from the config `encoder` section)."""

    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 2
    embed_dim: int = 32
    stem_channels: int = 0

    @classmethod
    def from_config(
        cls, cfg_encoder: ml_collections.ConfigDict, image_size: int, channels: int
    ) -> ViTConfig:
        """Reads the architecture fields of `config.encoder` and checks they fit together."""
        vit = cls(
            image_size=int(image_size),
            channels=int(channels),
            patch_size=int(cfg_encoder.patch_size),
            width=int(cfg_encoder.width),
            depth=int(cfg_encoder.depth),
            heads=int(cfg_encoder.heads),
            mlp_ratio=int(cfg_encoder.mlp_ratio),
            embed_dim=int(cfg_encoder.embed_dim),
            # Optional field: configs without it get the plain (DINOv2-compatible) stem.
            stem_channels=int(cfg_encoder.get("stem_channels", 0)),
        )
        vit.validate()
        return vit

    def validate(self) -> None:
        """Raises ValueError naming the offending field when the sizes do not fit."""
        if self.image_size % self.patch_size:
            raise ValueError(
                f"encoder.patch_size={self.patch_size} does not divide image_size="
                f"{self.image_size}; pick a divisor (e.g. 4 or 7 for 28)"
            )
        if self.width % self.heads:
            raise ValueError(
                f"encoder.width={self.width} is not a multiple of encoder.heads={self.heads}"
            )
        for name in ("width", "depth", "heads", "mlp_ratio", "embed_dim", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"encoder.{name} must be >= 1, got {getattr(self, name)}")
        if self.stem_channels < 0:
            raise ValueError(f"encoder.stem_channels must be >= 0, got {self.stem_channels}")

    @property
    def num_tokens(self) -> int:
        """T: number of patch tokens (CLS excluded)."""
        return (self.image_size // self.patch_size) ** 2

    def module(self) -> ViTEncoder:
        """The linen module with these hyper-parameters."""
        return ViTEncoder(self)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN(x)), then x + MLP(LN(x)). [B, T, D] -> same."""

    heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        width = x.shape[-1]
        y = nn.LayerNorm(name="ln_attn")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")(y, y)
        x = x + y
        y = nn.LayerNorm(name="ln_mlp")(x)
        y = nn.Dense(self.mlp_ratio * width, name="mlp_in")(y)
        y = nn.gelu(y)
        y = nn.Dense(width, name="mlp_out")(y)
        return x + y


class ViTEncoder(nn.Module):
    """ViT encoder; see the module docstring for what `tokens`, `cls` and `embed` are.

    `config.image_size` fixes the number of position embeddings.
    """

    config: ViTConfig

    def setup(self):
        c = self.config
        if c.stem_channels:
            self.stem = nn.Conv(c.stem_channels, kernel_size=(3, 3), padding="SAME", name="stem")
        self.patchify = nn.Conv(
            c.width,
            kernel_size=(c.patch_size, c.patch_size),
            strides=(c.patch_size, c.patch_size),
            padding="VALID",
            name="patchify",
        )
        init = nn.initializers.normal(stddev=0.02)
        self.cls_token = self.param("cls_token", init, (1, 1, c.width))
        self.pos_embedding = self.param("pos_embedding", init, (1, c.num_tokens + 1, c.width))
        self.blocks = [
            EncoderBlock(c.heads, c.mlp_ratio, name=f"block_{i}") for i in range(c.depth)
        ]
        self.final_norm = nn.LayerNorm(name="final_norm")
        self.head = nn.Dense(c.embed_dim, name="head")

    def __call__(self, images: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Encodes images.

        Args:
          images: float [B, H, W, C] in [-1, 1], H = W = image_size, C = channels.

        Returns:
          (tokens [B, T, D], cls [B, D]), both after the final LayerNorm.
        """
        c = self.config
        expected = (c.image_size, c.image_size, c.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"ViTEncoder expects images [B, {expected[0]}, {expected[1]}, {expected[2]}], "
                f"got {tuple(images.shape)}; resize/convert them (image_io.load_image does)"
            )
        x = images.astype(jnp.float32)
        if c.stem_channels:
            # A 3x3 conv before patchifying: a cheap local inductive bias that makes the small
            # ViT learn MNIST several times faster (cf. "early convolutions help transformers").
            x = nn.gelu(self.stem(x))
        x = self.patchify(x)
        batch = x.shape[0]
        x = x.reshape(batch, -1, c.width)
        cls = jnp.broadcast_to(self.cls_token, (batch, 1, c.width))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding
        for block in self.blocks:
            x = block(x)
        x = self.final_norm(x)
        return x[:, 1:], x[:, 0]

    def embed(self, cls: jnp.ndarray) -> jnp.ndarray:
        """Projection head used by the training losses: cls [B, D] -> [B, E]."""
        return self.head(cls)


def init_and_embed(module: ViTEncoder, images: jnp.ndarray) -> jnp.ndarray:
    """Runs encoder + head so that `module.init(..., method=init_and_embed)` creates all params.

    Args:
      module: the bound ViTEncoder.
      images: float [B, H, W, C] in [-1, 1].

    Returns:
      embeddings [B, E].
    """
    _, cls = module(images)
    return module.embed(cls)
