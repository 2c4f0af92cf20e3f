"""Siamese training of the frozen encoder (seed 001) on in-memory images.

Objectives (`config.encoder.objective`):
  * `contrastive` (default): balanced same/different-class pairs drawn from the labels, the
    standard contrastive loss (METHODS §7) on the L2-normalised projection head output.
  * `simclr`: label-free; two random augmentations of each image, NT-Xent loss.
Downstream code uses the encoder's LayerNorm'd CLS token (`cls` [B, D]) and patch tokens;
similarity is the cosine of CLS (see models/vit.py for why the head is not used).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from semantica_jax.data import image_augment
from semantica_jax.encoder import objectives
from semantica_jax.encoder.bundle import (
    EncoderBundle,
    encoder_identity,
    encoder_key,
    init_params,
    save_encoder,
)
from semantica_jax.errors import NonFiniteError
from semantica_jax.models.vit import ViTConfig, ViTEncoder, init_and_embed
from semantica_jax.utils import progress
from semantica_jax.utils.cosine import l2_normalize
from semantica_jax.utils.image_io import to_model_range

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Objective:
    """Static (hashable) training hyper-parameters used inside the jitted step."""

    kind: str
    batch_size: int
    margin: float
    temperature: float
    jitter: image_augment.Jitter  # simclr: how each of the two views is drawn


@flax.struct.dataclass
class EncoderTrainState:
    step: jnp.ndarray
    params: Any
    opt_state: Any


def make_optimizer(cfg_encoder: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with linear warm-up then cosine decay to 0; global-norm clipping at 1 for safety."""
    num_steps = int(cfg_encoder.num_steps)
    warmup = min(int(cfg_encoder.warmup_steps), max(num_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(cfg_encoder.learning_rate),
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=0.0,
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def _embed(params: Any, model: ViTEncoder, images: jnp.ndarray) -> jnp.ndarray:
    """L2-normalised head output [B, E] of float images [B, H, W, C] in [-1, 1]."""
    return l2_normalize(model.apply({"params": params}, images, method=init_and_embed))


def encoder_loss(
    params: Any,
    images: jnp.ndarray,
    index: objectives.ClassIndex | None,
    rng: jax.Array,
    *,
    model: ViTEncoder,
    objective: Objective,
) -> tuple[jnp.ndarray, dict]:
    """Mean training loss of one batch and its metrics.

    Args:
      params: encoder parameters.
      images: the whole training set, uint8 [N, H, W, C] (on device).
      index: ClassIndex of the labels (contrastive) or None (simclr).
      rng: PRNG key of this step.
      model: the encoder module.
      objective: static hyper-parameters.

    Returns:
      (loss scalar, metrics dict of scalars).
    """
    batch = objective.batch_size
    k_data, k_aug = jax.random.split(rng)
    if objective.kind == "contrastive":
        anchor, partner, _ = objectives.sample_pairs(k_data, index, batch)
        chosen = jnp.concatenate([anchor, partner])
        emb = _embed(params, model, to_model_range(images[chosen]))
        loss, metrics = objectives.in_batch_contrastive_loss(
            emb, index.labels[chosen], objective.margin
        )
    else:
        chosen = jax.random.randint(k_data, (batch,), 0, images.shape[0])
        x = to_model_range(images[chosen])
        k_a, k_b = jax.random.split(k_aug)
        views = jnp.concatenate(
            [
                image_augment.jitter_images(k_a, x, objective.jitter),
                image_augment.jitter_images(k_b, x, objective.jitter),
            ],
            axis=0,
        )
        emb = _embed(params, model, views)
        loss = jnp.mean(objectives.nt_xent_loss(emb, objective.temperature))
        metrics = {"cos_views": jnp.mean(jnp.sum(emb[:batch] * emb[batch:], axis=-1))}
    metrics["loss"] = loss
    return loss, metrics


def train_step(
    state: EncoderTrainState,
    images: jnp.ndarray,
    index: objectives.ClassIndex | None,
    rng: jax.Array,
    *,
    model: ViTEncoder,
    tx: optax.GradientTransformation,
    objective: Objective,
) -> tuple[EncoderTrainState, dict]:
    """One Adam step; the step rng is `fold_in(rng, state.step)`."""
    step_rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(encoder_loss, has_aux=True)
    (_, metrics), grads = grad_fn(
        state.params, images, index, step_rng, model=model, objective=objective
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _check_training_data(images: np.ndarray, labels: np.ndarray | None, objective: str) -> None:
    if objective not in ("contrastive", "simclr"):
        raise ValueError(
            f"unknown encoder.objective {objective!r}; choose 'contrastive' or 'simclr'"
        )
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"training images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}"
        )
    if objective == "contrastive" and (labels is None or len(labels) != len(images)):
        raise ValueError("the contrastive objective needs one label per image")


def train_encoder(
    vit: ViTConfig,
    cfg_encoder: ml_collections.ConfigDict,
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    seed: int,
    log: Log = logging.info,
) -> tuple[ViTEncoder, Any, dict]:
    """Trains the encoder on in-memory arrays.

    Args:
      vit: architecture.
      cfg_encoder: the config `encoder` section (objective, batch_size, num_steps, lr, ...).
      images: uint8 [N, H, W, C] training images.
      labels: int [N] class labels (contrastive) or None (simclr).
      seed: the config seed; init and step streams are folded from it.
      log: progress sink.

    Returns:
      (model, params, summary) where summary has steps, final metrics, seconds, steps/s.
    """
    objective = Objective(
        kind=str(cfg_encoder.objective),
        batch_size=int(cfg_encoder.batch_size),
        margin=float(cfg_encoder.margin),
        temperature=float(cfg_encoder.temperature),
        jitter=objectives.view_jitter(cfg_encoder),
    )
    _check_training_data(images, labels, objective.kind)
    model = vit.module()
    root = jax.random.key(seed)
    params = init_params(model, jax.random.fold_in(root, 0))
    tx = make_optimizer(cfg_encoder)
    state = EncoderTrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)
    )
    index = objectives.build_class_index(labels) if objective.kind == "contrastive" else None
    step_fn = jax.jit(
        functools.partial(train_step, model=model, tx=tx, objective=objective),
        donate_argnums=(0,),
    )
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    num_steps = int(cfg_encoder.num_steps)
    log(
        f"encoder: {objective.kind} on {len(images)} images, {num_params:,} params, "
        f"{num_steps} steps of batch {objective.batch_size}"
    )
    device_images = jnp.asarray(images)
    train_rng = jax.random.fold_in(root, 1)
    log_every = max(1, int(cfg_encoder.log_every))
    start = time.perf_counter()
    report = progress.loop(num_steps, "encoder training", log=log)
    metrics: dict = {}
    for step in range(1, num_steps + 1):
        state, metrics = step_fn(state, device_images, index, train_rng)
        if step % log_every == 0 or step == num_steps:
            values = {k: float(v) for k, v in metrics.items()}
            if not np.isfinite(values["loss"]) or not np.isfinite(values["grad_norm"]):
                raise NonFiniteError(
                    f"encoder training diverged at step {step}: {values}; "
                    "lower encoder.learning_rate"
                )
            extras = "  ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()) if k != "loss")
            log(f"encoder step {step}/{num_steps}  loss {values['loss']:.4f}  {extras}")
            # Only here, where the host waited for the step: elsewhere the loop runs ahead
            # of the device (async dispatch) and the rate would swing (1.5 to 8 steps/s).
            report(step)
    seconds = time.perf_counter() - start
    summary = {
        "steps": num_steps,
        "final": {k: float(v) for k, v in metrics.items()},
        "train_seconds": round(seconds, 2),
        "steps_per_second": round(num_steps / max(seconds, 1e-9), 3),
        "num_params": num_params,
        "num_train_images": int(len(images)),
    }
    return model, jax.device_get(state.params), summary


def train_and_save(
    config: ml_collections.ConfigDict,
    directory: str,
    images: np.ndarray,
    labels: np.ndarray | None,
    log: Log = logging.info,
) -> EncoderBundle:
    """Trains with `config` on the given arrays and saves into `directory` (atomic)."""
    vit = ViTConfig.from_config(config.encoder, config.data.image_size, config.data.channels)
    _, params, summary = train_encoder(
        vit,
        config.encoder,
        images,
        labels if config.encoder.objective == "contrastive" else None,
        seed=int(config.seed),
        log=log,
    )
    meta = {"key": encoder_key(config), "identity": encoder_identity(config), "train": summary}
    return save_encoder(directory, vit, params, meta)
