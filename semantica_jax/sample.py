"""Variations of your own images from a trained workdir.

  python -m semantica_jax.sample --workdir=DIR --image=a.png --image=b.jpg --image=c.npy \
      --num=16 --guidance=0.5 --seed=0 --out=grid.png

Reads DIR/config.json (no --config needed), restores the EMA params of the latest
checkpoint, embeds each input with the frozen encoder of that config and samples `--num`
variations of it. The grid has one row per input: [input as the model sees it | variations].
Inputs may be PNG, JPEG (any size or colour mode) or .npy; a conversion to the model's
resolution and channels is reported on stderr. The same seed gives a byte-identical PNG;
the variations of an input do not depend on the other inputs (input i uses seed stream i).

Bad input (missing/corrupt file, unusable .npy, workdir without config or checkpoint) is one
`error: ...` line on stderr and exit code 2, and no output file is written.

The workdir helpers here (`load_run_config`, `restore_decoder`, `load_inputs`) are shared
with `semantica_jax.denoise`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import ml_collections
import numpy as np

# Sections the tools read; a config.json without them did not come from train.py.
_REQUIRED_SECTIONS = ("data", "encoder", "model", "diffusion", "sampler")


class ToolError(ValueError):
    """A problem with the user's input that the CLI reports as one `error:` line."""


# --- workdir ---------------------------------------------------------------------------------


def load_run_config(workdir: str, cache_dir: str = "") -> ml_collections.ConfigDict:
    """The effective config of a training run, rebuilt from WORKDIR/config.json.

    JSON turns tuples into lists; the consumers (UViTConfig.from_config, the encoder key)
    accept both, so the rebuilt config drives the same model and the same cached encoder.

    Args:
      workdir: a directory made by `python -m semantica_jax.main --workdir=DIR`.
      cache_dir: overrides `config.cache_dir` (where the frozen encoder is cached); "" keeps
        the one the run used.

    Raises:
      ToolError: no workdir, no config.json, or a config.json that is not a run config.
    """
    if not os.path.isdir(workdir):
        raise ToolError(f"workdir {workdir} does not exist; pass the --workdir of a training run")
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ToolError(
            f"{path} not found; {workdir} is not a training workdir "
            "(make one with python -m semantica_jax.main --config=... --workdir=DIR)"
        )
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ToolError(f"{path} is not readable JSON ({err})") from err
    missing = [s for s in _REQUIRED_SECTIONS if not isinstance(values.get(s), dict)]
    if missing:
        raise ToolError(f"{path} lacks config section(s) {', '.join(missing)}; not a run config")
    config = ml_collections.ConfigDict(values)
    if cache_dir:
        config.cache_dir = os.path.abspath(cache_dir)
    return config


def restore_decoder(workdir: str, step: int | None = None) -> tuple[Any, int]:
    """EMA params of the latest (or given) checkpoint of WORKDIR: (params, step).

    Raises:
      ToolError: the workdir holds no finished checkpoint (or not that step).
    """
    from semantica_jax import checkpointing

    checkpoints = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(checkpoints):
        raise ToolError(f"no checkpoints in {workdir}; train first (semantica_jax.main)")
    if step is not None and not os.path.isdir(os.path.join(checkpoints, str(step))):
        raise ToolError(f"no checkpoint for step {step} in {checkpoints}")
    try:
        return checkpointing.restore_params(workdir, step=step, item="ema_params")
    except FileNotFoundError as err:
        raise ToolError(str(err)) from err


