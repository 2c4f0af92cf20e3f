"""Denoising by starting the reverse process part-way (seed 001's task B1; SDEdit).

  python -m semantica_jax.tools.denoise --workdir=DIR --image=digit.png --noise=0.5 --out=den.png
  python -m semantica_jax.tools.denoise --workdir=DIR --image=noisy.png --noisy --noise=0.3 \
      --out=den.png

Noise level. `--noise` is the standard deviation s of additive Gaussian noise on the image
in the model's [-1, 1] range: y = x + s n, n ~ N(0, I) (s = 0.5 is strong: a quarter of the
range). Scaling y by alpha = sigmoid(lambda)^(1/2) with lambda = -2 log s gives
alpha y = alpha x + sigma n, because alpha s = sigma: exactly the diffusion state z_t at the
time t_start = schedule.t_from_logsnr(lambda). The sampler starts there (x_start_is_noisy)
and runs its steps over [0, t_start] down to a clean image.

Modes. By default the clean --image is noised with n drawn from --seed and then restored;
with --noisy the image is taken as y itself (already noisy, at level --noise). The output
PNG shows [input | noisy | restored] (in --noisy mode the first two panels are the same).

Condition. The decoder is conditional, and conditioning on an embedding of a noisy image
is off-distribution for it, so by default it runs with the learned null condition
(drop_cond = True, the unconditional branch that classifier-free guidance training
provides; the same as guidance w = -1). --condition=self conditions on the encoder
embedding of the (noisy) input instead.

The core, `denoise`, takes any `apply_fn(params, z_t, logsnr, cond, drop_cond)`, so it can
be checked against an exact denoiser of a known data distribution.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semantica_jax import errors
from semantica_jax import workdir as run_dir
from semantica_jax.diffusion import samplers
from semantica_jax.errors import UserError
from semantica_jax.tools import cli

CONDITIONS = ("null", "self")
# Smallest t_start handed to the sampler: its grid needs t > 0 at every model call.
_MIN_T_START = 1e-6


@dataclasses.dataclass(frozen=True)
class NoiseLevel:
    """Where additive noise of std s sits in the VP diffusion.

    Attributes:
      noise_std: s in y = x + s n (image range [-1, 1]).
      logsnr: lambda = -2 log s.
      t_start: schedule time with logsnr(t_start) = lambda.
      alpha: sqrt(sigmoid(lambda)); z = alpha y.
      sigma: sqrt(sigmoid(-lambda)) = alpha s.
    """

    noise_std: float
    logsnr: float
    t_start: float
    alpha: float
    sigma: float


def noise_level(noise_std: float, schedule) -> NoiseLevel:
    """Maps the noise std s of y = x + s n onto the schedule (see module doc).

    Args:
      noise_std: s > 0.
      schedule: a schedule from `schedules.logsnr_fn` (callable t -> logsnr, with
        `t_from_logsnr`).

    Raises:
      UserError: s is not positive, or outside the noise levels the schedule covers
        (the message gives the range).
    """
    s = float(noise_std)
    if not (math.isfinite(s) and s > 0.0):
        raise UserError(f"--noise must be a positive noise std (e.g. 0.5), got {noise_std}")
    logsnr = -2.0 * math.log(s)
    logsnr_clean, logsnr_noisy = float(schedule(0.0)), float(schedule(1.0))
    s_min, s_max = math.exp(-0.5 * logsnr_clean), math.exp(-0.5 * logsnr_noisy)
    if not s_min <= s <= s_max:
        raise UserError(
            f"--noise={s:g} is outside the levels the model was trained on "
            f"[{s_min:.3g}, {s_max:.3g}] (noise std in the [-1, 1] image range)"
        )
    t_start = float(schedule.t_from_logsnr(jnp.float32(logsnr)))
    t_start = min(max(t_start, _MIN_T_START), 1.0)
    # float64 here: alpha * s == sigma to rounding, whatever the level.
    alpha = math.sqrt(1.0 / (1.0 + math.exp(-logsnr)))
    sigma = math.sqrt(1.0 / (1.0 + math.exp(logsnr)))
    return NoiseLevel(s, logsnr, t_start, alpha, sigma)


def add_noise(x: jax.Array, noise_std: float, rng: jax.Array) -> jax.Array:
    """y = x + s n with n ~ N(0, I): x [B, H, W, C] float in [-1, 1] -> y (not clipped)."""
    x = jnp.asarray(x, jnp.float32)
    return x + float(noise_std) * jax.random.normal(rng, x.shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _NullCondition:
    """apply_fn with drop_cond forced on: the unconditional branch for every example.

    Equal (and hashed) by the wrapped apply_fn, so repeated calls reuse the compiled
    sampler.
    """

    apply_fn: samplers.ApplyFn

    def prepare(self, params, cond, guided: bool):
        """The decoder's once-per-call cache with the null condition on every row."""
        if hasattr(self.apply_fn, "prepare"):
            return self.apply_fn.prepare(params, cond, guided, null_only=True)
        return jax.tree.map(lambda a: jnp.concatenate([a, a]), cond) if guided else cond

    def __call__(self, params, z_t, logsnr, cond, drop_cond):
        return self.apply_fn(params, z_t, logsnr, cond, jnp.ones_like(drop_cond, bool))


