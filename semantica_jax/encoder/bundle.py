"""A trained encoder on disk and in memory: `EncoderBundle`, its identity and cache key.

An encoder directory holds `params/` (Orbax, via utils.checkpointing) and `encoder.json`
(architecture, key, identity, training summary and a hash of the parameter values). Where
the directory lives (`<cache_dir>/encoder/<key>`, or a job's WORKDIR/encoder) is decided by
`assets` and `train_encoder`, not here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from semantica_jax.encoder import objectives
from semantica_jax.models.vit import ViTConfig, ViTEncoder, init_and_embed
from semantica_jax.utils import atomic_files, checkpointing

# Bump when a code change alters what training produces, so cached encoders are not reused.
ENCODER_FORMAT = 1
# encoder fields that do not change the trained weights (excluded from the cache key).
_NON_WEIGHT_FIELDS = ("checkpoint", "log_every", "pretrained", "input_size")


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


def pretrained_bundle(config: ml_collections.ConfigDict) -> EncoderBundle:
    """The frozen DINOv2 of `config.encoder.pretrained` (a local Hugging Face checkpoint).

    Its key (which names the embedding cache) hashes the weights' values, the input size and
    the data the images come from, so another checkpoint or size never reuses embeddings.
    """
    from semantica_jax.models import dinov2

    arch, params = dinov2.load_pretrained(
        config.encoder.pretrained,
        input_size=int(config.encoder.get("input_size", 224)),
        image_size=int(config.data.image_size),
        data_channels=int(config.data.channels),
    )
    params_hash = hash_params(params)
    identity = {
        "format": ENCODER_FORMAT,
        "pretrained": params_hash,
        "architecture": dataclasses.asdict(arch),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.abspath(os.path.expanduser(config.encoder.pretrained))
    return EncoderBundle(arch.module(), params, path, key, params_hash)


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
    from semantica_jax.data import folder

    section = {k: v for k, v in config.encoder.to_dict().items() if k not in _NON_WEIGHT_FIELDS}
    if not section.get("max_train_images"):
        section.pop("max_train_images", None)  # 0 = all images: the key it always had
    for field, (_, old) in objectives.VIEW_FIELDS.items():
        if section.get(field, old) == old:
            section.pop(field, None)  # the SimCLR jitter it always had: the same key
    extra = {}
    if folder.is_folder_dataset(config.data.dataset):  # its content, not only its path
        listing = folder.scan(folder.folder_path(config.data.dataset))
        extra["folder"] = folder.fingerprint(listing, config.data.image_size, config.data.channels)
    return {
        **extra,
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


def init_params(model: ViTEncoder, rng: jax.Array) -> Any:
    """Initialises all encoder parameters (head included)."""
    dummy = jnp.zeros(
        (1, model.config.image_size, model.config.image_size, model.config.channels), jnp.float32
    )
    return model.init(rng, dummy, method=init_and_embed)["params"]


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


class DamagedEncoderError(ValueError):
    """An encoder directory whose manifest or params do not read back or match their hash."""


def load_encoder(directory: str, expected: ViTConfig | None = None) -> EncoderBundle:
    """Loads an encoder directory written by `save_encoder`.

    Args:
      directory: holds `params/` and `encoder.json`.
      expected: if given, the architecture the caller's config asks for; a mismatch is an
        error naming the differing fields.

    Returns:
      EncoderBundle.

    Raises:
      FileNotFoundError: no encoder.json.
      DamagedEncoderError: encoder.json or the params do not read back, or the params do
        not match the hash recorded when they were saved.
      ValueError: the architecture differs from `expected`.
    """
    directory = os.path.abspath(directory)
    manifest_path = os.path.join(directory, "encoder.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(
            f"{directory} is not an encoder directory (no encoder.json); train one with "
            "`python -m semantica_jax.main --mode=encoder --workdir=DIR` and pass DIR/encoder"
        )
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        vit = ViTConfig(**manifest["vit"])
    except (ValueError, KeyError, TypeError) as err:
        raise DamagedEncoderError(f"{manifest_path} does not read back ({err})") from err
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
    try:
        params = checkpointing.restore_pytree(os.path.join(directory, "params"), target)
        params = jax.device_get(params)
    except Exception as err:  # noqa: BLE001 - Orbax raises many types for damaged files
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        message = f"encoder params in {directory} do not read back ({reason})"
        raise DamagedEncoderError(message) from err
    params_hash = hash_params(params)
    if manifest.get("params_hash") not in (None, params_hash):
        raise DamagedEncoderError(
            f"encoder params in {directory} do not match the hash in encoder.json "
            "(corrupted or edited); delete the directory to retrain"
        )
    return EncoderBundle(model, params, directory, str(manifest.get("key", "")), params_hash)
