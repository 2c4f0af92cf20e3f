"""Random geometric jitter of images in [-1, 1] (dm-pix), shared by its two users.

* The label-free encoder's SimCLR views (`encoder/train.py`, knobs `config.encoder.aug_*`).
* The few-shot classifier's standard-augmentation baseline (`augmentation.standard_augment`).

Per image: a rotation drawn from U(-a, a) degrees and a scale from U(1 - s, 1 + s) about
the centre, a shift of U(-t, t) times the side per axis, then (alpha > 0) an elastic
deformation of Simard et al. (2003) (a Gaussian-smoothed random displacement field of
std `elastic_sigma` px, scaled by `elastic_alpha` px), then (noise_std > 0) additive
Gaussian pixel noise; the result is clipped to [-1, 1]. Pixels pulled from outside the
image are -1 (black background).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Jitter:
    """How strong each random transform is (static: hashable, fine as a jit argument).

    Attributes:
      rotation_deg: a, rotation drawn from U(-a, a) degrees.
      scale: s, scale drawn from U(1 - s, 1 + s), 0 <= s < 1.
      shift: t, shift per axis drawn from U(-t, t) times the image side.
      elastic_alpha: displacement scale in pixels; 0 = no elastic deformation.
      elastic_sigma: smoothing std of the displacement field in pixels.
      noise_std: std of the additive pixel noise; 0 = none.
    """

    rotation_deg: float = 0.0
    scale: float = 0.0
    shift: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    noise_std: float = 0.0

    def validate(self, names: dict[str, str] | None = None) -> None:
        """Raises ValueError naming the first value outside its range.

        names: attribute -> the name to use in the message (e.g. its config field).
        """
        names = names or {}

        def fail(attr: str, need: str) -> None:
            raise ValueError(f"{names.get(attr, attr)}={getattr(self, attr)} must be {need}")

        for attr in ("rotation_deg", "shift", "elastic_alpha", "noise_std"):
            if not getattr(self, attr) >= 0:  # `not >=` also rejects NaN
                fail(attr, ">= 0")
        if not 0 <= self.scale < 1:
            fail("scale", "in [0, 1)")
        if not self.elastic_sigma > 0:
            fail("elastic_sigma", "> 0")


def _jitter_one(key: jax.Array, image: jnp.ndarray, jitter: Jitter) -> jnp.ndarray:
    """One image [H, W, C] float in [-1, 1] -> [H, W, C]."""
    import dm_pix

    k_rot, k_scale, k_shift, k_elastic = jax.random.split(key, 4)
    h, w = image.shape[0], image.shape[1]
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-1, maxval=1) * jitter.rotation_deg)
    scale = 1.0 + jax.random.uniform(k_scale, (), minval=-1, maxval=1) * jitter.scale
    shift = (
        jax.random.uniform(k_shift, (2,), minval=-1, maxval=1) * jitter.shift * jnp.array([h, w])
    )
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    # Pull-back map (output -> input): the inverse of rotate-and-scale about the centre.
    matrix = jnp.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2, 0.0])
    offset = centre - matrix @ centre - jnp.concatenate([shift, jnp.zeros(1)])
    out = dm_pix.affine_transform(image, matrix, offset=offset, mode="constant", cval=-1.0)
    if jitter.elastic_alpha > 0:
        out = dm_pix.elastic_deformation(
            k_elastic, out, jitter.elastic_alpha, jitter.elastic_sigma, mode="constant", cval=-1.0
        )
    if jitter.noise_std > 0:
        k_noise = jax.random.fold_in(key, 4)  # a fifth stream; the first four as before
        out = out + jitter.noise_std * jax.random.normal(k_noise, out.shape, out.dtype)
    return jnp.clip(out, -1.0, 1.0)


def jitter_images(key: jax.Array, images: jnp.ndarray, jitter: Jitter) -> jnp.ndarray:
    """images [B, H, W, C] float in [-1, 1] -> [B, H, W, C], one draw per image.

    Jit- and vmap-friendly (pass `jitter` as a static argument); one key per batch.
    """
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: _jitter_one(k, x, jitter))(keys, images.astype(jnp.float32))
