"""The frozen encoder: Siamese training on MNIST, caching, batched encoding, similarity.

Objectives (`config.encoder.objective`):
  * `contrastive` (default): balanced same/different-class pairs drawn from the labels, the
    standard contrastive loss (METHODS §7) on the L2-normalised projection head output.
  * `simclr`: label-free; two random augmentations of each image, NT-Xent loss.
Downstream code uses the encoder's LayerNorm'd CLS token (`cls` [B, D]) and patch tokens;
similarity is the cosine of CLS (see models/vit.py for why the head is not used).

By default (`config.encoder.checkpoint == ''`) `load_or_train_encoder` trains the encoder once
into `<cache_dir>/encoder/<key>` (key = hash of the encoder section + data identity + seed)
and reuses it. An encoder directory holds `params/` (Orbax) and `encoder.json`.

Run (trains into WORKDIR/encoder, then evaluates k-NN accuracy and cosine distributions):
  python -m semantica_jax.encoder --config=configs/encoder_mnist.py --workdir=DIR
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from semantica_jax import atomic_files, checkpointing
from semantica_jax import encoder_objectives as objectives
from semantica_jax.models.vit import ViTConfig, ViTEncoder, init_and_embed

# Bump when a code change alters what training produces, so cached encoders are not reused.
ENCODER_FORMAT = 1
# encoder fields that do not change the trained weights (excluded from the cache key).
_NON_WEIGHT_FIELDS = ("checkpoint", "log_every")
_ARCH_FIELDS = ("patch_size", "width", "depth", "heads", "mlp_ratio", "embed_dim")

Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    """Default progress sink: one line on stderr, flushed (stdout stays for results)."""
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class EncoderBundle:
    """A trained encoder ready to use.

    Attributes:
      model: the ViTEncoder module.
      params: its parameters (the `params` collection).
      path: directory it was loaded from / saved to.
      key: cache key of the config it was trained with.
      params_hash: sha256 of the actual parameter values (identifies the weights).
    """

    model: ViTEncoder
    params: Any
    path: str
    key: str
    params_hash: str


@dataclasses.dataclass(frozen=True)
class Objective:
    """Static (hashable) training hyper-parameters used inside the jitted step."""

    kind: str
    batch_size: int
    margin: float
    temperature: float


@flax.struct.dataclass
class EncoderTrainState:
    step: jnp.ndarray
    params: Any
    opt_state: Any


def to_model_range(images: jnp.ndarray) -> jnp.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is assumed to be in [-1, 1] already."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 127.5 - 1.0
    return images.astype(jnp.float32)


def hash_params(params: Any) -> str:
    """sha256 over parameter paths, shapes, dtypes and bytes (hex, 16 chars)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        value = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:16]


def encoder_identity(config: ml_collections.ConfigDict) -> dict:
    """What determines the trained weights: encoder section, data identity, seed, format."""
    section = {k: v for k, v in config.encoder.to_dict().items() if k not in _NON_WEIGHT_FIELDS}
    return {
        "format": ENCODER_FORMAT,
        "encoder": section,
        "dataset": config.data.dataset,
        "split": config.data.train_split,
        "image_size": config.data.image_size,
        "channels": config.data.channels,
        "max_examples": config.data.max_examples,
        "seed": config.seed,
    }


