"""Similarity of images: the frozen encoder's CLS cosine, DiffSim on a trained decoder's
attention, pixel distance or SSIM; and retrieval from a gallery folder.

Run:
  python -m semantica_jax.tools.similarity a.png b.png                 # one number
  python -m semantica_jax.tools.similarity a.png b.jpg c.npy           # a matrix
  python -m semantica_jax.tools.similarity a.png b.png --config=configs/mnist.py:tiny
  python -m semantica_jax.tools.similarity a.png b.png --workdir=workdirs/mnist_default \
      --method=diffsim --logsnr=1 --block=transformer_0/block_3
  python -m semantica_jax.tools.similarity q1.png q2.png --workdir=DIR --method=diffsim \
      --gallery=DIR_OF_IMAGES --top=5 --out=retrieval.png

Methods (`--method`; higher is always more similar):
  encoder    cosine of the frozen encoder's CLS embeddings (the default)
  diffsim    DiffSim-S: aligned attention score of one self-attention block of the decoder
             of --workdir, on the images noised to logSNR --logsnr (METHODS §6)
  diffsim_c  the DiffSim-C analogue: the same score on a block's cross-attention
  pixel      minus the RMS pixel distance in [-1, 1] (0 = identical, -2 at most)
  ssim       SSIM (dm-pix; 1 = identical)

With --workdir its config.json defines the image size and channels and the encoder (any
method); without it --config does (pixel, ssim, encoder only). --block names a block as
`diffsim.block_names` lists it ('' = the method's default, the network's last usable block);
--noise=shared gives every image the same noise, so identical images score exactly 1.

With --gallery the positional images are queries: each prints its --top nearest gallery
files (every .png/.jpg/.jpeg/.npy in the folder), and --out receives one PNG row per query
(query | nearest first), written atomically. DiffSim computes each image's Q/K/V once.

Inputs of any size/colour are converted to the model's image size and channels (a note on
stderr says so); for MNIST-trained configs dark-on-white digits are inverted and every digit
is centred as MNIST does (--invert, --preprocess; see tools/sample.py). Bad input (an
unreadable image, a missing workdir, an unknown block, a
non-finite --logsnr, --top < 1, an empty gallery, a diffsim method without --workdir) is one
`error:` line and exit status 2, and nothing is written. The encoder is the cached one of
the config (trained on first use if absent; see assets.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import numpy as np

from semantica_jax import errors
from semantica_jax.errors import UserError
from semantica_jax.metrics import similarity as similarity_lib
from semantica_jax.tools import cli

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(_REPO_ROOT, "configs", "mnist.py")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".npy")


def format_matrix(matrix: np.ndarray, names: list[str]) -> str:
    """Text table of an [N, N] similarity matrix, rows/columns numbered, names listed below."""
    num = len(names)
    head = "      " + " ".join(f"{f'[{j}]':>7}" for j in range(num))
    rows = [
        f"{f'[{i}]':<5} " + " ".join(f"{matrix[i, j]:7.4f}" for j in range(num)) for i in range(num)
    ]
    legend = [f"[{i}] {name}" for i, name in enumerate(names)]
    return "\n".join([head, *rows, "", *legend])


def similarity_of_files(config, paths: list[str]) -> np.ndarray:
    """The encoder's CLS-cosine matrix [N, N] of image files (notes on stderr).

    Raises:
      UserError: fewer than two images, or one that cannot be read.
    """
    return compare_files(config, paths, Options(), cli.stderr_log)


# --- the request: flags checked, models loaded ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line asks for (the flags, checked by `check_options`)."""

    method: str = "encoder"
    workdir: str = ""
    cache_dir: str = ""
    logsnr: float = 0.0
    block: str = ""
    noise: str = "shared"
    seed: int = 0
    gallery: str = ""
    top: int = 5
    out: str = "retrieval.png"
    scale: int = 1
    invert: str = "default"
    preprocess: str = "default"


