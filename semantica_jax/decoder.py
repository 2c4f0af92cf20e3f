"""The decoder as used by training, evaluation and the tools: build it, sample variations.

`make_variation_fn` returns one function `(params, cond_tokens, cond_cls, rng,
guidance) -> images` that is compiled once per shape and shared by the
sample grid in training, the evaluation sampler and the command-line tools.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from semantica_jax import conditioning
from semantica_jax.diffusion import samplers, schedules
from semantica_jax.models import uvit


def build_model(config) -> uvit.UViT:
    """The U-ViT decoder described by `config.model` at the data resolution."""
    return uvit.UViT(
        uvit.UViTConfig.from_config(config.model, config.data.image_size, config.data.channels)
    )


def training_logsnr_fn(config) -> Callable[[jax.Array], jax.Array]:
    return schedules.logsnr_fn(config.diffusion, config.data.image_size)


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Typed view of `config.sampler` and the parametrisation the decoder was trained with."""

    kind: str
    num_steps: int
    gamma: float
    clip_x: bool
    prediction: str

    @classmethod
    def from_config(cls, config, **overrides) -> SamplerSettings:
        values = dict(
            kind=config.sampler.kind,
            num_steps=int(config.sampler.num_steps),
            gamma=float(config.sampler.gamma),
            clip_x=bool(config.sampler.clip_x),
            prediction=config.diffusion.prediction,
        )
        values.update(overrides)
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class DecoderApply:
    """The U-ViT in eval mode as a `samplers.ApplyFn`, cond = {'tokens' [B,T,D], 'cls' [B,D]}.

    `prepare` runs once per sampler call, before the reverse steps: it computes what does
    not depend on the noise level (the CLS term of the conditioning embedding, the
    projected encoder tokens and every cross-attention layer's keys and values), and the
    null condition's once for the whole batch (it is the same learned sequence for every
    sample). Each step then runs only the noise-dependent part on that cache.

    Hashed by the model (a frozen config), so every sampler built on one decoder shares the
    compiled loop: new EMA params, guidance or t_start never recompile.
    """

    model: uvit.UViT

    def prepare(self, params, cond, guided: bool, null_only: bool = False):
        """cond -> the step's cache for B (or 2B: cond, then null or negative).

        cond: {'tokens' [B,T',D], 'cls' [B,D]}, optionally 'token_logw' [B,T'] and
          'negative' {'tokens', 'cls'} (see conditioning.py).
        null_only: every row gets the null condition (the unconditional branch alone).
        """
        tokens, cls = cond["tokens"], cond["cls"]
        b = tokens.shape[0]
        keep = jnp.zeros((b,), bool)
        null = self._condition(params, tokens[:1], cls[:1], jnp.ones((1,), bool))
        null = jax.tree.map(lambda n: jnp.broadcast_to(n, (b, *n.shape[1:])), null)
        cache = null if null_only else self._condition(params, tokens, cls, keep)
        logw = None if null_only else cond.get("token_logw")
        if logw is not None:
            cache = dict(cache, key_bias=jnp.asarray(logw, jnp.float32))
        if not guided:
            return cache
        negative = cond.get("negative")
        if negative is not None:  # steer away from this condition instead of the null
            neg_tokens = conditioning.match_tokens(negative["tokens"], tokens.shape[1])
            null = self._condition(params, neg_tokens, negative["cls"], keep)
        if logw is not None:
            null = dict(null, key_bias=jnp.zeros_like(cache["key_bias"]))
        return jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), cache, null)

    def _condition(self, params, tokens, cls, drop_cond):
        return self.model.apply(
            {"params": params}, tokens, cls, drop_cond, method=uvit.UViT.condition
        )

    def __call__(self, params, z_t, logsnr, cond, drop_cond):
        """One denoiser call on a cache from `prepare` (drop_cond is already in it)."""
        del drop_cond
        return self.model.apply(
            {"params": params}, z_t, logsnr, None, None, None, train=False, cond_cache=cond
        )


def make_variation_fn(config, model: uvit.UViT | None = None, **sampler_overrides):
    """A sampler of variations for conditioning embeddings, compiled once per batch shape.

    Returns:
      `fn(params, cond_tokens [B,T,D], cond_cls [B,D], rng, guidance, t_start=1.0,
      x_start=None, token_logw=None, negative=None) -> images [B,H,W,C]` in [-1,1].
      Both guidance branches run in one doubled batch; a concrete guidance of 0
      (`samplers.is_unguided`) runs the conditional branch alone, at half the cost, and
      ignores `negative` (which only enters through w). `guidance` and `t_start` are
      traced. `t_start < 1` with `x_start` [B,H,W,C] in [-1,1] starts part-way from the
      noised x_start (SDEdit). `token_logw` [B,T] and `negative` {'tokens','cls'} are the
      controls of conditioning.py (traced values: a new alpha never recompiles).
    """
    apply_fn = DecoderApply(model or build_model(config))
    settings = SamplerSettings.from_config(config, **sampler_overrides)
    logsnr_fn = training_logsnr_fn(config)
    shape_hw = (config.data.image_size, config.data.image_size, config.data.channels)

    def fn(
        params,
        cond_tokens,
        cond_cls,
        rng,
        guidance,
        t_start=1.0,
        x_start=None,
        token_logw=None,
        negative=None,
    ):
        guided = not samplers.is_unguided(guidance)
        sampler = samplers.make_sampler(
            apply_fn,
            (cond_tokens.shape[0], *shape_hw),
            logsnr_fn,
            prediction=settings.prediction,
            kind=settings.kind,
            num_steps=settings.num_steps,
            gamma=settings.gamma,
            clip_x=settings.clip_x,
            guided=guided,
        )
        cond = {
            "tokens": jnp.asarray(cond_tokens, jnp.float32),
            "cls": jnp.asarray(cond_cls, jnp.float32),
        }
        if token_logw is not None:
            cond["token_logw"] = jnp.asarray(token_logw, jnp.float32)
        if negative is not None and guided:
            cond["negative"] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), negative)
        return sampler(params, cond, rng, guidance, t_start, x_start)

    return fn
