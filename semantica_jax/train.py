"""Training: `train_and_evaluate(config, workdir)`, the importable entry point of `main`.

Shape-first state on a device mesh, a jitted donated train step, Orbax checkpoints with
the data-pipeline position (exact resume), clu summaries, sample grids, preemption.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from semantica_jax import assets, decoder
from semantica_jax import workdir as run_dir
from semantica_jax.data.pipeline import make_train_pipeline, write_pair_report
from semantica_jax.diffusion import losses, samplers, schedules
from semantica_jax.encoder import objectives as encoder_objectives
from semantica_jax.errors import NonFiniteError
from semantica_jax.train_step import (
    StepConfig,
    TrainState,
    create_state,
    learning_rate_schedule,
    make_optimizer,
    model_apply_fn,
    train_step,
)
from semantica_jax.utils import atomic_files, checkpointing, image_io, parallel


def validate_config(config) -> None:
    """Rejects values that would fail later, with a message naming the field."""
    positive = {
        "train.batch_size": config.train.batch_size,
        "train.num_steps": config.train.num_steps,
        "train.log_every": config.train.log_every,
        "train.checkpoint_every": config.train.checkpoint_every,
        "sampler.num_steps": config.sampler.num_steps,
        "data.image_size": config.data.image_size,
        "train.keep_checkpoints": config.train.keep_checkpoints,
        "train.learning_rate": config.train.learning_rate,
        "encoder.num_steps": config.encoder.num_steps,
        "encoder.batch_size": config.encoder.batch_size,
        "encoder.learning_rate": config.encoder.learning_rate,
        "diffusion.min_snr_gamma": config.diffusion.min_snr_gamma,
    }
    for name, value in positive.items():
        # `not value > 0` also rejects NaN, known before the first step.
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"config.{name}={value} must be positive and finite")
    if not math.isfinite(config.sampler.guidance):
        raise ValueError(f"config.sampler.guidance={config.sampler.guidance} must be finite")
    if config.train.eval_every < 0:
        raise ValueError(
            f"config.train.eval_every={config.train.eval_every} must be >= 0 (0: never)"
        )
    if not 0.0 <= config.diffusion.p_uncond < 1.0:
        raise ValueError(f"config.diffusion.p_uncond={config.diffusion.p_uncond} must be in [0,1)")
    if not 0.0 <= config.train.ema_decay < 1.0:
        raise ValueError(f"config.train.ema_decay={config.train.ema_decay} must be in [0,1)")
    learning_rate_schedule(config.train)  # raises on an unknown train.lr_decay
    encoder_objectives.view_jitter(config.encoder)  # raises naming a bad encoder.aug_* field
    choices = {
        "diffusion.schedule": (config.diffusion.schedule, schedules.SCHEDULES),
        "diffusion.prediction": (config.diffusion.prediction, losses.PREDICTIONS),
        "diffusion.loss": (config.diffusion.loss, losses.LOSSES),
        "sampler.kind": (config.sampler.kind, samplers.KINDS),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"config.{name}={value!r}: choose one of {', '.join(allowed)}")
    if not 0.0 <= config.sampler.gamma <= 1.0:
        raise ValueError(f"config.sampler.gamma={config.sampler.gamma} must be in [0, 1]")
    if config.episodes.kind == "folder" and not str(config.data.dataset).startswith("folder:"):
        raise ValueError(
            f"config.episodes.kind=folder groups a folder dataset's sub-folders, but "
            f"data.dataset={config.data.dataset!r}; use data.dataset=folder:PATH or another kind"
        )


def _encoder_apply(bundle):
    def apply(params, images):
        return bundle.model.apply({"params": params}, images)[1]

    return apply


class _Preemption:
    """SIGTERM -> finish the current step, save, exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: will checkpoint at the next step boundary and exit")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _host_scalars(metrics: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}


def _sample_grid(config, variation_fn, params, cond, rng) -> np.ndarray:
    """Rows: conditioning image | variations at guidance 0 | variations at config guidance.

    Returns:
      uint8 [rows * (1 + 2 * cols) images, H, W, C] in row-major order.
    """
    rows, cols = int(config.train.num_sample_rows), int(config.train.num_sample_cols)
    tokens = np.repeat(np.asarray(cond.tokens, np.float32), cols, axis=0)
    cls = np.repeat(np.asarray(cond.cls, np.float32), cols, axis=0)
    out = [cond.images.reshape(rows, 1, *cond.images.shape[1:])]
    for i, w in enumerate((0.0, float(config.sampler.guidance))):
        x = variation_fn(params, tokens, cls, jax.random.fold_in(rng, i), jnp.float32(w))
        x = image_io.to_uint8(jax.device_get(x))
        out.append(x.reshape(rows, cols, *x.shape[1:]))
    return np.concatenate(out, axis=1).reshape(-1, *cond.images.shape[1:])