def denoise(
    apply_fn: samplers.ApplyFn,
    params: Any,
    y: jax.Array,
    noise_std: float,
    rng: jax.Array,
    schedule,
    *,
    prediction: str,
    cond: Any = None,
    null_condition: bool = True,
    kind: str = "ddpm",
    num_steps: int,
    gamma: float = 0.2,
    clip_x: bool = True,
) -> jax.Array:
    """Restores y = x + s n by running the reverse process from the level of s.

    Args:
      apply_fn: `apply_fn(params, z_t [B,H,W,C], logsnr [B], cond, drop_cond [B] bool) ->
        output [B,H,W,C]` in the `prediction` parametrisation (samplers.ApplyFn). Keep
        one object across calls: it keys the compiled sampler.
      params: passed to apply_fn (None for a parameter-free denoiser).
      y: noisy images [B, H, W, C] in the [-1, 1] image range (not rescaled).
      noise_std: s, the std of the noise in y.
      rng: PRNG key of the (ancestral) sampler.
      schedule: the training schedule (`schedules.logsnr_fn(...)`).
      prediction: 'v' | 'eps' | 'x'.
      cond: conditioning pytree with leading dim B (None if apply_fn needs none); with
        null_condition its values are ignored by the model but its shapes must fit.
      null_condition: run every step with drop_cond = True (the unconditional branch).
      kind: 'ddpm' | 'ddim'.
      num_steps: reverse steps, uniform in t over [0, t_start].
      gamma: DDPM log-variance interpolation weight.
      clip_x: clip x_hat to [-1, 1] at each step.

    Returns:
      x_hat [B, H, W, C]: the restored images.
    """
    level = noise_level(noise_std, schedule)
    y = jnp.asarray(y, jnp.float32)
    if y.ndim != 4:
        raise ValueError(f"y must be images [B, H, W, C], got shape {y.shape}")
    sampler = samplers.make_sampler(
        _NullCondition(apply_fn) if null_condition else apply_fn,
        tuple(y.shape),
        schedule,
        prediction=prediction,
        kind=kind,
        num_steps=num_steps,
        gamma=gamma,
        clip_x=clip_x,
        guided=False,
        x_start_is_noisy=True,
    )
    # alpha y = alpha x + sigma n: the diffusion state at t_start (module doc).
    z_start = level.alpha * y
    return sampler(params, cond, rng, 0.0, level.t_start, z_start)


# --- the trained decoder ---------------------------------------------------------------------


def null_cond(config, batch: int) -> dict[str, np.ndarray]:
    """Zero conditioning of the encoder's shapes (the model replaces it when dropped).

    Shapes come from the config's encoder section, so the null mode needs no trained
    encoder (a pretrained one is read for its architecture).
    """
    from semantica_jax import assets

    num_tokens, width = assets.encoder_token_shape(config)
    return {
        "tokens": np.zeros((batch, num_tokens, width), np.float32),
        "cls": np.zeros((batch, width), np.float32),
    }


