"""Generative augmentation (seed 004, SGID): filtered variations of labelled images.

  python -m semantica_jax.augment --workdir=DIR --images=labelled/ --variations=10 --out=OUT
  python -m semantica_jax.augment --workdir=DIR --images=few.npz --variations=10 \
      --guidance=constant --w=0.5 --strength=0.3 --classifier_agrees --out=OUT

`--images` is a folder with one sub-folder per label (the sub-folder names, sorted, are the
labels 0..L-1) or an `.npz` with `images` uint8 [N,H,W,C] and `labels` int [N]. For each
labelled image (augmentation.py has the formulas):
  1. guidance: `sgid` maps the cosine s of the image's CLS to its leave-one-out class
     prototype through SGID's f after the METHODS §9 rescaling onto the labelled set's
     same-class cosine range (w = max(0, w0 f(s'))); `constant` uses `--w`;
  2. start: pure noise (a variation), or with `--strength=t0` < 1 part-way from the
     noised image (SDEdit, as SGID's img2img);
  3. filter: keep a variation iff tau_low <= cos(CLS(variation), CLS(source)) < tau_high
     (tau_low: the 10th percentile of same-class labelled-pair cosines, `--tau_low` to set
     it; tau_high 0.98 drops near-copies) and, with `--classifier_agrees`, a 1-NN classifier
     on the labelled images' CLS predicts the source's label; draw again, at most
     `--max_tries` batches, until M pass (the summary counts what could not be filled).
OUT is written atomically (a temp dir renamed into place): `tfds/` (the augmented set as a
TFDS dataset `semantica_augmented`, split `train`: real images then kept variations, with
`label`, `source_index` and `is_variation`), `augmented.npz` (the same arrays plus w, t0
and the cosine to the source), `contact_sheet.png` (source | its kept variations, one row
per source) and `summary.json`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from typing import Any

import numpy as np
import tqdm

from semantica_jax import errors
from semantica_jax import workdir as run_dir
from semantica_jax.errors import UserError
from semantica_jax.tools import cli

GUIDANCE_MODES = ("sgid", "constant")
DATASET_NAME = "semantica_augmented"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".npy")


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """What the tool does per labelled image (see the module docstring)."""

    variations: int = 10
    guidance: str = "sgid"
    w: float = 0.5
    strength: float = 1.0
    tau_low: float | None = None
    tau_high: float = 0.98
    classifier_agrees: bool = False
    max_tries: int = 4
    seed: int = 0

    def check(self) -> None:
        if self.variations < 1:
            raise UserError(f"--variations must be >= 1, got {self.variations}")
        if self.guidance not in GUIDANCE_MODES:
            raise UserError(f"--guidance must be sgid or constant, got {self.guidance!r}")
        if not math.isfinite(self.w) or not 0.0 <= self.w <= 100.0:
            raise UserError(f"--w must be a finite guidance in [0, 100], got {self.w}")
        if not 0.0 < self.strength <= 1.0:
            raise UserError(f"--strength must be in (0, 1] (1 = pure noise), got {self.strength}")
        if self.tau_low is not None and not -1.0 <= self.tau_low < self.tau_high:
            raise UserError(f"--tau_low must be in [-1, tau_high), got {self.tau_low}")
        if not self.max_tries >= 1:
            raise UserError(f"--max_tries must be >= 1, got {self.max_tries}")


# --- input ---------------------------------------------------------------------------------


def read_labelled(path: str, image_size: int, channels: int, log) -> tuple[np.ndarray, ...]:
    """(images uint8 [N,S,S,C], labels int64 [N], label names) from a folder tree or .npz.

    Raises:
      UserError: missing path, no image, a label folder without an image, an unreadable
        file, or an .npz without uint8 `images` [N,H,W,C] and matching `labels` [N].
    """
    from semantica_jax.utils import image_io

    if os.path.isfile(path) and path.endswith(".npz"):
        return _read_npz(path, image_size, channels, log)
    if not os.path.isdir(path):
        raise UserError(f"--images={path} is neither a folder of label folders nor an .npz")
    names = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not names:
        raise UserError(f"{path} has no label sub-folders (one folder of images per label)")
    images, labels = [], []
    for label, name in enumerate(names):
        folder = os.path.join(path, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(_IMAGE_SUFFIXES))
        if not files:
            raise UserError(f"label folder {folder} holds no image")
        for f in files:
            try:
                image, note = image_io.load_image(os.path.join(folder, f), image_size, channels)
            except image_io.ImageReadError as err:
                raise UserError(str(err)) from err
            if note:
                log(f"note: {os.path.join(folder, f)}: converted {note}")
            images.append(image)
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int64), names


def _read_npz(path: str, image_size: int, channels: int, log) -> tuple[np.ndarray, ...]:
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = np.asarray(data["images"]), np.asarray(data["labels"])
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path}: needs arrays 'images' and 'labels' ({err})") from err
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise UserError(
            f"{path}: 'images' must be uint8 [N>0,H,W,C], got {images.dtype} {images.shape}"
        )
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"{path}: 'labels' must be int [{len(images)}], got {labels.dtype} {labels.shape}"
        )
    if images.shape[1:] != (image_size, image_size, channels):
        raise UserError(
            f"{path}: images are {images.shape[1:]}, the model takes "
            f"{(image_size, image_size, channels)}; convert them first"
        )
    names = [str(v) for v in np.unique(labels)]
    return images, labels.astype(np.int64), names


# --- the work ------------------------------------------------------------------------------


def _guidance(settings: AugmentSettings, cls: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """w per labelled image [N] (sgid: from prototype similarity; constant: --w)."""
    from semantica_jax import augmentation as aug

    if settings.guidance == "constant":
        return np.full(len(labels), settings.w)
    s = aug.prototype_similarity(cls, labels)
    try:  # the labelled set's own same-class range; one image per class has none
        lo = aug.same_class_cosine_percentile(cls, labels, 5)
        hi = aug.same_class_cosine_percentile(cls, labels, 95)
    except ValueError:
        lo, hi = 0.3, 0.9
    return aug.guidance_from_similarity(s, w0=settings.w, lo=lo, hi=max(hi, lo + 1e-6))


def _tau_low(settings: AugmentSettings, cls, labels, log) -> float:
    from semantica_jax import augmentation as aug

    if settings.tau_low is not None:
        return settings.tau_low
    try:
        return aug.same_class_cosine_percentile(cls, labels, 10)
    except ValueError:
        log("note: no class has two labelled images; tau_low = 0.5 (set --tau_low)")
        return 0.5


def _variations_of(ctx: dict[str, Any], i: int, w: float, settings: AugmentSettings):
    """Kept variations of labelled image i: (uint8 [K,...], cosines [K], drawn, rejected)."""
    import jax
    import jax.numpy as jnp

    from semantica_jax import augmentation as aug
    from semantica_jax.encoder.encode import encode
    from semantica_jax.utils import image_io

    m = settings.variations
    tokens = np.repeat(ctx["tokens"][i : i + 1], m, axis=0)
    cls = np.repeat(ctx["cls"][i : i + 1], m, axis=0)
    x0 = np.repeat(image_io.to_model_range(ctx["images"][i : i + 1]), m, axis=0)
    kept, cosines, drawn = [], [], 0
    for attempt in range(settings.max_tries):
        rng = jax.random.fold_in(jax.random.fold_in(ctx["key"], i), attempt)
        if settings.strength < 1.0:
            x = ctx["fn"](
                ctx["params"],
                tokens,
                cls,
                rng,
                jnp.float32(w),
                jnp.float32(settings.strength),
                jnp.asarray(x0),
            )
        else:
            x = ctx["fn"](ctx["params"], tokens, cls, rng, jnp.float32(w))
        images = image_io.to_uint8(jax.device_get(x))
        drawn += m
        _, var_cls = encode(ctx["bundle"], images, with_tokens=False)
        ok, cos = aug.accept_variations(var_cls, cls, ctx["tau_low"], settings.tau_high)
        if settings.classifier_agrees:
            ok &= _nearest_label(var_cls, ctx["cls"], ctx["labels"]) == ctx["labels"][i]
        kept.extend(images[ok])
        cosines.extend(cos[ok])
        if len(kept) >= m:
            break
    kept, cosines = kept[:m], cosines[:m]
    shape = ctx["images"].shape[1:]
    out = np.stack(kept) if kept else np.zeros((0, *shape), np.uint8)
    return out, np.asarray(cosines, np.float64), drawn, drawn - len(kept)


def _nearest_label(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-NN label by CLS cosine: the classifier trained on the labelled images alone."""
    from semantica_jax.utils.cosine import cosine_matrix

    return labels[np.argmax(cosine_matrix(queries, gallery), axis=1)]


