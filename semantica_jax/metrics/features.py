"""The feature network that defines "MNIST FID": a small CNN classifier, trained once, cached.

It is deliberately *not* the conditioning encoder: a similarity loss computed with the
encoder would otherwise be graded by the encoder itself (DESIGN §2, Metrics). Its
penultimate layer (a ReLU Dense of <= 128 units) gives the features for FID and
precision/recall; 128 dims keep the 128x128 covariance well estimated at N = 2,000.

This module trains, saves, restores and applies it (the module itself is
`models/feature_net.py`). A saved network is a directory with `params/`
(checkpointing.save_pytree) and `meta.json` (settings, data, test accuracy), built under a
temporary name and renamed into place, so a reader sees either nothing or a complete
network. Where it lives, `<cache_dir>/feature_net/<key>/` (key = hash of the settings and of
the data it was trained on), is `assets.feature_net`'s business.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training.train_state import TrainState

from semantica_jax.errors import NonFiniteError
from semantica_jax.models.feature_net import FeatureNet
from semantica_jax.utils import atomic_files, checkpointing, image_io, progress

# Bump when the architecture or training code changes in a way that changes the network:
# it is part of the cache key, so stale cached networks are not reused.
_CODE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FeatureNetSettings:
    """Architecture and training settings of the feature classifier.

    Attributes:
      conv_channels: output channels of the conv stages (3x3 conv, ReLU, 2x2 max-pool each).
      embed_dim: width F of the penultimate (feature) layer, <= 128.
      num_classes: classifier outputs.
      num_steps: optimisation steps (config.eval.feature_net_steps).
      batch_size: training examples per step.
      learning_rate: AdamW peak learning rate (linear warm-up, cosine decay to 0).
      warmup_steps: linear warm-up steps.
      weight_decay: AdamW decoupled weight decay.
      max_shift: random translation augmentation, in pixels (0 disables).
      seed: fixed, independent of config.seed: the yardstick must not move between runs.
      log_every: steps between progress lines (not part of the cache key).
    """

    conv_channels: tuple[int, ...] = (32, 64)
    embed_dim: int = 128
    num_classes: int = 10
    num_steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    max_shift: int = 2
    seed: int = 0
    log_every: int = 200

    def __post_init__(self):
        if not 1 <= self.embed_dim <= 128:
            raise ValueError(
                f"embed_dim={self.embed_dim}; the feature width must be in [1, 128] so that "
                "FID's covariance is well estimated from N = 2,000 images."
            )
        if self.num_steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"num_steps={self.num_steps} and batch_size={self.batch_size} must be >= 1 "
                "(config.eval.feature_net_steps)."
            )

    @classmethod
    def from_config(cls, config) -> FeatureNetSettings:
        """Settings from the full config: eval.feature_net_steps, the rest default."""
        return cls(num_steps=int(config.eval.feature_net_steps))

    def key_fields(self) -> dict[str, Any]:
        """The fields that change the trained network (everything but logging)."""
        fields = dataclasses.asdict(self)
        fields.pop("log_every")
        fields["conv_channels"] = list(self.conv_channels)
        return fields


@dataclasses.dataclass(frozen=True)
class FeatureNetBundle:
    """A trained feature network.

    Attributes:
      params: flax params of `model`.
      model: the FeatureNet module.
      path: cache directory it was loaded from / saved to ("" if not saved).
      settings: the FeatureNetSettings it was trained with.
      test_accuracy: accuracy on the evaluation split when it was trained.
    """

    params: Any
    model: FeatureNet
    path: str
    settings: FeatureNetSettings
    test_accuracy: float


def build_model(settings: FeatureNetSettings) -> FeatureNet:
    """The FeatureNet module for the given settings."""
    return FeatureNet(settings.conv_channels, settings.embed_dim, settings.num_classes)


def random_shift(images: jax.Array, rng: jax.Array, max_shift: int) -> jax.Array:
    """Translates each image [B,H,W,C] (in [-1,1]) by up to max_shift pixels, fills with -1.

    Small translations are the classic MNIST augmentation; -1 is the background colour.
    """
    if max_shift == 0:
        return images
    _, h, w, _ = images.shape
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = jnp.pad(images, pad, constant_values=-1.0)
    offsets = jax.random.randint(rng, (images.shape[0], 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def create_train_state(
    settings: FeatureNetSettings, image_shape: tuple[int, int, int], rng: jax.Array
) -> TrainState:
    """Initial TrainState for images of shape (H, W, C)."""
    model = build_model(settings)
    params = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))["params"]
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        settings.learning_rate,
        min(settings.warmup_steps, max(settings.num_steps - 1, 0)),
        settings.num_steps,
    )
    tx = optax.adamw(schedule, weight_decay=settings.weight_decay)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, rng: jax.Array, max_shift: int
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on a batch: images uint8 [B,H,W,C], labels int [B].

    Returns the new state and {'loss', 'accuracy'} of the batch (before the update).
    """
    inputs = random_shift(image_io.to_model_range(images), rng, max_shift)

    def loss_fn(params):
        logits, _ = state.apply_fn({"params": params}, inputs)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}


