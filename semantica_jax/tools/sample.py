"""Variations of your own images from a trained workdir.

  python -m semantica_jax.tools.sample --workdir=DIR --image=a.png --image=b.jpg --image=c.npy \
      --num=16 --guidance=0.5 --seed=0 --out=grid.png

Reads DIR/config.json (no --config needed), restores the EMA params of the latest
checkpoint, embeds each input with the frozen encoder of that config and samples `--num`
variations of it. The grid has one row per input: [input as the model sees it | variations].

Conditioning controls (conditioning.py; none recompiles the sampler when a value changes):
  --combine                     all --image inputs as one condition (tokens concatenated,
                                CLS averaged); the row shows their pixel mean
  --mix=a.png,b.png --alpha=A   blend two conditions (attention weights 1 - A and A, CLS
                                interpolated); --alpha repeats: one row each (default
                                0, 1/4, 1/2, 3/4, 1)
  --negative=c.png              guidance steers away from c instead of from the null
  --negative_scale=s            condition ((1 + s) cond - s neg; default s = --guidance)
  --strength=t0                 start from the input noised to t0 < 1 (near-copy) instead
                                of pure noise (1); repeats for a strip, as --guidance does
  --invert=auto|yes|no --preprocess=mnist|none
                                dark-on-white digits are inverted (auto: when the border is
                                brighter than the centre, with a note) and centred as MNIST
                                does (20x20 box, centre of mass at the centre); the default
                                for MNIST-trained runs is auto + mnist.
Inputs may be PNG, JPEG (any size or colour mode) or .npy; a conversion to the model's
resolution and channels is reported on stderr. The same seed gives a byte-identical PNG;
the variations of an input do not depend on the other inputs (input i uses seed stream i).

Bad input (missing/corrupt file, unusable .npy, workdir without config or checkpoint) is one
`error: ...` line on stderr and exit code 2, and no output file is written.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import numpy as np
import tqdm

from semantica_jax import errors
from semantica_jax import workdir as run_dir
from semantica_jax.errors import UserError
from semantica_jax.tools import cli

# Far beyond any useful w (the paper sweeps 0-4); larger values only overflow.
MAX_GUIDANCE = 100.0

# --- sampling --------------------------------------------------------------------------------


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


@dataclasses.dataclass(frozen=True)
class Row:
    """One grid row: `num` variations of one condition at one guidance and strength.

    shown: uint8 [H, W, C], the row's first image (the input; for --combine the pixel mean of
      the references, for --mix their pixel blend at alpha), also the SDEdit start.
    cond: the condition for one sample (leaves [1, ...], see conditioning.py).
    stream: seed stream (rows of one condition share it, so a strip over w, alpha or t0
      shows the same noise under different settings).
    """

    shown: np.ndarray
    cond: dict
    stream: int
    guidance: float
    strength: float
    label: str


def _check_values(name: str, values, lo: float, hi: float, lo_open: bool = False) -> list:
    values = [float(v) for v in values]
    if not values:
        raise UserError(f"--{name} needs at least one value")
    for v in values:
        if not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo):
            bound = "(" if lo_open else "["
            raise UserError(f"--{name} must be finite and in {bound}{lo:g}, {hi:g}], got {v}")
    return values


def build_rows(
    inputs: np.ndarray,
    tokens: np.ndarray,
    cls: np.ndarray,
    *,
    guidance: list[float],
    strength: list[float],
    combine: bool = False,
    alphas: list[float] | None = None,
    negative: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Row]:
    """The grid's rows: conditions (one per input, one combined, or one blend per alpha)
    times each guidance w times each strength t0.

    Args:
      inputs: uint8 [N, H, W, C]; tokens [N, T, D], cls [N, D]: their encodings.
      guidance, strength: values swept (one row each); strength 1 = from pure noise.
      combine: all inputs as one condition (conditioning.combine).
      alphas: blend inputs[0] and inputs[1] at each alpha (conditioning.blend).
      negative: (tokens [1, T, D], cls [1, D]) replacing the null condition in guidance.
    """
    import jax.numpy as jnp

    from semantica_jax import conditioning

    conds: list[tuple[np.ndarray, dict, int, str]] = []
    if alphas is not None:
        for a in alphas:
            shown = np.rint((1 - a) * inputs[0].astype(float) + a * inputs[1].astype(float))
            cond = conditioning.blend(jnp.asarray(tokens[:2]), jnp.asarray(cls[:2]), a)
            conds.append((shown.astype(np.uint8), cond, 0, f"alpha={a:g}"))
    elif combine:
        shown = np.rint(inputs.astype(float).mean(axis=0)).astype(np.uint8)
        cond = conditioning.combine(jnp.asarray(tokens), jnp.asarray(cls))
        conds.append((shown, cond, 0, f"{len(inputs)} combined"))
    else:
        for i in range(len(inputs)):
            cond = {"tokens": jnp.asarray(tokens[i : i + 1]), "cls": jnp.asarray(cls[i : i + 1])}
            conds.append((inputs[i], cond, i, f"input {i}"))
    if negative is not None:
        conds = [
            (shown, conditioning.with_negative(c, *map(jnp.asarray, negative)), i, label)
            for shown, c, i, label in conds
        ]
    return [
        Row(shown, cond, stream, w, t0, f"{label} w={w:g} t0={t0:g}")
        for shown, cond, stream, label in conds
        for w in guidance
        for t0 in strength
    ]


def sample_rows(variation_fn, params: Any, rows: list[Row], num: int, seed: int, log=None):
    """`num` variations per row, one jitted call each: uint8 [len(rows), num, H, W, C].

    Row r samples with `fold_in(PRNGKey(seed), row.stream)`; guidance, strength and the
    condition's values are traced, so a sweep compiles once per condition structure.
    """
    import jax
    import jax.numpy as jnp

    from semantica_jax import conditioning
    from semantica_jax.utils import image_io

    if num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    key = jax.random.PRNGKey(int(seed))
    out = []
    bar = tqdm.tqdm(
        total=len(rows) * num, desc="sampling", unit="image", disable=log is None, leave=False
    )
    for row in rows:
        cond = conditioning.repeat(row.cond, num)
        extra = {k: cond[k] for k in ("token_logw", "negative") if k in cond}
        if row.strength < 1.0:
            start_image = image_io.to_model_range(np.repeat(row.shown[None], num, axis=0))
            extra.update(t_start=jnp.float32(row.strength), x_start=jnp.asarray(start_image))
        x = variation_fn(
            params,
            cond["tokens"],
            cond["cls"],
            jax.random.fold_in(key, row.stream),
            jnp.float32(row.guidance),
            **extra,
        )
        out.append(image_io.to_uint8(jax.device_get(x)))
        bar.update(num)
    bar.close()
    return np.stack(out)


def make_variations(
    workdir: str,
    image_paths: list[str],
    out: str,
    *,
    num: int = 16,
    guidance: float | list[float] = 0.5,
    seed: int = 0,
    steps: int = 0,
    kind: str = "",
    cache_dir: str = "",
    scale: int = 1,
    combine: bool = False,
    mix: list[str] | None = None,
    alpha: list[float] | None = None,
    negative: str = "",
    negative_scale: float | None = None,
    strength: list[float] | None = None,
    invert: str = "default",
    preprocess: str = "default",
    log=None,
) -> str:
    """The whole tool: workdir + image files -> grid PNG at `out` (written atomically).

    Args:
      workdir: training workdir (config.json + checkpoints/).
      image_paths: input images (unused with `mix`).
      out: PNG path of the grid.
      num: variations per row.
      guidance: classifier-free guidance w, or several (one row each).
      seed: sampling seed (same seed -> byte-identical PNG).
      steps: sampler steps; 0 = the run's `sampler.num_steps`.
      kind: 'ddpm' | 'ddim'; "" = the run's `sampler.kind`.
      cache_dir: where the frozen encoder is cached; "" = the run's `cache_dir`.
      scale: integer upscaling of the grid (28 px digits are small).
      combine: the inputs as ONE condition (tokens concatenated, CLS averaged).
      mix: two image paths a, b to blend; `alpha` the weights of b (one row each).
      negative: an image whose condition replaces the null in guidance (steer away).
      negative_scale: the guidance w with `negative` (default: `guidance`).
      strength: SDEdit start t0 in (0, 1] (1 = pure noise), one row each.
      invert, preprocess: see `cli.load_inputs` ('default' = per the run's data).
      log: `log(str)` for notes and progress; default stderr.

    Returns:
      `out`.
    """
    from semantica_jax import assets, decoder
    from semantica_jax.encoder.encode import encode
    from semantica_jax.utils import image_io

    log = log or cli.stderr_log
    guidance = [guidance] if isinstance(guidance, (int, float)) else list(guidance)
    if num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    guidance = _check_values("guidance", guidance, -MAX_GUIDANCE, MAX_GUIDANCE)
    if negative_scale is not None:
        guidance = _check_values("negative_scale", [negative_scale], -MAX_GUIDANCE, MAX_GUIDANCE)
    strength = _check_values("strength", strength or [1.0], 0.0, 1.0, lo_open=True)
    alphas = None
    if mix:
        if len(mix) != 2:
            raise UserError(f"--mix takes two images a.png,b.png, got {len(mix)}")
        if combine:
            raise UserError("--mix and --combine are exclusive: pick one")
        alphas = _check_values("alpha", alpha or [0.0, 0.25, 0.5, 0.75, 1.0], 0.0, 1.0)
        if image_paths:
            log(f"note: --mix blends {mix[0]} and {mix[1]}; the --image inputs are not used")
        image_paths = list(mix)
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {seed}")
    overrides = cli.check_sampler_flags(steps, kind, scale)
    cli.check_output_file(out)
    config = run_dir.load_config(workdir, cache_dir)
    invert, preprocess = cli.input_defaults(config, invert, preprocess)
    size, channels = config.data.image_size, config.data.channels
    read = functools.partial(
        cli.load_inputs,
        image_size=size,
        channels=channels,
        log=log,
        invert=invert,
        preprocess=preprocess,
    )
    params, step = run_dir.restore_ema_params(workdir)
    inputs = read(image_paths)
    negative_image = read([negative]) if negative else None
    bundle = assets.load_or_train_encoder(config, log)
    cond_tokens, cond_cls = encode(bundle, inputs)
    rows = build_rows(
        inputs,
        cond_tokens,
        cond_cls,
        guidance=guidance,
        strength=strength,
        combine=combine,
        alphas=alphas,
        negative=None if negative_image is None else encode(bundle, negative_image),
    )
    variation_fn = decoder.make_variation_fn(config, **overrides)
    settings = decoder.SamplerSettings.from_config(config, **overrides)
    log(
        f"sampling {num} variations for {len(rows)} row(s) with step {step} EMA params, "
        f"{settings.num_steps} {settings.kind} steps; rows: " + ", ".join(row.label for row in rows)
    )
    variations = sample_rows(variation_fn, params, rows, num, seed, log)
    shown = np.stack([row.shown for row in rows])
    grid = image_io.make_grid(variation_rows(shown, variations), ncols=num + 1, scale=scale)
    return image_io.save_png(grid, out)


# --- command line ----------------------------------------------------------------------------


def _define_flags():
    from absl import flags

    return dict(
        cli.define_workdir_flags("Integer upscaling of the grid."),
        **cli.define_input_flags(),
        image=flags.DEFINE_multi_string("image", None, "Input image (PNG/JPEG/.npy); repeatable."),
        num=flags.DEFINE_integer("num", 16, "Variations per row."),
        guidance=flags.DEFINE_multi_float(
            "guidance", [0.5], "Classifier-free guidance w (0 = none); repeat for a strip."
        ),
        seed=flags.DEFINE_integer("seed", 0, "Sampling seed; same seed -> identical PNG."),
        out=flags.DEFINE_string("out", "grid.png", "Output grid PNG."),
        combine=flags.DEFINE_boolean(
            "combine", False, "All --image inputs as ONE condition (tokens concatenated, CLS mean)."
        ),
        mix=flags.DEFINE_list("mix", None, "a.png,b.png: blend the two conditions by --alpha."),
        alpha=flags.DEFINE_multi_float(
            "alpha", [0.0, 0.25, 0.5, 0.75, 1.0], "Blend weight of b for --mix; one row each."
        ),
        negative=flags.DEFINE_string(
            "negative", "", "Image to steer away from: replaces the null condition in guidance."
        ),
        negative_scale=flags.DEFINE_float(
            "negative_scale", None, "Guidance w with --negative (default: --guidance)."
        ),
        strength=flags.DEFINE_multi_float(
            "strength",
            [1.0],
            "Start t0 in (0, 1]: < 1 starts from the input noised to t0 (near-copy at small "
            "t0, free variation at 1); repeat for a strip.",
        ),
    )


def run(argv: list[str] | None = None) -> None:
    """Entry point of `python -m semantica_jax.tools.sample`."""
    f = cli.start(_define_flags, ["workdir"], argv, doc=__doc__)
    start = time.perf_counter()
    with errors.reported():
        out = make_variations(
            f["workdir"],
            list(f["image"] or []),
            f["out"],
            num=f["num"],
            guidance=f["guidance"],
            seed=f["seed"],
            steps=f["steps"],
            kind=f["kind"],
            cache_dir=f["cache_dir"],
            scale=f["scale"],
            combine=f["combine"],
            mix=f["mix"],
            alpha=f["alpha"],
            negative=f["negative"],
            negative_scale=f["negative_scale"],
            strength=f["strength"],
            invert=f["invert"],
            preprocess=f["preprocess"],
        )
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    run()