def augment(
    workdir: str,
    images_path: str,
    out: str,
    settings: AugmentSettings,
    *,
    cache_dir: str = "",
    log=None,
) -> dict[str, Any]:
    """The whole tool (module docstring); returns the summary written to OUT/summary.json."""
    import jax

    from semantica_jax import assets, decoder
    from semantica_jax.encoder.encode import encode

    log = log or cli.stderr_log
    settings.check()
    if os.path.exists(out):
        raise UserError(f"--out={out} exists; pass a new directory (nothing is overwritten)")
    config = run_dir.load_config(workdir, cache_dir)
    images, labels, names = read_labelled(
        images_path, config.data.image_size, config.data.channels, log
    )
    params, step = run_dir.restore_ema_params(workdir)
    bundle = assets.load_or_train_encoder(config, log)
    tokens, cls = encode(bundle, images)
    ctx = dict(
        images=images,
        labels=labels,
        tokens=tokens,
        cls=cls,
        bundle=bundle,
        params=params,
        fn=decoder.make_variation_fn(config),
        key=jax.random.PRNGKey(settings.seed),
        tau_low=_tau_low(settings, cls, labels, log),
    )
    w = _guidance(settings, cls, labels)
    log(
        f"augmenting {len(images)} labelled images x {settings.variations} with step {step} "
        f"EMA params; tau_low {ctx['tau_low']:.3f}, tau_high {settings.tau_high}"
    )
    rows = []
    bar = tqdm.tqdm(range(len(images)), desc="augmenting", unit="source image")
    for i in bar:
        rows.append(_variations_of(ctx, i, float(w[i]), settings))
        bar.set_postfix(kept=f"{len(rows[-1][0])}/{settings.variations}")
    return _write(out, images, labels, names, w, rows, settings, step, workdir)


