"""The small CNN classifier whose penultimate features define "MNIST FID" (metrics/features)."""

from __future__ import annotations

import flax.linen as nn
import jax


class FeatureNet(nn.Module):
    """Small CNN classifier: conv stages -> Dense(embed_dim) ReLU (features) -> logits.

    Attributes:
      conv_channels: channels of each 3x3 conv + ReLU + 2x2 max-pool stage.
      embed_dim: feature width F.
      num_classes: number of logits.
    """

    conv_channels: tuple[int, ...] = (32, 64)
    embed_dim: int = 128
    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images [B,H,W,C] in [-1, 1] -> (logits [B,num_classes], feats [B,embed_dim])."""
        x = images
        for channels in self.conv_channels:
            x = nn.relu(nn.Conv(channels, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        feats = nn.relu(nn.Dense(self.embed_dim)(x))
        logits = nn.Dense(self.num_classes)(feats)
        return logits, feats
