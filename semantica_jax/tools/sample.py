"""Variations of your own images from a trained workdir.

  python -m semantica_jax.tools.sample --workdir=DIR --image=a.png --image=b.jpg --image=c.npy \
      --num=16 --guidance=0.5 --seed=0 --out=grid.png

Reads DIR/config.json (no --config needed), restores the EMA params of the latest
checkpoint, embeds each input with the frozen encoder of that config and samples `--num`
variations of it. The grid has one row per input: [input as the model sees it | variations].
Inputs may be PNG, JPEG (any size or colour mode) or .npy; a conversion to the model's
resolution and channels is reported on stderr. The same seed gives a byte-identical PNG;
the variations of an input do not depend on the other inputs (input i uses seed stream i).

Bad input (missing/corrupt file, unusable .npy, workdir without config or checkpoint) is one
`error: ...` line on stderr and exit code 2, and no output file is written.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from semantica_jax import errors
from semantica_jax import workdir as run_dir
from semantica_jax.errors import UserError
from semantica_jax.tools import cli

# Far beyond any useful w (the paper sweeps 0-4); larger values only overflow.
MAX_GUIDANCE = 100.0

# --- sampling --------------------------------------------------------------------------------


def sample_variations(
    variation_fn,
    params: Any,
    cond_tokens: np.ndarray,
    cond_cls: np.ndarray,
    num: int,
    guidance: float,
    seed: int,
    log=None,
) -> np.ndarray:
    """`num` variations of each conditioning embedding, one jitted call per input.

    Args:
      variation_fn: from `decoder.make_variation_fn` (compiled once for batch `num`).
      params: decoder (EMA) params.
      cond_tokens: float [N, T, D]; cond_cls: float [N, D] (the encoder's outputs).
      num: variations per input.
      guidance: classifier-free guidance w.
      seed: input i samples with `fold_in(PRNGKey(seed), i)`, so its variations do not
        depend on the other inputs.
      log: `log(str)` progress sink (rate and ETA); None is silent.

    Returns:
      uint8 [N, num, H, W, C].
    """
    import jax
    import jax.numpy as jnp

    from semantica_jax.utils import image_io

    if num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    key = jax.random.PRNGKey(int(seed))
    rows, start = [], time.perf_counter()
    for i in range(len(cond_cls)):
        tokens = np.repeat(np.asarray(cond_tokens[i : i + 1], np.float32), num, axis=0)
        cls = np.repeat(np.asarray(cond_cls[i : i + 1], np.float32), num, axis=0)
        x = variation_fn(params, tokens, cls, jax.random.fold_in(key, i), jnp.float32(guidance))
        rows.append(image_io.to_uint8(jax.device_get(x)))
        if log:
            done, elapsed = i + 1, time.perf_counter() - start
            eta = elapsed / done * (len(cond_cls) - done)
            log(
                f"input {done}/{len(cond_cls)}: {done * num / elapsed:.1f} images/s, ETA {eta:.0f}s"
            )
    return np.stack(rows)


def variation_rows(inputs: np.ndarray, variations: np.ndarray) -> np.ndarray:
    """Row-major images for the grid: [input_i, variation_i_1..num] per row.

    Args:
      inputs: uint8 [N, H, W, C]; variations: uint8 [N, num, H, W, C].

    Returns:
      uint8 [N * (num + 1), H, W, C] (tile with ncols = num + 1).
    """
    if variations.shape[0] != inputs.shape[0] or variations.shape[2:] != inputs.shape[1:]:
        raise ValueError(f"variations {variations.shape} do not match inputs {inputs.shape}")
    rows = np.concatenate([inputs[:, None], variations], axis=1)
    return rows.reshape(-1, *inputs.shape[1:])


def make_variations(
    workdir: str,
    image_paths: list[str],
    out: str,
    *,
    num: int = 16,
    guidance: float = 0.5,
    seed: int = 0,
    steps: int = 0,
    kind: str = "",
    cache_dir: str = "",
    scale: int = 1,
    log=None,
) -> str:
    """The whole tool: workdir + image files -> grid PNG at `out` (written atomically).

    Args:
      workdir: training workdir (config.json + checkpoints/).
      image_paths: input images.
      out: PNG path of the grid.
      num: variations per input.
      guidance: classifier-free guidance w.
      seed: sampling seed (same seed -> byte-identical PNG).
      steps: sampler steps; 0 = the run's `sampler.num_steps`.
      kind: 'ddpm' | 'ddim'; "" = the run's `sampler.kind`.
      cache_dir: where the frozen encoder is cached; "" = the run's `cache_dir`.
      scale: integer upscaling of the grid (28 px digits are small).
      log: `log(str)` for notes and progress; default stderr.

    Returns:
      `out`.
    """
    from semantica_jax import assets, decoder
    from semantica_jax.encoder.encode import encode
    from semantica_jax.utils import image_io

    log = log or cli.stderr_log
    if num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    if not math.isfinite(guidance) or abs(guidance) > MAX_GUIDANCE:
        raise UserError(f"--guidance must be finite and within ±{MAX_GUIDANCE:g}, got {guidance}")
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {seed}")
    overrides = cli.check_sampler_flags(steps, kind, scale)
    cli.check_output_file(out)
    config = run_dir.load_config(workdir, cache_dir)
    inputs = cli.load_inputs(image_paths, config.data.image_size, config.data.channels, log)
    params, step = run_dir.restore_ema_params(workdir)
    cond_tokens, cond_cls = encode(assets.load_or_train_encoder(config, log), inputs)
    variation_fn = decoder.make_variation_fn(config, **overrides)
    settings = decoder.SamplerSettings.from_config(config, **overrides)
    log(
        f"sampling {num} variations of {len(inputs)} input(s) with step {step} EMA params, "
        f"{settings.num_steps} {settings.kind} steps, guidance {guidance}"
    )
    variations = sample_variations(
        variation_fn, params, cond_tokens, cond_cls, num, guidance, seed, log
    )
    grid = image_io.make_grid(variation_rows(inputs, variations), ncols=num + 1, scale=scale)
    return image_io.save_png(grid, out)


# --- command line ----------------------------------------------------------------------------


def _define_flags():
    from absl import flags

    return dict(
        cli.define_workdir_flags("Integer upscaling of the grid."),
        image=flags.DEFINE_multi_string("image", None, "Input image (PNG/JPEG/.npy); repeatable."),
        num=flags.DEFINE_integer("num", 16, "Variations per input image."),
        guidance=flags.DEFINE_float("guidance", 0.5, "Classifier-free guidance w (0 = none)."),
        seed=flags.DEFINE_integer("seed", 0, "Sampling seed; same seed -> identical PNG."),
        out=flags.DEFINE_string("out", "grid.png", "Output grid PNG."),
    )


def run(argv: list[str] | None = None) -> None:
    """Entry point of `python -m semantica_jax.tools.sample`."""
    f = cli.start(_define_flags, ["workdir", "image"], argv, doc=__doc__)
    start = time.perf_counter()
    with errors.reported():
        out = make_variations(
            f["workdir"],
            list(f["image"]),
            f["out"],
            num=f["num"],
            guidance=f["guidance"],
            seed=f["seed"],
            steps=f["steps"],
            kind=f["kind"],
            cache_dir=f["cache_dir"],
            scale=f["scale"],
        )
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    run()