def _write(out, images, labels, names, w, rows, settings, step, workdir) -> dict[str, Any]:
    """OUT/{tfds, augmented.npz, contact_sheet.png, summary.json}, atomically."""
    from semantica_jax.data.tfds_images import store_image_dataset
    from semantica_jax.utils import atomic_files, image_io

    kept = [r[0] for r in rows]
    source = np.concatenate(
        [np.arange(len(images))] + [np.full(len(k), i) for i, k in enumerate(kept)]
    ).astype(np.int64)
    all_images = np.concatenate([images, *kept])
    is_variation = (np.arange(len(all_images)) >= len(images)).astype(np.int64)
    arrays = {
        "image": all_images,
        "label": labels[source],
        "source_index": source,
        "is_variation": is_variation,
    }
    summary = {
        "workdir": os.path.abspath(workdir),
        "step": int(step),
        "labels": list(names),
        "num_real": int(len(images)),
        "num_variations": int(is_variation.sum()),
        "requested_per_image": settings.variations,
        "unfilled": int(sum(settings.variations - len(k) for k in kept)),
        "drawn": int(sum(r[2] for r in rows)),
        "rejected": int(sum(r[3] for r in rows)),
        "settings": dataclasses.asdict(settings),
        "guidance_per_image": [float(v) for v in w],
    }
    tmp = atomic_files.temp_dir_beside(os.path.abspath(out))
    try:
        store_image_dataset(
            DATASET_NAME,
            {"train": arrays},
            os.path.join(tmp, "tfds"),
            num_classes=len(names),
            description="semantica_jax generative augmentation",
        )
        np.savez(
            os.path.join(tmp, "augmented.npz"),
            images=all_images,
            labels=labels[source],
            source_index=source,
            is_variation=is_variation.astype(bool),
            guidance=np.asarray(w)[source],
            t0=np.full(len(source), settings.strength),
            cosine_to_source=np.concatenate([np.ones(len(images))] + [r[1] for r in rows]),
        )
        width = settings.variations + 1
        sheet = np.zeros((len(images), width, *images.shape[1:]), np.uint8)
        for i, k in enumerate(kept):
            sheet[i, 0], sheet[i, 1 : 1 + len(k)] = images[i], k
        image_io.save_grid(
            sheet.reshape(-1, *images.shape[1:]),
            os.path.join(tmp, "contact_sheet.png"),
            ncols=width,
        )
        atomic_files.write_json(os.path.join(tmp, "summary.json"), summary)
        if not atomic_files.publish_dir(tmp, os.path.abspath(out)):
            raise UserError(f"--out={out} appeared while augmenting; nothing written")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


