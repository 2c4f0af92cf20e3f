"""The train state (and its sharded initialisation), the optimiser and the pure train step.

The step is jitted at the call site. Nothing here reads data or writes summaries, so a
benchmark can build the real step without the input pipeline's or clu's dependencies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from semantica_jax.diffusion import losses
from semantica_jax.utils import parallel
from semantica_jax.utils.cosine import rowwise_cosine

# Edges of the logSNR buckets for the per-noise-level loss summaries.
LOGSNR_BUCKET_EDGES = (-5.0, 0.0, 5.0)


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue bit-exactly (with the data pipeline position)."""

    step: jax.Array  # int32 scalar
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2] raw PRNG key; streams are folded from it per step


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Typed view of the config fields the train step reads."""

    prediction: str
    loss: str
    min_snr_gamma: float
    p_uncond: float
    ema_decay: float
    sim_loss_weight: float
    sim_loss_clip_x: bool

    @classmethod
    def from_config(cls, config) -> StepConfig:
        return cls(
            prediction=config.diffusion.prediction,
            loss=config.diffusion.loss,
            min_snr_gamma=float(config.diffusion.min_snr_gamma),
            p_uncond=float(config.diffusion.p_uncond),
            ema_decay=float(config.train.ema_decay),
            sim_loss_weight=float(config.train.sim_loss_weight),
            sim_loss_clip_x=bool(config.train.sim_loss_clip_x),
        )


def learning_rate_schedule(cfg_train) -> optax.Schedule:
    """Linear warm-up to the peak learning rate, then `cfg_train.lr_decay`.

    'constant' keeps the peak (Semantica states no decay); 'cosine' decays it to 0 at
    `cfg_train.num_steps` (short runs: the last steps refine at a small learning rate).
    """
    peak = float(cfg_train.learning_rate)
    warmup = max(int(cfg_train.warmup_steps), 1)
    decay = cfg_train.lr_decay
    if decay == "constant":
        return optax.linear_schedule(0.0, peak, warmup)
    if decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup, decay_steps=max(int(cfg_train.num_steps), warmup + 1)
        )
    raise ValueError(
        f"config.train.lr_decay={decay!r} is not a schedule; choose 'constant' or 'cosine'"
    )


def make_optimizer(cfg_train) -> optax.GradientTransformation:
    """Adam(b1, b2, eps) with warm-up and optional global-norm clipping."""
    adam = optax.adam(
        learning_rate_schedule(cfg_train),
        b1=float(cfg_train.b1),
        b2=float(cfg_train.b2),
        eps=float(cfg_train.eps),
    )
    if float(cfg_train.grad_clip) > 0:
        return optax.chain(optax.clip_by_global_norm(float(cfg_train.grad_clip)), adam)
    return adam


def _streams(rng: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """One named RNG stream per purpose, folded from the state key and the step."""
    key = jax.random.fold_in(rng, step)
    names = ("time", "noise", "drop_cond", "dropout")
    return {name: jax.random.fold_in(key, i) for i, name in enumerate(names)}


def _bucket_metrics(per_example: jax.Array, logsnr: jax.Array) -> dict[str, jax.Array]:
    """Mean loss within each logSNR bucket (NaN-free: empty buckets report 0 with count 0)."""
    edges = (-jnp.inf, *LOGSNR_BUCKET_EDGES, jnp.inf)
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (logsnr >= lo) & (logsnr < hi)
        count = jnp.sum(mask)
        name = f"loss_logsnr/{lo:g}_to_{hi:g}"
        out[name] = jnp.sum(jnp.where(mask, per_example, 0.0)) / jnp.maximum(count, 1)
    return out


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    encoder_params: Any,
    *,
    model_apply: Callable[..., jax.Array],
    encoder_apply: Callable[[Any, jax.Array], jax.Array] | None,
    logsnr_fn: Callable[[jax.Array], jax.Array],
    tx: optax.GradientTransformation,
    hp: StepConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step.

    Args:
      state: the current train state.
      batch: global arrays `target [B,H,W,C]` in [-1,1], `cond_tokens [B,T,D]`,
        `cond_cls [B,D]`.
      encoder_params: frozen encoder parameters (similarity loss only; else unused).
      model_apply: `(params, z_t, logsnr, cond_tokens, cond_cls, drop_cond, dropout_rng)
        -> output [B,H,W,C]` in the `hp.prediction` parametrisation.
      encoder_apply: `(encoder_params, images [B,H,W,C]) -> features [B,F]`, frozen.
      logsnr_fn: the training schedule, t [B] -> logSNR [B].
      tx: the optimiser.
      hp: step hyper-parameters.

    Returns:
      The new state (unchanged if the loss or gradient norm is non-finite, so a broken state
      is never carried on or checkpointed) and scalar metrics, including `finite`.
    """
    x = batch["target"]
    bsz = x.shape[0]
    rngs = _streams(state.rng, state.step)
    t = jax.random.uniform(rngs["time"], (bsz,))
    logsnr = logsnr_fn(t)
    eps = jax.random.normal(rngs["noise"], x.shape, x.dtype)
    z_t = losses.diffuse(x, eps, logsnr)
    drop_cond = jax.random.bernoulli(rngs["drop_cond"], hp.p_uncond, (bsz,))
    use_sim = hp.sim_loss_weight > 0 and encoder_apply is not None

    def loss_fn(params):
        output = model_apply(
            params, z_t, logsnr, batch["cond_tokens"], batch["cond_cls"], drop_cond, rngs["dropout"]
        )
        per_example = losses.diffusion_loss(
            output, x, eps, logsnr, hp.prediction, hp.loss, hp.min_snr_gamma
        )
        total = jnp.mean(per_example)
        aux = {"diffusion_loss": total, "per_example": per_example}
        if use_sim:
            x_pred = losses.predictions(output, z_t, logsnr, hp.prediction)[0]
            if hp.sim_loss_clip_x:
                x_pred = jnp.clip(x_pred, -1.0, 1.0)
            feats_clean = jax.lax.stop_gradient(encoder_apply(encoder_params, x))
            sim = 1.0 - rowwise_cosine(feats_clean, encoder_apply(encoder_params, x_pred))
            aux["sim_loss"] = jnp.mean(sim)
            total = total + hp.sim_loss_weight * aux["sim_loss"]
        return total, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Warm-up of the EMA decay so short runs are not dominated by the initial weights.
    decay = jnp.minimum(hp.ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state
    )

    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics = {
        "loss": loss,
        "diffusion_loss": aux["diffusion_loss"],
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(params),
        "ema_decay": decay,
        "finite": finite,
        **_bucket_metrics(aux["per_example"], logsnr),
    }
    if use_sim:
        metrics["sim_loss"] = aux["sim_loss"]
    return new_state, metrics