def check_options(options: Options) -> None:
    """Raises UserError for flags that are wrong whatever the images are."""
    if options.method not in similarity_lib.METHODS:
        raise UserError(
            f"unknown --method={options.method}; choose one of {', '.join(similarity_lib.METHODS)}"
        )
    if not math.isfinite(options.logsnr):
        raise UserError(
            f"--logsnr must be finite (±inf is a clean or a pure-noise image), got {options.logsnr}"
        )
    if options.top < 1:
        raise UserError(f"--top must be >= 1, got {options.top}")
    if options.scale < 1:
        raise UserError(f"--scale must be >= 1, got {options.scale}")
    if options.method in similarity_lib.DIFFSIM_METHODS and not options.workdir:
        raise UserError(
            f"--method={options.method} reads a trained decoder: pass --workdir=DIR of a "
            "training run (python -m semantica_jax.main --workdir=DIR)"
        )
    if options.gallery and not options.out.lower().endswith(".png"):
        raise UserError(f"--out must be a .png path, got {options.out!r}")
    if options.gallery:
        cli.check_output_file(options.out)


def diffsim_settings(options: Options):
    """The `diffsim.Settings` of the flags (the method is set by `similarity_matrix_of`)."""
    from semantica_jax.metrics import diffsim

    return diffsim.Settings(
        logsnr=options.logsnr,
        block=options.block or None,
        noise=options.noise,
        seed=options.seed,
        method=similarity_lib.DIFFSIM_METHODS.get(options.method, "s"),
    )


def load_models(config, options: Options) -> dict[str, Any]:
    """The model a method needs: {'encoder': bundle} or {'decoder': DiffSimModel}, else {}.

    The decoder's block names are checked against its architecture before its checkpoint
    is read, so a wrong --block fails fast.
    """
    from semantica_jax import assets

    if options.method == "encoder":
        return {"encoder": assets.load_or_train_encoder(config)}
    if options.method not in similarity_lib.DIFFSIM_METHODS:
        return {}
    from semantica_jax import decoder
    from semantica_jax.metrics import diffsim

    diffsim.check_settings(decoder.build_model(config), diffsim_settings(options))
    return {"decoder": diffsim.from_workdir(options.workdir, cache_dir=options.cache_dir)}