def encoder_key(config: ml_collections.ConfigDict) -> str:
    """Cache key: hash of `encoder_identity(config)` (hex, 16 chars)."""
    blob = json.dumps(encoder_identity(config), sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


def init_params(model: ViTEncoder, rng: jax.Array) -> Any:
    """Initialises all encoder parameters (head included)."""
    dummy = jnp.zeros(
        (1, model.config.image_size, model.config.image_size, model.config.channels), jnp.float32
    )
    return model.init(rng, dummy, method=init_and_embed)["params"]


def _embed(params: Any, model: ViTEncoder, images: jnp.ndarray) -> jnp.ndarray:
    """L2-normalised head output [B, E] of float images [B, H, W, C] in [-1, 1]."""
    return objectives.l2_normalize(model.apply({"params": params}, images, method=init_and_embed))


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
        views = jnp.concatenate([objectives.augment(k_a, x), objectives.augment(k_b, x)], axis=0)
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


def _format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


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
    log: Log = log_stderr,
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
    rate_start, rate_step = start, 0
    metrics: dict = {}
    for step in range(1, num_steps + 1):
        state, metrics = step_fn(state, device_images, index, train_rng)
        if step == 1:
            # Time the steady state: the first step includes compilation.
            jax.block_until_ready(metrics["loss"])
            rate_start, rate_step = time.perf_counter(), 1
        if step % log_every == 0 or step == num_steps:
            values = {k: float(v) for k, v in metrics.items()}
            if not np.isfinite(values["loss"]) or not np.isfinite(values["grad_norm"]):
                raise FloatingPointError(
                    f"encoder training diverged at step {step}: {values}; "
                    "lower encoder.learning_rate"
                )
            now = time.perf_counter()
            rate = (step - rate_step) / max(now - rate_start, 1e-9) if step > rate_step else 0.0
            eta = (num_steps - step) / rate if rate > 0 else 0.0
            extras = "  ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()) if k != "loss")
            log(
                f"encoder step {step}/{num_steps}  loss {values['loss']:.4f}  {extras}  "
                f"{rate:.2f} steps/s  ETA {_format_eta(eta)}"
            )
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


def save_encoder(directory: str, vit: ViTConfig, params: Any, meta: dict) -> EncoderBundle:
    """Writes `directory/params` + `directory/encoder.json` atomically (temp dir, rename).

    Args:
      directory: must not exist.
      vit: architecture (stored so the checkpoint is self-describing).
      params: encoder parameters.
      meta: extra JSON-able fields (key, identity, training summary).

    Returns:
      The bundle of the saved encoder.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        raise FileExistsError(f"encoder directory {directory} already exists")
    params_hash = hash_params(params)
    tmp = atomic_files.temp_dir_beside(directory)
    try:
        checkpointing.save_pytree(os.path.join(tmp, "params"), params)
        manifest = dict(meta, vit=dataclasses.asdict(vit), params_hash=params_hash)
        atomic_files.write_json(
            os.path.join(tmp, "encoder.json"), manifest, sort_keys=True, default=list
        )
        if not atomic_files.publish_dir(tmp, directory):
            # Another process won the race; its encoder may differ from ours.
            raise FileExistsError(f"encoder directory {directory} already exists")
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return EncoderBundle(vit.module(), params, directory, str(meta.get("key", "")), params_hash)


def load_encoder(directory: str, expected: ViTConfig | None = None) -> EncoderBundle:
    """Loads an encoder directory written by `save_encoder`.

    Args:
      directory: holds `params/` and `encoder.json`.
      expected: if given, the architecture the caller's config asks for; a mismatch is an
        error naming the differing fields.

    Returns:
      EncoderBundle.
    """
    directory = os.path.abspath(directory)
    manifest_path = os.path.join(directory, "encoder.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(
            f"{directory} is not an encoder directory (no encoder.json); train one with "
            "`python -m semantica_jax.encoder --workdir=DIR` and pass DIR/encoder"
        )
    with open(manifest_path) as f:
        manifest = json.load(f)
    vit = ViTConfig(**manifest["vit"])
    if expected is not None and vit != expected:
        diffs = [
            f"{name}: checkpoint {getattr(vit, name)} vs config {getattr(expected, name)}"
            for name in dataclasses.asdict(vit)
            if getattr(vit, name) != getattr(expected, name)
        ]
        raise ValueError(
            f"encoder checkpoint {directory} does not match config.encoder/data ("
            + "; ".join(diffs)
            + "); change the config to match or point encoder.checkpoint elsewhere"
        )
    model = vit.module()
    target = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    params = jax.device_get(checkpointing.restore_pytree(os.path.join(directory, "params"), target))
    params_hash = hash_params(params)
    if manifest.get("params_hash") not in (None, params_hash):
        raise ValueError(
            f"encoder params in {directory} do not match the hash in encoder.json "
            "(corrupted or edited); delete the directory to retrain"
        )
    return EncoderBundle(model, params, directory, str(manifest.get("key", "")), params_hash)


def _load_train_data(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    # Imported lazily: it pulls in TensorFlow Datasets, which tools that only encode avoid.
    from semantica_jax.data import mnist as mnist_data

    return mnist_data.load_split(
        config.data.dataset,
        config.data.train_split,
        mnist_data.resolve_data_dir(config),
        config.data.image_size,
        config.data.channels,
        config.data.max_examples,
    )


def train_and_save(
    config: ml_collections.ConfigDict,
    directory: str,
    images: np.ndarray,
    labels: np.ndarray | None,
    log: Log = log_stderr,
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


def load_or_train_encoder(
    config: ml_collections.ConfigDict, log: Log = log_stderr
) -> EncoderBundle:
    """The frozen encoder for `config`: an explicit checkpoint, the cached one, or a new one.

    `config.encoder.checkpoint` non-empty: load it (architecture must match the config).
    Otherwise look in `<cache_dir>/encoder/<encoder_key(config)>`; train there if missing.
    """
    vit = ViTConfig.from_config(config.encoder, config.data.image_size, config.data.channels)
    if config.encoder.checkpoint:
        return load_encoder(config.encoder.checkpoint, expected=vit)
    key = encoder_key(config)
    directory = os.path.join(os.path.abspath(config.cache_dir), "encoder", key)
    if os.path.isfile(os.path.join(directory, "encoder.json")):
        log(f"encoder: reusing cached {directory}")
        return load_encoder(directory, expected=vit)
    log(f"encoder: no cached encoder for key {key}; training into {directory}")
    images, labels = _load_train_data(config)
    try:
        return train_and_save(config, directory, images, labels, log=log)
    except FileExistsError:
        # Another process finished the same encoder first: use theirs.
        return load_encoder(directory, expected=vit)


@functools.partial(jax.jit, static_argnames=("model", "with_tokens"))
def _encode_batch(params: Any, images: jnp.ndarray, model: ViTEncoder, with_tokens: bool):
    tokens, cls = model.apply({"params": params}, to_model_range(images))
    return (tokens if with_tokens else None), cls


def _as_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}")
    if images.dtype != np.uint8:
        images = images.astype(np.float32)
        # A range far outside [-1, 1] is a scale mistake (e.g. 0..255 floats); a small
        # overshoot (unclipped samples) is clipped.
        if images.size and (images.min() < -2.0 or images.max() > 2.0):
            raise ValueError(
                f"float images must be in [-1, 1], got [{images.min():.3g}, {images.max():.3g}]; "
                "pass uint8 or rescale with x / 127.5 - 1"
            )
        images = np.clip(images, -1.0, 1.0)
    return images


def iter_encode(
    bundle: EncoderBundle, images: np.ndarray, batch_size: int = 256, with_tokens: bool = True
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray]]:
    """Encodes in fixed-size batches (the last one padded, so one compilation).

    Args:
      bundle: the encoder.
      images: uint8 [N, H, W, C] or float in [-1, 1].
      batch_size: images per forward pass.
      with_tokens: also return the patch tokens.

    Yields:
      (start, tokens float32 [b, T, D] or None, cls float32 [b, D]) for rows start..start+b.
    """
    images = _as_batch(images)
    num = len(images)
    batch = max(1, min(batch_size, num))
    for start in range(0, num, batch):
        chunk = images[start : start + batch]
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

    For whole datasets use `embeddings.embedding_cache` (float16 on disk, memory-mapped).
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


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows: a [N, D], b [M, D] -> [N, M] float32."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a @ b.T).astype(np.float32)


def similarity_matrix(bundle: EncoderBundle, images: np.ndarray) -> np.ndarray:
    """Cosine similarity of the CLS embeddings of all pairs: images [N, H, W, C] -> [N, N]."""
    _, cls = encode(bundle, images, with_tokens=False)
    return cosine_matrix(cls, cls)


def similarity(bundle: EncoderBundle, a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of the CLS embeddings of two images [H, W, C] (uint8 or [-1, 1])."""
    pair = np.stack([np.asarray(to_model_range(jnp.asarray(x))) for x in (a, b)])
    return float(similarity_matrix(bundle, pair)[0, 1])


if __name__ == "__main__":
    # The CLI lives in encoder_eval (flags, training into the workdir, evaluation).
    from semantica_jax import encoder_eval

    encoder_eval.run()