def model_apply_fn(model) -> Callable:
    """The decoder's training-mode apply in the argument order `train_step` calls it."""

    def apply(params, z_t, logsnr, cond_tokens, cond_cls, drop_cond, dropout_rng):
        return model.apply(
            {"params": params},
            z_t,
            logsnr,
            cond_tokens,
            cond_cls,
            drop_cond,
            train=True,
            rngs={"dropout": dropout_rng},
        )

    return apply


def create_state(config, model, tx, example: dict[str, np.ndarray], mesh) -> tuple[Any, Any]:
    """Shape-first initialisation: eval_shape -> shardings -> jitted init on the mesh.

    Returns:
      (state, abstract_state); the abstract state (with shardings) is the restore target.
    """
    rng = jax.random.PRNGKey(config.seed)

    def init(rng):
        init_rng, state_rng = jax.random.split(rng)
        b = 1
        params = model.init(
            {"params": init_rng},
            jnp.zeros((b, *example["target"].shape[1:]), jnp.float32),
            jnp.zeros((b,), jnp.float32),
            jnp.zeros((b, *example["cond_tokens"].shape[1:]), jnp.float32),
            jnp.zeros((b, *example["cond_cls"].shape[1:]), jnp.float32),
            jnp.zeros((b,), bool),
            train=False,
        )["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=params,
            opt_state=tx.init(params),
            rng=state_rng,
        )

    abstract = jax.eval_shape(init, rng)
    shardings = parallel.state_shardings(abstract, mesh, int(config.mesh.fsdp_min_size))
    state = jax.jit(init, out_shardings=shardings)(rng)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return state, abstract