def _check_training_data(images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"training images must be uint8 [N,H,W,C]; got {images.dtype} {images.shape}."
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be [N={images.shape[0]}]; got {labels.shape}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels span [{labels.min()}, {labels.max()}] but num_classes={num_classes}."
        )


def train_feature_net(
    images: np.ndarray, labels: np.ndarray, settings: FeatureNetSettings
) -> dict[str, Any]:
    """Trains the classifier on arrays and returns its params.

    Args:
      images: uint8 [N,H,W,C] training images.
      labels: int [N] labels in [0, num_classes).
      settings: architecture and training settings.

    Returns:
      Trained flax params.
    """
    images, labels = np.asarray(images), np.asarray(labels).astype(np.int32)
    _check_training_data(images, labels, settings.num_classes)
    rng = jax.random.key(settings.seed)
    state = create_train_state(settings, images.shape[1:], jax.random.fold_in(rng, 0))
    step_fn = jax.jit(train_step, static_argnames="max_shift", donate_argnums=0)
    batch_rng = np.random.default_rng(settings.seed)
    shift_rng = jax.random.fold_in(rng, 1)
    order, cursor = batch_rng.permutation(images.shape[0]), 0
    report = progress.loop(
        settings.num_steps,
        f"feature net: {images.shape[0]} images, batch {settings.batch_size}",
    )
    for step in range(settings.num_steps):
        # Epoch-wise shuffling: every example is seen once per pass.
        if cursor + settings.batch_size > order.shape[0]:
            order, cursor = batch_rng.permutation(images.shape[0]), 0
        idx = order[cursor : cursor + settings.batch_size]
        cursor += settings.batch_size
        state, metrics = step_fn(
            state,
            images[idx],
            labels[idx],
            jax.random.fold_in(shift_rng, step),
            max_shift=settings.max_shift,
        )
        done = step + 1
        if done % settings.log_every == 0 or done == settings.num_steps:
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                raise NonFiniteError(
                    f"feature net loss is {loss} at step {done}; lower the learning rate."
                )
            logging.info(
                "feature net step %d/%d loss %.4f batch acc %.3f",
                done,
                settings.num_steps,
                loss,
                float(metrics["accuracy"]),
            )
            report(done)  # after the host waited for the step (async dispatch runs ahead)
    return jax.device_get(state.params)


def _batched_apply(
    apply_fn: Callable[[jax.Array], jax.Array], images: np.ndarray, batch_size: int
) -> np.ndarray:
    """apply_fn over images [N,...] in fixed-size batches (last one padded: one compile)."""
    n = images.shape[0]
    batch_size = max(1, min(batch_size, n))
    outputs = []
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        valid = batch.shape[0]
        if valid < batch_size:
            pad = [(0, batch_size - valid)] + [(0, 0)] * (batch.ndim - 1)
            batch = np.pad(batch, pad)
        outputs.append(np.asarray(apply_fn(batch))[:valid])
    return np.concatenate(outputs)