def _write_samples(config, workdir, writer, step, variation_fn, params, cond, rng) -> str:
    grid = _sample_grid(config, variation_fn, params, cond, rng)
    cols = 1 + 2 * int(config.train.num_sample_cols)
    image = image_io.make_grid(grid, cols)
    writer.write_images(step, {"samples": image[None]})
    path = run_dir.sample_grid_path(workdir, step)
    if jax.process_index() == 0:
        image_io.save_png(image, path)
    return path


def sample_grid_conditioning(data: assets.EmbeddedSplit, rows: int) -> np.ndarray:
    """Indices of `rows` conditioning images for sample grids: distinct classes first."""
    chosen: list[int] = []
    for label in np.unique(data.labels):
        if len(chosen) == rows:
            break
        chosen.append(int(np.flatnonzero(data.labels == label)[0]))
    rest = [i for i in range(len(data.labels)) if i not in set(chosen)]
    return np.asarray((chosen + rest)[:rows], np.int64)


def train_and_evaluate(config, workdir: str) -> tuple[TrainState, dict[str, Any]]:
    """Trains the decoder described by `config`, resuming from `workdir` if possible.

    Everything that can be checked without training (config values, a resumed workdir's
    config, the data, the pairs, the model shapes) is checked before the first file is
    written, and process 0 holds WORKDIR/.lock for the whole run.

    Returns:
      The final train state and a summary dict (also written to WORKDIR/summary.json).
    """
    validate_config(config)
    run_dir.check_resumable(config, workdir)
    with contextlib.ExitStack() as stack:
        return training_loop(config, workdir, stack)


def training_loop(config, workdir: str, stack: contextlib.ExitStack):
    """The body of `train_and_evaluate`; takes the workdir lock into `stack` before writing."""
    mesh = parallel.make_mesh(config.mesh.fsdp)
    per_process_batch = parallel.check_batch_size(config.train.batch_size, mesh)
    assets.prepare_streamed_splits(config, (config.data.train_split, config.data.eval_split))
    bundle = assets.load_encoder(config)
    train_data = assets.embedded_split(config, bundle, config.data.train_split)
    train_data = train_data.with_classes(tuple(config.data.get("train_classes", ())))
    eval_data = assets.embedded_split(config, bundle, config.data.eval_split)
    pipe, pair_report = make_train_pipeline(config, train_data, per_process_batch)
    grid_idx = sample_grid_conditioning(eval_data, int(config.train.num_sample_rows))
    grid_cond = assets.EmbeddedSplit(
        eval_data.images[grid_idx],
        eval_data.labels[grid_idx],
        np.asarray(eval_data.tokens[grid_idx], np.float32),
        eval_data.cls[grid_idx],
    )

    model = decoder.build_model(config)
    tx = make_optimizer(config.train)
    example = {
        "target": train_data.images[:1],
        "cond_tokens": train_data.tokens[:1],
        "cond_cls": train_data.cls[:1],
    }
    state, abstract_state = create_state(config, model, tx, example, mesh)
    # Checked: the first writes.
    if jax.process_index() == 0:
        stack.enter_context(run_dir.locked(workdir))
        run_dir.write_config(config, workdir)
        write_pair_report(pair_report, workdir)
        parameter_overview.log_parameter_overview(state.params)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False
    )
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))

    hp = StepConfig.from_config(config)
    use_sim = hp.sim_loss_weight > 0
    step_fn = functools.partial(
        train_step,
        model_apply=model_apply_fn(model),
        encoder_apply=_encoder_apply(bundle) if use_sim else None,
        logsnr_fn=decoder.training_logsnr_fn(config),
        tx=tx,
        hp=hp,
    )
    state_shardings = jax.tree.map(lambda a: a.sharding, abstract_state)
    batch_sharding = parallel.batch_sharding(mesh)
    encoder_params = bundle.params if use_sim else {}
    jit_step = jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding, parallel.replicated(mesh)),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=(0,),
    )
    variation_fn = decoder.make_variation_fn(config, model)
    lr_fn = learning_rate_schedule(config.train)

    ckpt = checkpointing.Checkpointer(
        run_dir.checkpoints_dir(workdir),
        keep=int(config.train.keep_checkpoints),
    )
    start_step = 0
    restored = ckpt.restore_latest_good(
        abstract_state, lambda state, data: _check_restored(state, data, pipe)
    )
    if restored is not None:
        state, _, _ = restored
        start_step = int(jax.device_get(state.step))
        logging.info("resumed from %s at step %d", ckpt.directory, start_step)
    elif jax.process_index() == 0:
        writer.write_hparams(
            {
                k: v
                for k, v in run_dir.flat_config(config.to_dict()).items()
                if isinstance(v, int | float | str)
            }
        )

    num_steps = int(config.train.num_steps)
    summary_path = run_dir.summary_path(workdir)
    if start_step >= num_steps and os.path.isfile(summary_path):
        logging.info("%s already trained to step %d; nothing to do", workdir, start_step)
        ckpt.close()
        with open(summary_path) as f:
            return state, json.load(f)
    report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    hooks = [report]
    if config.train.profile and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=workdir))
    sample_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2**20)
    summary: dict[str, Any] = {
        "workdir": workdir,
        "num_params": num_params,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "start_step": start_step,
        "pairs": {k: v for k, v in pair_report.items() if not isinstance(v, list | np.ndarray)},
        "preempted": False,
    }
    last_metrics: dict[str, float] = {}
    accum: list[dict[str, jax.Array]] = []
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    t_log = time.perf_counter()
    step = start_step
    with jax.set_mesh(mesh), _Preemption() as preemption, pipe:
        while step < num_steps:
            batch = parallel.global_batch(_model_inputs(next(pipe)), mesh)
            state, metrics = jit_step(state, batch, encoder_params)
            step += 1
            accum.append(metrics)
            pending.append((step, metrics))
            for hook in hooks:
                hook(step)
            every = config.train.eval_every
            preempted = parallel.any_process(preemption.requested)
            log_now = step % config.train.log_every == 0 or step == num_steps
            sample_now = bool(every) and (step % every == 0 or step == num_steps)
            save_now = step % config.train.checkpoint_every == 0 or step == num_steps or preempted
            if log_now or sample_now or save_now:
                # Checked in arrears so the host never waits on every step; a non-finite
                # step leaves the state untouched (see train_step), so nothing broken is kept.
                _raise_if_not_finite(pending)
                pending = []
            if log_now:
                scalars = _mean_scalars(accum)
                elapsed = time.perf_counter() - t_log
                scalars["images_per_sec"] = len(accum) * config.train.batch_size / elapsed
                scalars["lr"] = float(lr_fn(step - 1))
                writer.write_scalars(step, scalars)
                last_metrics, accum, t_log = scalars, [], time.perf_counter()
            if sample_now:
                summary["last_sample_grid"] = _write_samples(
                    config,
                    workdir,
                    writer,
                    step,
                    variation_fn,
                    state.ema_params,
                    grid_cond,
                    jax.random.fold_in(sample_rng, step),
                )
            if save_now:
                ckpt.save(step, state, pipe.state())
            if preempted:
                summary["preempted"] = True
                logging.warning("preempted at step %d: checkpoint saved, exiting", step)
                break
    ckpt.wait_until_finished()
    ckpt.close()
    writer.flush()
    summary.update(final_step=step, metrics=last_metrics)
    if jax.process_index() == 0:
        atomic_files.write_json(summary_path, summary, default=str)
    return state, summary