def gallery_files(directory: str) -> list[str]:
    """The image files of a gallery folder, sorted by name.

    Raises:
      UserError: not a folder, or no .png/.jpg/.jpeg/.npy file in it.
    """
    if not os.path.isdir(directory):
        raise UserError(f"--gallery={directory} is not a folder")
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
    paths = [os.path.join(directory, n) for n in names]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise UserError(f"--gallery={directory} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


# --- the work --------------------------------------------------------------------------------


def compare_files(config, paths: list[str], options: Options, log: cli.Log) -> np.ndarray:
    """The [N, N] similarity matrix of image files under `options.method`."""
    if len(paths) < 2:
        raise UserError("give at least two images: similarity A B [C ...]")
    images = _read_inputs(config, options, log)(paths)
    models = load_models(config, options)
    return similarity_lib.similarity_matrix_of(
        options.method, images, settings=_settings_for(options), log=log, **models
    )


def _read_inputs(config, options: Options, log: cli.Log):
    """paths -> uint8 [N, S, S, C] at the config's size, with --invert/--preprocess."""
    invert, preprocess = cli.input_defaults(config, options.invert, options.preprocess)
    return functools.partial(
        cli.load_inputs,
        image_size=config.data.image_size,
        channels=config.data.channels,
        log=log,
        invert=invert,
        preprocess=preprocess,
    )


def _settings_for(options: Options):
    return diffsim_settings(options) if options.method in similarity_lib.DIFFSIM_METHODS else None


@dataclasses.dataclass(frozen=True)
class Retrieval:
    """The nearest gallery files of each query."""

    queries: list[str]
    gallery: list[str]
    nearest: np.ndarray  # int [Q, K] gallery indices, most similar first
    scores: np.ndarray  # float [Q, K]
    strip: np.ndarray  # uint8 PNG image: one row per query (query | nearest)


def retrieve(config, queries: list[str], options: Options, log: cli.Log) -> Retrieval:
    """Ranks the gallery for each query and builds the strip image (writes nothing)."""
    from semantica_jax.utils import image_io

    if not queries:
        raise UserError("give at least one query image: similarity Q [Q ...] --gallery=DIR")
    gallery = gallery_files(options.gallery)
    read = _read_inputs(config, options, log)
    query_images, gallery_images = read(queries), read(gallery)
    top = min(options.top, len(gallery))
    if top < options.top:
        log(f"note: the gallery holds {len(gallery)} images; showing {top} per query")
    models = load_models(config, options)
    matrix = similarity_lib.similarity_matrix_of(
        options.method,
        query_images,
        gallery_images,
        settings=_settings_for(options),
        log=log,
        **models,
    )
    nearest = np.argsort(-matrix, axis=1, kind="stable")[:, :top]
    rows = np.concatenate([query_images[:, None], gallery_images[nearest]], axis=1)
    strip = image_io.make_grid(
        rows.reshape(-1, *rows.shape[2:]), ncols=top + 1, scale=options.scale
    )
    scores = np.take_along_axis(matrix, nearest, axis=1)
    return Retrieval(queries, gallery, nearest, scores, strip)


def format_retrieval(result: Retrieval) -> str:
    """One block per query: its name, then `rank  score  gallery file` lines."""
    lines = []
    for i, query in enumerate(result.queries):
        lines.append(query)
        for rank, (j, value) in enumerate(zip(result.nearest[i], result.scores[i], strict=True)):
            lines.append(f"  {rank + 1:>3}  {value:8.4f}  {result.gallery[j]}")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    return dict(
        **cli.define_input_flags(),
        config=config_flags.DEFINE_config_file(
            "config",
            DEFAULT_CONFIG,
            "Config whose data/encoder sections are used without --workdir.",
            lock_config=True,
        ),
        method=flags.DEFINE_string("method", "encoder", "|".join(similarity_lib.METHODS)),
        workdir=flags.DEFINE_string(
            "workdir", "", "Training workdir (config.json, checkpoints/); diffsim needs one."
        ),
        cache_dir=flags.DEFINE_string("cache_dir", "", "Encoder cache dir; '' = the run's."),
        logsnr=flags.DEFINE_float("logsnr", 0.0, "DiffSim: noise level logSNR λ (finite)."),
        block=flags.DEFINE_string("block", "", "DiffSim: attention block; '' = the default."),
        noise=flags.DEFINE_enum("noise", "shared", ["shared", "independent"], "DiffSim noise."),
        seed=flags.DEFINE_integer("seed", 0, "DiffSim: noise seed."),
        gallery=flags.DEFINE_string("gallery", "", "Folder of images to retrieve from."),
        top=flags.DEFINE_integer("top", 5, "Retrieval: nearest gallery images per query."),
        out=flags.DEFINE_string("out", "retrieval.png", "Retrieval: output PNG."),
        scale=flags.DEFINE_integer("scale", 1, "Retrieval: integer upscaling of the PNG."),
    )


def similarity_main(flag_values: dict[str, Any]) -> str:
    """The whole tool on parsed flags: what it prints (the PNG, if any, is written)."""
    from semantica_jax import workdir as run_dir
    from semantica_jax.utils import image_io

    fields = {f.name for f in dataclasses.fields(Options)}
    options = Options(**{k: v for k, v in flag_values.items() if k in fields})
    check_options(options)
    config = flag_values["config"]
    if options.workdir:
        config = run_dir.load_config(options.workdir, options.cache_dir)
    log = cli.stderr_log
    if not options.gallery:
        matrix = compare_files(config, flag_values["args"], options, log)
        paths = flag_values["args"]
        return f"{matrix[0, 1]:.4f}" if len(paths) == 2 else format_matrix(matrix, paths)
    result = retrieve(config, flag_values["args"], options, log)
    image_io.save_png(result.strip, options.out)
    return f"{format_retrieval(result)}\nwrote {options.out}"


def run(argv: list[str] | None = None) -> None:
    """Entry point of `python -m semantica_jax.tools.similarity A B [C ...]`."""
    f = cli.start(_define_flags, [], argv, doc=__doc__, allow_args=True)
    with errors.reported():
        text = similarity_main(f)
    print(text)


if __name__ == "__main__":
    run()