def load_inputs(paths: list[str], image_size: int, channels: int, log=None) -> np.ndarray:
    """Reads user images converted to the model's size and colour.

    Args:
      paths: PNG/JPEG/.npy files (see `image_io.load_image`).
      image_size: S; channels: C of the model.
      log: `log(str)` for conversion notes; default prints `note: ...` on stderr.

    Returns:
      uint8 [N, S, S, C].

    Raises:
      ToolError: a file is missing or unusable (the message names it).
    """
    from semantica_jax import image_io

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if not paths:
        raise ToolError("no input image; pass --image=PATH (repeat it for several)")
    images = []
    for path in paths:
        try:
            image, note = image_io.load_image(path, int(image_size), int(channels))
        except image_io.ImageReadError as err:
            raise ToolError(str(err)) from err
        if note:
            log(f"note: {path}: converted {note}")
        images.append(image)
    return np.stack(images)


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
      variation_fn: from `generate.make_variation_fn` (compiled once for batch `num`).
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

    from semantica_jax import generate

    if num < 1:
        raise ToolError(f"--num must be >= 1, got {num}")
    key = jax.random.PRNGKey(int(seed))
    rows, start = [], time.perf_counter()
    for i in range(len(cond_cls)):
        tokens = np.repeat(np.asarray(cond_tokens[i : i + 1], np.float32), num, axis=0)
        cls = np.repeat(np.asarray(cond_cls[i : i + 1], np.float32), num, axis=0)
        x = variation_fn(params, tokens, cls, jax.random.fold_in(key, i), jnp.float32(guidance))
        rows.append(generate.to_uint8(jax.device_get(x)))
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
    from semantica_jax import datasets, encoder, generate, image_io

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if num < 1:
        raise ToolError(f"--num must be >= 1, got {num}")
    if steps < 0:
        raise ToolError(f"--steps must be >= 0 (0 = the run's sampler.num_steps), got {steps}")
    if scale < 1:
        raise ToolError(f"--scale must be >= 1, got {scale}")
    if kind and kind not in ("ddpm", "ddim"):
        raise ToolError(f"--kind must be ddpm or ddim, got {kind!r}")
    config = load_run_config(workdir, cache_dir)
    inputs = load_inputs(image_paths, config.data.image_size, config.data.channels, log)
    params, step = restore_decoder(workdir)
    bundle = datasets.load_encoder(config)
    cond_tokens, cond_cls = encoder.encode(bundle, inputs)
    overrides = {}
    if steps:
        overrides["num_steps"] = int(steps)
    if kind:
        overrides["kind"] = kind
    variation_fn = generate.make_variation_fn(config, **overrides)
    settings = generate.SamplerSettings.from_config(config, **overrides)
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


def define_workdir_flags(scale_help: str) -> dict[str, Any]:
    """The flags of every tool on a training workdir: --workdir, --steps, --kind,
    --cache_dir, --scale. Defined on demand, not at import: `sample` and `denoise` each
    define them once for their own command line."""
    from absl import flags

    from semantica_jax.diffusion import samplers

    return dict(
        workdir=flags.DEFINE_string(
            "workdir", None, "Training workdir (config.json, checkpoints/)."
        ),
        steps=flags.DEFINE_integer("steps", 0, "Sampler steps; 0 = the run's sampler.num_steps."),
        kind=flags.DEFINE_enum("kind", "", ["", *samplers.KINDS], "Sampler; '' = the run's."),
        cache_dir=flags.DEFINE_string("cache_dir", "", "Encoder cache dir; '' = the run's."),
        scale=flags.DEFINE_integer("scale", 1, scale_help),
    )


def _define_flags():
    from absl import flags

    return dict(
        define_workdir_flags("Integer upscaling of the grid."),
        image=flags.DEFINE_multi_string("image", None, "Input image (PNG/JPEG/.npy); repeatable."),
        num=flags.DEFINE_integer("num", 16, "Variations per input image."),
        guidance=flags.DEFINE_float("guidance", 0.5, "Classifier-free guidance w (0 = none)."),
        seed=flags.DEFINE_integer("seed", 0, "Sampling seed; same seed -> identical PNG."),
        out=flags.DEFINE_string("out", "grid.png", "Output grid PNG."),
    )


def run(argv: list[str] | None = None) -> None:
    """Entry point of `python -m semantica_jax.sample`."""
    from semantica_jax import cli

    f = cli.start_tool(_define_flags, ["workdir", "image"], argv)
    start = time.perf_counter()
    with cli.one_line_errors(ToolError, FileNotFoundError):
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