def _check_restored(state: TrainState, data_state: dict, pipe) -> None:
    """Rejects a restored checkpoint that cannot be what this run saved.

    Its values must be finite (a non-finite state is never saved, so one read back is
    damage), and the pipeline position must be valid for this pipeline and agree with the
    state's step (every step consumes one batch), which moves the pipeline there.
    """
    finite = jax.tree.map(
        lambda x: bool(jnp.all(jnp.isfinite(x))), (state.params, state.ema_params)
    )
    if not all(jax.tree.leaves(finite)):
        raise ValueError("non-finite parameter values")
    pipe.restore(data_state)
    consumed = int(data_state["epoch"]) * pipe.steps_per_epoch + int(data_state["step"])
    if consumed != int(jax.device_get(state.step)):
        raise ValueError(
            f"pipeline position {consumed} does not match the state's step "
            f"{int(jax.device_get(state.step))}"
        )


def _raise_if_not_finite(pending: list[tuple[int, dict[str, jax.Array]]]) -> None:
    """Raises NonFiniteError naming the first step whose loss or gradient norm was NaN/Inf."""
    flags = jax.device_get([m["finite"] for _, m in pending])
    for (step, metrics), finite in zip(pending, flags, strict=True):
        if not bool(finite):
            loss, grad_norm = (float(metrics[k]) for k in ("loss", "grad_norm"))
            raise NonFiniteError(
                f"non-finite loss or gradient norm at step {step} (loss={loss}, "
                f"grad_norm={grad_norm}); the run stopped and that state was not kept or "
                "checkpointed. Lower config.train.learning_rate or enable config.train.grad_clip."
            )


def _model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The part of a pipeline batch the train step consumes."""
    return {
        "target": batch["target"],
        "cond_tokens": batch["cond_tokens"],
        "cond_cls": batch["cond_cls"],
    }


def _mean_scalars(accum: list[dict[str, jax.Array]]) -> dict[str, float]:
    host = [_host_scalars(m) for m in accum]
    return {k: float(np.mean([h[k] for h in host])) for k in host[0]}