# --- command line --------------------------------------------------------------------------


def _define_flags():
    from absl import flags

    return dict(
        workdir=flags.DEFINE_string("workdir", None, "Training workdir (config.json, ckpts)."),
        images=flags.DEFINE_string("images", None, "Folder of label folders, or an .npz."),
        variations=flags.DEFINE_integer("variations", 10, "Kept variations M per image."),
        out=flags.DEFINE_string("out", None, "Output directory (must not exist)."),
        guidance=flags.DEFINE_enum("guidance", "sgid", list(GUIDANCE_MODES), "w per image."),
        w=flags.DEFINE_float("w", 0.5, "constant: the guidance; sgid: its base w0."),
        strength=flags.DEFINE_float("strength", 1.0, "t0 of SDEdit; 1 = pure noise."),
        tau_low=flags.DEFINE_float("tau_low", None, "Filter's low cosine; default: auto."),
        tau_high=flags.DEFINE_float("tau_high", 0.98, "Filter's high cosine (near-copies)."),
        classifier_agrees=flags.DEFINE_bool(
            "classifier_agrees", False, "Also require a 1-NN classifier to agree."
        ),
        max_tries=flags.DEFINE_integer("max_tries", 4, "Batches drawn at most per image."),
        seed=flags.DEFINE_integer("seed", 0, "Sampling seed."),
        cache_dir=flags.DEFINE_string("cache_dir", "", "Encoder cache dir; '' = the run's."),
    )


def run(argv: list[str] | None = None) -> None:
    """Entry point of `python -m semantica_jax.augment` (and `semantica_jax.tools.augment`)."""
    f = cli.start(_define_flags, ["workdir", "images", "out"], argv, doc=__doc__)
    fields = {
        k: f[k]
        for k in (
            "variations",
            "guidance",
            "w",
            "strength",
            "tau_low",
            "tau_high",
            "classifier_agrees",
            "max_tries",
            "seed",
        )
    }
    start = time.perf_counter()
    with errors.reported():
        summary = augment(
            f["workdir"], f["images"], f["out"], AugmentSettings(**fields), cache_dir=f["cache_dir"]
        )
    print(
        f"wrote {f['out']}: {summary['num_real']} real + {summary['num_variations']} "
        f"variations ({summary['unfilled']} unfilled) in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run()
