"""The encoder job (`main --mode=encoder`): train the frozen encoder into a workdir, evaluate it.

`run_encoder_job(config, workdir)` trains into WORKDIR/encoder (or reuses it), evaluates on
the eval split with the train split as gallery, and writes WORKDIR/encoder_eval.json and
WORKDIR/encoder_cosine_hist.png; the trained encoder is also installed in the cache dir
under its key (if absent), so that training jobs of the same config reuse it.

  python -m semantica_jax.main --mode=encoder --config=configs/encoder_mnist.py --workdir=DIR
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

import ml_collections
from absl import logging

from semantica_jax import assets
from semantica_jax import workdir as run_dir
from semantica_jax.encoder import bundle as encoder_bundle
from semantica_jax.encoder import objectives as encoder_objectives
from semantica_jax.encoder import train as encoder_train
from semantica_jax.encoder.evaluate import evaluate_encoder, save_cosine_histogram
from semantica_jax.errors import UserError
from semantica_jax.models.vit import ViTConfig
from semantica_jax.utils import atomic_files

Log = Callable[[str], None]


def validate_encoder_config(encoder: ml_collections.ConfigDict) -> None:
    """Rejects encoder values that would fail later, naming the field (before any write)."""
    for name in ("num_steps", "batch_size", "learning_rate", "width", "depth", "heads"):
        value = encoder[name]
        if not value > 0 or not math.isfinite(value):  # `not > 0` also rejects NaN
            raise ValueError(f"config.encoder.{name}={value} must be positive and finite")
    if encoder.warmup_steps < 0:
        raise ValueError(f"config.encoder.warmup_steps={encoder.warmup_steps} must be >= 0")
    if encoder.objective not in ("contrastive", "simclr"):
        raise ValueError(
            f"config.encoder.objective={encoder.objective!r}: choose contrastive or simclr"
        )
    encoder_objectives.view_jitter(encoder)  # the SimCLR views' jitter, by field


def run_encoder_job(
    config: ml_collections.ConfigDict, workdir: str, log: Log = logging.info
) -> dict:
    """Trains (or reuses WORKDIR/encoder) and evaluates; returns the evaluation report."""
    validate_encoder_config(config.encoder)
    if config.encoder.get("pretrained"):
        raise UserError(
            f"config.encoder.pretrained={config.encoder.pretrained} is a pretrained encoder: "
            "there is nothing to train; run --mode=train (or clear encoder.pretrained)"
        )
    workdir = os.path.abspath(workdir)
    assets.prepare_streamed_splits(config, (config.data.train_split, config.data.eval_split))
    # What training would use (encoder.max_train_images): the cached encoder's key says so.
    train_images, train_labels = assets.encoder_training_images(
        config, *assets.load_split(config, config.data.train_split)
    )
    vit = ViTConfig.from_config(config.encoder, config.data.image_size, config.data.channels)
    os.makedirs(workdir, exist_ok=True)
    run_dir.write_config(config, workdir)
    enc_dir = os.path.join(workdir, "encoder")
    if os.path.isdir(enc_dir):
        log(f"encoder: {enc_dir} exists; evaluating it (delete it to retrain)")
        bundle = encoder_bundle.load_encoder(enc_dir, expected=vit)
    else:
        bundle = encoder_train.train_and_save(config, enc_dir, train_images, train_labels, log=log)
        assets.install_encoder(enc_dir, config, log)
    test_images, test_labels = assets.load_split(config, config.data.eval_split)
    report, same_cos, diff_cos = evaluate_encoder(
        bundle, train_images, train_labels, test_images, test_labels, seed=config.seed
    )
    with open(os.path.join(enc_dir, "encoder.json")) as f:
        report["train"] = json.load(f).get("train", {})
    report.update(key=bundle.key, params_hash=bundle.params_hash, encoder_dir=enc_dir)
    atomic_files.write_json(
        os.path.join(workdir, "encoder_eval.json"), report, sort_keys=True, default=list
    )
    save_cosine_histogram(same_cos, diff_cos, os.path.join(workdir, "encoder_cosine_hist.png"))
    cos = report["cosine"]
    accuracy = report[f"knn{report['k']}_accuracy"]
    log(
        f"encoder eval: k-NN(k={report['k']}) accuracy {accuracy:.4f}  "
        f"cos same {cos['same']['mean']:.3f}±{cos['same']['std']:.3f}  "
        f"different {cos['different']['mean']:.3f}±{cos['different']['std']:.3f}  "
        f"AUC {cos['auc_same_vs_different']:.4f}  -> {workdir}/encoder_eval.json"
    )
    return report