def make_apply(bundle: FeatureNetBundle) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """Jitted images [B,H,W,C] in [-1,1] -> (logits [B,K], feats [B,F]) for a bundle."""
    # Params go in as an argument, not a closure, so they are not baked into the program.
    apply = jax.jit(lambda params, images: bundle.model.apply({"params": params}, images))
    return functools.partial(apply, bundle.params)


def feature_fn(
    bundle: FeatureNetBundle, batch_size: int = 500
) -> Callable[[np.ndarray], np.ndarray]:
    """The metric features of a trained bundle.

    Args:
      bundle: from `assets.feature_net` (or built from `train_feature_net`).
      batch_size: images per jitted call (the last batch is padded).

    Returns:
      fn(images [B,H,W,C] float in [-1,1] (or uint8)) -> float32 numpy [B,F].
    """
    apply = make_apply(bundle)
    return lambda images: _batched_apply(
        lambda x: apply(x)[1], image_io.as_model_input(images), batch_size
    )


def classify(bundle: FeatureNetBundle, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Predicted labels int32 [B] of images [B,H,W,C] in [-1,1] (or uint8)."""
    apply = make_apply(bundle)
    logits = _batched_apply(lambda x: apply(x)[0], image_io.as_model_input(images), batch_size)
    return np.argmax(logits, axis=-1).astype(np.int32)


def accuracy(bundle: FeatureNetBundle, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images [N,H,W,C] whose predicted label equals labels [N]."""
    return float(np.mean(classify(bundle, images) == np.asarray(labels)))


def feature_net_key(settings: FeatureNetSettings, data: dict[str, Any]) -> str:
    """Cache key: short hash of the settings, the training data identity and code version."""
    payload = json.dumps(
        {"settings": settings.key_fields(), "data": data, "version": _CODE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def restore_feature_net(path: str) -> FeatureNetBundle:
    """Loads a bundle saved by `save_feature_net`."""
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    fields = dict(meta["settings"])
    fields["conv_channels"] = tuple(fields["conv_channels"])
    settings = FeatureNetSettings(**fields)
    model = build_model(settings)
    shape = tuple(meta["image_shape"])
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape), jnp.float32))["params"]
    )
    params = checkpointing.restore_pytree(os.path.join(path, "params"), target=abstract)
    return FeatureNetBundle(params, model, path, settings, float(meta["test_accuracy"]))


def save_feature_net(
    path: str, bundle: FeatureNetBundle, image_shape: tuple[int, ...], data: dict[str, Any]
) -> None:
    """Writes params + meta.json into a temp dir next to `path`, then renames it to `path`.

    If another process finished the same network first, its copy is kept and ours dropped.
    """
    tmp = atomic_files.temp_dir_beside(path)
    try:
        checkpointing.save_pytree(os.path.join(tmp, "params"), bundle.params)
        meta = {
            "settings": bundle.settings.key_fields() | {"log_every": bundle.settings.log_every},
            "image_shape": list(image_shape),
            "data": data,
            "test_accuracy": bundle.test_accuracy,
            "version": _CODE_VERSION,
        }
        atomic_files.write_json(os.path.join(tmp, "meta.json"), meta)
        atomic_files.publish_dir(tmp, path)  # False: another process's equal copy stays
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train_and_score(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    settings: FeatureNetSettings,
) -> FeatureNetBundle:
    """Trains on the train arrays and measures accuracy on the test arrays (uint8 images)."""
    start = time.perf_counter()
    params = train_feature_net(train_images, train_labels, settings)
    bundle = FeatureNetBundle(params, build_model(settings), "", settings, float("nan"))
    test_accuracy = accuracy(bundle, test_images, test_labels)
    logging.info(
        "feature net: test accuracy %.4f on %d images after %d steps (%.0f s)",
        test_accuracy,
        test_images.shape[0],
        settings.num_steps,
        time.perf_counter() - start,
    )
    return dataclasses.replace(bundle, test_accuracy=test_accuracy)
