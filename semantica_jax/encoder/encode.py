"""Batched encoding with the frozen encoder, and CLS-cosine similarity of images."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semantica_jax.encoder.bundle import EncoderBundle
from semantica_jax.models.vit import ViTEncoder
from semantica_jax.utils import image_io
from semantica_jax.utils.cosine import cosine_matrix


@functools.partial(jax.jit, static_argnames=("model", "with_tokens"))
def _encode_batch(params: Any, images: jnp.ndarray, model: ViTEncoder, with_tokens: bool):
    tokens, cls = model.apply({"params": params}, image_io.to_model_range(images))
    return (tokens if with_tokens else None), cls


def effective_batch(num: int, batch_size: int) -> int:
    """The batch `iter_encode` uses for `num` images: batch_size, at most num, at least 1."""
    return max(1, min(batch_size, num))


def iter_encode(
    bundle: EncoderBundle, images: np.ndarray, batch_size: int = 256, with_tokens: bool = True
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray]]:
    """Encodes in fixed-size batches (the last one padded, so one compilation).

    Args:
      bundle: the encoder.
      images: uint8 [N, H, W, C] or float in [-1, 1]; numpy or any array with numpy
        slicing (a `disk_array.DiskArray`).
      batch_size: images per forward pass.
      with_tokens: also return the patch tokens.

    Yields:
      (start, tokens float32 [b, T, D] or None, cls float32 [b, D]) for rows start..start+b.
    """
    if getattr(images, "ndim", 4) != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {np.shape(images)}")
    num = len(images)
    batch = effective_batch(num, batch_size)
    for start in range(0, num, batch):
        # Converted a batch at a time: a split on disk (data/disk_array.py) is never whole.
        chunk = image_io.as_model_input(images[start : start + batch])
        valid = len(chunk)
        if valid < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - valid, axis=0)])
        tokens, cls = jax.device_get(
            _encode_batch(bundle.params, chunk, model=bundle.model, with_tokens=with_tokens)
        )
        yield start, (None if tokens is None else tokens[:valid]), cls[:valid]


def encode(
    bundle: EncoderBundle, images: np.ndarray, batch_size: int = 256, with_tokens: bool = True
) -> tuple[np.ndarray | None, np.ndarray]:
    """Encodes all images: (tokens float32 [N, T, D] or None, cls float32 [N, D]).

    For whole datasets use `assets.embedded_split` (float16 on disk, memory-mapped).
    """
    tokens, cls = [], []
    for _, tok, c in iter_encode(bundle, images, batch_size, with_tokens):
        cls.append(c)
        if tok is not None:
            tokens.append(tok)
    dim = bundle.model.config.width
    cls_all = np.concatenate(cls) if cls else np.zeros((0, dim), np.float32)
    if not with_tokens:
        return None, cls_all
    num_tokens = bundle.model.config.num_tokens
    tokens_all = np.concatenate(tokens) if tokens else np.zeros((0, num_tokens, dim), np.float32)
    return tokens_all, cls_all


def similarity_matrix(bundle: EncoderBundle, images: np.ndarray) -> np.ndarray:
    """Cosine similarity of the CLS embeddings of all pairs: images [N, H, W, C] -> [N, N]."""
    _, cls = encode(bundle, images, with_tokens=False)
    return cosine_matrix(cls, cls)


def similarity(bundle: EncoderBundle, a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of the CLS embeddings of two images [H, W, C] (uint8 or [-1, 1])."""
    pair = np.stack([image_io.to_model_range(np.asarray(x)) for x in (a, b)])
    return float(similarity_matrix(bundle, pair)[0, 1])