def panels(inputs: np.ndarray, y: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """[input | noisy | restored] as row-major uint8 images [3B, H, W, C] (ncols = 3).

    Args:
      inputs: uint8 [B, H, W, C]; y, restored: float [B, H, W, C] in [-1, 1] (y is
        clipped for display).
    """
    from semantica_jax.utils import image_io

    shown = [inputs, image_io.to_uint8(np.clip(y, -1, 1)), image_io.to_uint8(restored)]
    return np.stack(shown, axis=1).reshape(-1, *inputs.shape[1:])


def denoise_image(
    workdir: str,
    image_path: str,
    out: str,
    *,
    noise_std: float = 0.5,
    noisy: bool = False,
    condition: str = "null",
    seed: int = 0,
    steps: int = 0,
    kind: str = "",
    cache_dir: str = "",
    scale: int = 1,
    invert: str = "default",
    preprocess: str = "default",
    log=None,
) -> tuple[str, dict[str, float]]:
    """The whole tool: noise (or take) an image, restore it, write the 3-panel PNG.

    Args:
      workdir: training workdir (config.json + checkpoints/).
      image_path: PNG/JPEG/.npy; clean (default) or already noisy (`noisy=True`).
      out: output PNG path (written atomically).
      noise_std: s of y = x + s n in the [-1, 1] range (module doc).
      noisy: the image is y itself, at level noise_std.
      condition: 'null' (unconditional branch) | 'self' (encoder embedding of y).
      seed: draws the noise (clean mode) and the sampler's noise.
      steps: sampler steps over [0, t_start]; 0 = the run's sampler.num_steps.
      kind: 'ddpm' | 'ddim'; "" = the run's sampler.kind.
      cache_dir: encoder cache ("self" only); "" = the run's.
      scale: integer upscaling of the PNG.
      invert, preprocess: see `cli.load_inputs`; 'default' is no/none here (the input is
        restored and scored as given; noise would also fool the automatic inversion).
      log: `log(str)` sink; default stderr.

    Returns:
      (out, metrics): metrics holds t_start and, in clean mode, the MSE of the noisy and
      of the restored image against the clean one (in the [-1, 1] range).
    """
    from semantica_jax import decoder
    from semantica_jax.utils import image_io

    log = log or cli.stderr_log
    if condition not in CONDITIONS:
        raise UserError(f"--condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
    overrides = cli.check_sampler_flags(steps, kind, scale)
    cli.check_output_file(out)
    config = run_dir.load_config(workdir, cache_dir)
    schedule = decoder.training_logsnr_fn(config)
    level = noise_level(noise_std, schedule)
    # The MSE is against the input as given: no conversion unless asked for.
    invert = "no" if invert == "default" else invert
    preprocess = "none" if preprocess == "default" else preprocess
    inputs = cli.load_inputs(
        [image_path],
        config.data.image_size,
        config.data.channels,
        log,
        invert=invert,
        preprocess=preprocess,
    )
    params, step = run_dir.restore_ema_params(workdir)
    settings = decoder.SamplerSettings.from_config(config, **overrides)

    noise_rng, sample_rng = jax.random.split(jax.random.PRNGKey(int(seed)))
    x = jnp.asarray(image_io.to_model_range(inputs))
    y = x if noisy else add_noise(x, level.noise_std, noise_rng)
    if condition == "self":
        from semantica_jax import assets
        from semantica_jax.encoder.encode import encode

        tokens, cls = encode(
            assets.load_or_train_encoder(config, log), np.clip(np.asarray(y), -1.0, 1.0)
        )
        cond = {"tokens": tokens, "cls": cls}
    else:
        cond = null_cond(config, len(inputs))
    log(
        f"denoising from noise std {level.noise_std:g} (logsnr {level.logsnr:.2f}, "
        f"t_start {level.t_start:.3f}) with step {step} EMA params, {settings.num_steps} "
        f"{settings.kind} steps, {condition} condition"
    )
    start = time.perf_counter()
    restored = denoise(
        decoder.DecoderApply(decoder.build_model(config)),
        params,
        y,
        level.noise_std,
        sample_rng,
        schedule,
        prediction=settings.prediction,
        cond=cond,
        null_condition=condition == "null",
        kind=settings.kind,
        num_steps=settings.num_steps,
        gamma=settings.gamma,
        clip_x=settings.clip_x,
    )
    restored = np.asarray(jax.device_get(restored))
    metrics = {"t_start": level.t_start, "seconds": time.perf_counter() - start}
    if not noisy:
        metrics["mse_noisy"] = float(np.mean((np.asarray(y) - np.asarray(x)) ** 2))
        metrics["mse_restored"] = float(np.mean((restored - np.asarray(x)) ** 2))
    grid = image_io.make_grid(panels(inputs, np.asarray(y), restored), ncols=3, scale=scale)
    return image_io.save_png(grid, out), metrics


# --- command line ----------------------------------------------------------------------------


def _define_flags():
    from absl import flags

    return dict(
        cli.define_workdir_flags("Integer upscaling of the PNG."),
        **cli.define_input_flags(),
        image=flags.DEFINE_string("image", None, "Input image (PNG/JPEG/.npy)."),
        noise=flags.DEFINE_float(
            "noise", 0.5, "Noise std s of y = x + s*n in the [-1, 1] image range."
        ),
        noisy=flags.DEFINE_bool("noisy", False, "The image is already noisy (at level --noise)."),
        condition=flags.DEFINE_enum(
            "condition", "null", list(CONDITIONS), "null: unconditional; self: embed the input."
        ),
        seed=flags.DEFINE_integer("seed", 0, "Seed of the added noise and of the sampler."),
        out=flags.DEFINE_string("out", "denoised.png", "Output PNG [input | noisy | restored]."),
    )


def run(argv: list[str] | None = None) -> None:
    """Entry point of `python -m semantica_jax.tools.denoise`."""
    f = cli.start(_define_flags, ["workdir", "image"], argv, doc=__doc__)
    start = time.perf_counter()
    with errors.reported():
        out, metrics = denoise_image(
            f["workdir"],
            f["image"],
            f["out"],
            noise_std=f["noise"],
            noisy=f["noisy"],
            condition=f["condition"],
            seed=f["seed"],
            steps=f["steps"],
            kind=f["kind"],
            cache_dir=f["cache_dir"],
            scale=f["scale"],
            invert=f["invert"],
            preprocess=f["preprocess"],
        )
    if "mse_restored" in metrics:
        print(
            f"MSE vs clean ([-1, 1] range): noisy {metrics['mse_noisy']:.4f}, "
            f"restored {metrics['mse_restored']:.4f}"
        )
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    run()
