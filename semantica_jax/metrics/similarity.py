"""Image similarity by name: the methods of `tools/similarity.py` and the 2AFC benchmark.

Every method scores two images so that higher means more similar:

  * 'pixel': minus the RMS pixel distance in the model range, -sqrt(mean((a - b)²)) for a, b
    in [-1, 1]; in [-2, 0], 0 for identical images. It ranks pairs exactly as -L2 does
    (RMS = L2 / sqrt(H·W·C)) and does not depend on the image size.
  * 'ssim': SSIM (Wang et al. 2004) from `dm_pix.ssim` on the images mapped to [0, 1]
    (max_val 1, an 11×11 Gaussian window of σ = 1.5, k1 = 0.01, k2 = 0.03: dm-pix's
    defaults), the mean of the SSIM map; 1 for identical images.
  * 'encoder': cosine of the frozen encoder's CLS embeddings.
  * 'diffsim' / 'diffsim_c': DiffSim-S / the DiffSim-C analogue of the trained decoder's
    attention (`metrics/diffsim.py`), under a `diffsim.Settings`.

`pixel_scores` / `ssim_scores` score paired images ([N]); `similarity_matrix_of` scores every
pair of two sets ([N, M]) with any method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from semantica_jax.utils import cosine, image_io

METHODS = ("encoder", "diffsim", "diffsim_c", "pixel", "ssim")
DIFFSIM_METHODS = {"diffsim": "s", "diffsim_c": "c"}  # method name -> diffsim's method
_PAIRS_PER_CALL = 4096  # SSIM pairs per jitted call: [4096, 28, 28, 1] twice, ~25 MB


def _flat_pair(images_a: Any, images_b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two image sets in the model range, flattened: [N, H·W·C], [M, H·W·C]."""
    a, b = image_io.as_model_input(images_a), image_io.as_model_input(images_b)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"images of different shapes: {a.shape[1:]} and {b.shape[1:]}")
    return a.reshape(len(a), -1), b.reshape(len(b), -1)


def _minus_rms(difference: np.ndarray) -> np.ndarray:
    # 0 - x, not -x: identical images score +0.0, printed as 0.0000 rather than -0.0000.
    return (0.0 - np.sqrt(np.mean(np.square(difference), axis=-1))).astype(np.float32)


def pixel_scores(images_a: Any, images_b: Any) -> np.ndarray:
    """-RMS distance of paired images: [N, H, W, C] twice (uint8 or [-1, 1]) -> [N]."""
    a, b = _flat_pair(images_a, images_b)
    if len(a) != len(b):
        raise ValueError(f"images_a ({len(a)}) and images_b ({len(b)}) must pair up")
    return _minus_rms(a - b)


def pixel_matrix(images_a: Any, images_b: Any) -> np.ndarray:
    """-RMS distance of every pair: [N, H, W, C], [M, H, W, C] -> [N, M] (exact 0 on
    identical images: one row of differences at a time, no |a|² - 2ab + |b|² cancellation)."""
    a, b = _flat_pair(images_a, images_b)
    return np.stack([_minus_rms(b - row) for row in a]) if len(a) else np.zeros((0, len(b)))


@jax.jit
def _ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """SSIM of paired images in [-1, 1], [B, H, W, C] -> [B] (dm-pix on [0, 1])."""
    import dm_pix

    return dm_pix.ssim((a + 1.0) / 2.0, (b + 1.0) / 2.0, max_val=1.0)


def ssim_scores(images_a: Any, images_b: Any) -> np.ndarray:
    """SSIM of paired images: [N, H, W, C] twice (uint8 or [-1, 1]) -> [N] float32."""
    a, b = image_io.as_model_input(images_a), image_io.as_model_input(images_b)
    if a.shape != b.shape:
        raise ValueError(f"paired images must have one shape, got {a.shape} and {b.shape}")
    if min(a.shape[1:3]) < 11:
        raise ValueError(f"SSIM's 11x11 window needs images of at least 11x11, got {a.shape}")
    parts = [
        np.asarray(_ssim(a[i : i + _PAIRS_PER_CALL], b[i : i + _PAIRS_PER_CALL]))
        for i in range(0, len(a), _PAIRS_PER_CALL)
    ]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0,), np.float32)


def ssim_matrix(images_a: Any, images_b: Any) -> np.ndarray:
    """SSIM of every pair: [N, H, W, C], [M, H, W, C] -> [N, M]."""
    a, b = image_io.as_model_input(images_a), image_io.as_model_input(images_b)
    rows, cols = np.divmod(np.arange(len(a) * len(b)), len(b))
    return ssim_scores(a[rows], b[cols]).reshape(len(a), len(b))


def encoder_matrix(bundle: Any, images_a: Any, images_b: Any) -> np.ndarray:
    """CLS cosine of every pair under an `EncoderBundle`: [N, ...], [M, ...] -> [N, M]."""
    from semantica_jax.encoder.encode import encode

    both = np.concatenate([image_io.as_model_input(images_a), image_io.as_model_input(images_b)])
    _, cls = encode(bundle, both, with_tokens=False)
    return cosine.cosine_matrix(cls[: len(images_a)], cls[len(images_a) :])


def similarity_matrix_of(
    method: str,
    images_a: Any,
    images_b: Any | None = None,
    *,
    encoder: Any = None,
    decoder: Any = None,
    settings: Any = None,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """The similarity of every (a_i, b_j) under `method` (higher = more similar).

    Args:
      method: one of METHODS.
      images_a: [N, H, W, C] uint8 or float in [-1, 1].
      images_b: [M, H, W, C] likewise; None = images_a.
      encoder: the `EncoderBundle` of method 'encoder'.
      decoder: the `diffsim.DiffSimModel` of 'diffsim' / 'diffsim_c'.
      settings: a `diffsim.Settings` for those (its `method` is set from `method`).
      log: `log(str)` for diffsim's throughput line.

    Returns:
      [N, M] float32.

    Raises:
      ValueError: an unknown method, or the model it needs not given.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    images_b = images_a if images_b is None else images_b
    if method == "pixel":
        return pixel_matrix(images_a, images_b)
    if method == "ssim":
        return ssim_matrix(images_a, images_b)
    if method == "encoder":
        if encoder is None:
            raise ValueError("method 'encoder' needs encoder= (an EncoderBundle)")
        return encoder_matrix(encoder, images_a, images_b)
    from semantica_jax.metrics import diffsim

    if decoder is None:
        raise ValueError(f"method {method!r} needs decoder= (a diffsim.DiffSimModel)")
    settings = dataclasses.replace(settings or diffsim.Settings(), method=DIFFSIM_METHODS[method])
    return diffsim.matrix(decoder, images_a, images_b, settings, log=log)
