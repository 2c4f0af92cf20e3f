"""Which image similarity picks the closer of two MNIST images, when "closer" is built in?

A two-alternative forced choice (2AFC; METHODS §6.3) on the test split of a training
workdir's config. Each triplet (reference, x0, x1) has its ground truth by construction:

  * distortion strength (TID-style): x0 and x1 are the reference under the same distortion
    (the same noise draw, displacement field, direction or box) at two strengths s1 < s2,
    two distinct rungs of the family's ladder (`LEVELS`); the milder one is closer.
    Families: gaussian noise, blur, elastic deformation, rotation, translation, occlusion
    (a grey box; the larger box holds the smaller) and stroke width (grey dilation or
    erosion with nested footprints). Image ops: dm-pix; grey morphology: scipy.ndimage.
  * semantic (Sref-style): A = the reference, B another test image of its class (closer),
    C a test image of another class.
  * semantic, pixel-hard: as above, but C is the other-class test image nearest to A in
    pixel L2 (the hardest negative for pixel methods).

Every method scores the same triplets (higher = more similar; distance = -similarity):
pixel L2 (-RMS), SSIM (dm-pix), the frozen encoder's CLS cosine, DiffSim's AAS on the
encoder tokens, the decoder's attention output without alignment (DiffSim 'o', default
block, λ=0), DiffSim-S at every transformer block × λ, DiffSim-C (the default cross block,
λ=0) and the cosine of the feature classifier's penultimate features (trained on MNIST
labels: an upper reference, not a competitor). DiffSim uses shared noise (one ε, seed 0).
Accuracy = mean[(d0<d1)(1-g) + (d1<d0)g + ½(d0=d1)] with 95% bootstrap intervals
(`metrics/two_afc.py`). "diffsim_s_best" is the best block × λ per family, chosen on the
same triplets: an optimistic figure.

Cost: every image's Q/K/V is computed once per λ, all blocks in one forward, and all its
pairs are scored from those features (`diffsim.indexed_scores`); references are shared by
the families, so a reference and its 2 alternatives per family are 19 images per triplet
index and λ.

Run:
  python benchmarks/similarity_2afc.py --workdir=workdirs/mnist_default [--triplets=2000]
      [--quick] [--out=benchmarks/results]
Writes similarity_2afc.json (every method × family with CI, N, seeds, timing, machine,
git revision), similarity_2afc_heatmap.png (DiffSim-S over block × λ per family) and
similarity_2afc.md (the table and the command).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from semantica_jax import assets  # noqa: E402
from semantica_jax import workdir as run_dir  # noqa: E402
from semantica_jax.encoder.encode import encode  # noqa: E402
from semantica_jax.metrics import diffsim, features, two_afc  # noqa: E402
from semantica_jax.metrics import similarity as similarity_lib  # noqa: E402
from semantica_jax.utils import atomic_files, cosine, image_io  # noqa: E402

DISTORTIONS = ("noise", "blur", "elastic", "rotation", "translation", "occlusion", "stroke")
FAMILIES = (*DISTORTIONS, "semantic", "semantic_pixel_hard")
# Five rungs per family; a triplet takes two distinct ones (s1 < s2).
LEVELS = {
    "noise": (0.1, 0.2, 0.3, 0.45, 0.6),  # σ of added Gaussian noise, [-1, 1] units
    "blur": (0.6, 0.9, 1.2, 1.6, 2.0),  # σ of the Gaussian kernel (9x9), pixels
    "elastic": (10.0, 20.0, 30.0, 45.0, 60.0),  # α of the displacement field (σ = 4 px)
    "rotation": (4.0, 8.0, 13.0, 20.0, 30.0),  # degrees, one random sign per triplet
    "translation": (0.5, 1.0, 1.5, 2.5, 3.5),  # pixels, one random direction per triplet
    "occlusion": (4.0, 6.0, 8.0, 10.0, 13.0),  # side of a mid-grey square, pixels
    "stroke": (1.0, 2.0, 3.0, 4.0),  # footprint rung; erosion uses the first two only
}
ELASTIC_SIGMA = 4.0
BLUR_KERNEL = 9
LOGSNRS = (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
QUICK_LOGSNRS = (0.0, 2.0)
QUICK_TRIPLETS = 100
TABLE_ROWS = (
    ("pixel_l2", "pixel L2"),
    ("ssim", "SSIM"),
    ("encoder_cls", "encoder CLS cosine"),
    ("encoder_token_aas", "encoder-token AAS"),
    ("decoder_o", "decoder attention, no alignment ('o')"),
    ("diffsim_s", "DiffSim-S (last block, λ=0)"),
    ("diffsim_s_best", "DiffSim-S, best block × λ per family*"),
    ("diffsim_c", "DiffSim-C (last cross block, λ=0)"),
    ("feature_net", "feature net (labels; upper reference)"),
)


# --- triplets ------------------------------------------------------------------------------


@dataclasses.dataclass
class Triplets:
    """refs float32 [n, H, W, C]; alternatives [F, 2, n, H, W, C] (x0, x1) in [-1, 1];
    closer int [F, n] (g: which alternative is closer); families: the F names."""

    refs: np.ndarray
    alternatives: np.ndarray
    closer: np.ndarray
    families: tuple[str, ...]


def _footprints() -> list[np.ndarray]:
    """Nested footprints: 3x3 cross ⊂ 3x3 square ⊂ 5x5 disk ⊂ 5x5 square."""
    yy, xx = np.mgrid[-2:3, -2:3]
    cross = np.zeros((5, 5), bool)
    cross[2, 1:4] = cross[1:4, 2] = True
    square3 = (abs(yy) <= 1) & (abs(xx) <= 1)
    return [cross, square3, yy**2 + xx**2 <= 5, np.ones((5, 5), bool)]


def _stroke(images01: np.ndarray, rungs: np.ndarray, dilate: np.ndarray) -> np.ndarray:
    """Grey dilation (thicker) or erosion (thinner) of images [n, H, W, C] in [0, 1]."""
    from scipy import ndimage

    out = np.empty_like(images01)
    footprints = _footprints()
    for i, (image, rung, grow) in enumerate(zip(images01, rungs, dilate, strict=True)):
        op = ndimage.grey_dilation if grow else ndimage.grey_erosion
        out[i, ..., 0] = op(image[..., 0], footprint=footprints[int(rung) - 1], mode="constant")
    return out


def _distort_one(family: str, key: jax.Array, x: jax.Array, s: jax.Array) -> jax.Array:
    """One image x [H, W, C] in [0, 1] distorted at strength s; the key fixes everything else."""
    import dm_pix

    k1, k2 = jax.random.split(key)
    if family == "noise":
        return jnp.clip(x + 0.5 * s * jax.random.normal(k1, x.shape), 0.0, 1.0)
    if family == "blur":
        return dm_pix.gaussian_blur(x, s, BLUR_KERNEL)
    if family == "elastic":
        return dm_pix.elastic_deformation(k1, x, s, ELASTIC_SIGMA, mode="constant")
    if family == "rotation":
        sign = jnp.where(jax.random.bernoulli(k1), 1.0, -1.0)
        return dm_pix.rotate(x, sign * jnp.deg2rad(s), mode="constant", cval=0.0)
    if family == "translation":
        angle = jax.random.uniform(k1, (), maxval=2 * jnp.pi)
        offset = jnp.array([s * jnp.sin(angle), s * jnp.cos(angle), 0.0])
        return dm_pix.affine_transform(x, jnp.eye(3), offset=offset, mode="constant")
    if family == "occlusion":  # a mid-grey square centred in the digit's 8..20 px region
        cy, cx = jax.random.randint(k2, (2,), 8, 21)
        rows, cols = jnp.arange(x.shape[0])[:, None], jnp.arange(x.shape[1])[None, :]
        inside = (jnp.abs(rows - cy) < s / 2) & (jnp.abs(cols - cx) < s / 2)
        return jnp.where(inside[..., None], 0.5, x)
    raise ValueError(f"unknown distortion {family!r}")


@functools.partial(jax.jit, static_argnames=("family",))
def _distort(family: str, keys: jax.Array, images: jax.Array, strengths: jax.Array) -> jax.Array:
    return jax.vmap(functools.partial(_distort_one, family))(keys, images, strengths)


def _two_rungs(rng: np.random.Generator, n: int, rungs: int) -> np.ndarray:
    """[n, 2] distinct rung indices, milder first."""
    pairs = np.array([(i, j) for i in range(rungs) for j in range(i + 1, rungs)])
    return pairs[rng.integers(0, len(pairs), n)]


def distortion_pair(family: str, refs01: np.ndarray, seed: int, index: int) -> np.ndarray:
    """(milder, stronger) [2, n, H, W, C] in [0, 1] of one family."""
    rng = np.random.default_rng([seed, index])
    n, levels = len(refs01), np.asarray(LEVELS[family], np.float32)
    if family == "stroke":
        dilate = rng.random(n) < 0.75
        rung = np.where(dilate[:, None], _two_rungs(rng, n, 4), np.array([0, 1])) + 1
        return np.stack([_stroke(refs01, rung[:, k], dilate) for k in (0, 1)])
    rung = _two_rungs(rng, n, len(levels))
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), index), n)
    return np.stack(
        [np.asarray(_distort(family, keys, refs01, levels[rung[:, k]])) for k in (0, 1)]
    )


def semantic_pair(
    images: np.ndarray, labels: np.ndarray, ref_index: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (B same class, C other class, C nearest other class in pixel L2), each [n]."""
    rng = np.random.default_rng([seed, 99])
    flat = image_io.to_model_range(images).reshape(len(images), -1)
    same, other, hard = [], [], []
    norms = (flat * flat).sum(1)
    for chunk in np.array_split(ref_index, max(1, len(ref_index) // 256)):
        d2 = norms[chunk, None] - 2.0 * flat[chunk] @ flat.T + norms[None, :]
        for row, r in zip(d2, chunk, strict=True):
            mates = np.flatnonzero((labels == labels[r]) & (np.arange(len(labels)) != r))
            others = np.flatnonzero(labels != labels[r])
            same.append(rng.choice(mates))
            other.append(rng.choice(others))
            hard.append(others[np.argmin(row[others])])
    return np.array(same), np.array(other), np.array(hard)


def make_triplets(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> Triplets:
    """n triplets per family from a labelled split (uint8 images), seeded."""
    if n > len(images):
        raise ValueError(f"--triplets={n} exceeds the {len(images)} images of the split")
    rng = np.random.default_rng(seed)
    ref_index = rng.choice(len(images), n, replace=False)
    refs = image_io.to_model_range(images[ref_index])
    refs01 = (refs + 1.0) / 2.0
    closer_farther = [
        distortion_pair(f, refs01, seed, i) * 2.0 - 1.0 for i, f in enumerate(DISTORTIONS)
    ]
    same, other, hard = semantic_pair(images, labels, ref_index, seed)
    model_range = image_io.to_model_range
    for negatives in (other, hard):
        closer_farther.append(np.stack([model_range(images[same]), model_range(images[negatives])]))
    pairs = np.stack(closer_farther).astype(np.float32)  # [F, 2, n, ...]: (closer, farther)
    closer = rng.integers(0, 2, (len(FAMILIES), n))
    swap = closer.astype(bool)[:, None, :, None, None, None]
    alternatives = np.where(swap, pairs[:, ::-1], pairs)
    return Triplets(refs.astype(np.float32), alternatives, closer, FAMILIES)


# --- scoring -------------------------------------------------------------------------------


@dataclasses.dataclass
class Scorers:
    """What the methods need (decoder, encoder, feature net, the DiffSim grid) and the
    seconds / item counts spent per stage."""

    dm: diffsim.DiffSimModel
    encoder: Any
    feature_fn: Callable[[np.ndarray], np.ndarray]
    logsnrs: tuple[float, ...]
    blocks: tuple[str, ...]
    default_block: str
    cross_block: str | None
    batch_size: int
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def timer(self, stage: str, count: int = 0):
        """Adds the block's wall time (results awaited by the block) and `count` to `stage`."""
        start = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        self.counts[stage] = self.counts.get(stage, 0) + count


_token_aas = jax.jit(diffsim.encoder_token_aas)


def _diffsim_scores(scorers: Scorers, bank: np.ndarray, ia, ib, cond) -> dict[str, np.ndarray]:
    """DiffSim-S at every (block, λ), 'o' and DiffSim-C of the pairs (ia, ib) of a bank."""
    out, dm, pairs = {}, scorers.dm, len(ia)
    # Equal batches of at most batch_size: no padded images in the last one.
    batch = -(-len(bank) // -(-len(bank) // scorers.batch_size))
    for lam in scorers.logsnrs:
        with scorers.timer("diffsim_s_forward", len(bank)):
            feats = diffsim.features(dm, bank, logsnr=lam, blocks=scorers.blocks, batch_size=batch)
            jax.block_until_ready(feats)
        with scorers.timer("diffsim_s_score", pairs * len(scorers.blocks)):
            for block in scorers.blocks:
                scores = diffsim.indexed_scores(feats[block], ia, ib, "s")
                out[f"diffsim_s|{block}|{lam:g}"] = np.asarray(scores)
        if lam == 0.0:
            out["decoder_o"] = diffsim.indexed_scores(feats[scorers.default_block], ia, ib, "o")
    if scorers.cross_block:
        with scorers.timer("diffsim_c", len(bank)):
            feats = diffsim.features(dm, bank, method="c", cond=cond, logsnr=0.0, batch_size=batch)
            out["diffsim_c"] = np.asarray(
                diffsim.indexed_scores(feats[scorers.cross_block], ia, ib, "c")
            )
    return out


def score_chunk(scorers: Scorers, refs: np.ndarray, alternatives: np.ndarray) -> dict:
    """Similarities [F, 2, c] of every method for the refs [c] and alternatives [F, 2, c]."""
    shape, c = alternatives.shape[:3], len(refs)
    bank = np.concatenate([refs, alternatives.reshape(-1, *refs.shape[1:])])
    ib = np.arange(c, len(bank))  # every alternative, paired with its reference
    ia = np.tile(np.arange(c), len(ib) // c)
    out = {}
    with scorers.timer("pixel_l2"):
        out["pixel_l2"] = similarity_lib.pixel_scores(bank[ia], bank[ib])
    with scorers.timer("ssim"):
        out["ssim"] = similarity_lib.ssim_scores(bank[ia], bank[ib])
    with scorers.timer("encoder", len(bank)):
        tokens, cls = encode(scorers.encoder, bank)
        out["encoder_cls"] = cosine.rowwise_cosine(cls[ia], cls[ib])
        out["encoder_token_aas"] = np.asarray(_token_aas(tokens[ia], tokens[ib]))
    with scorers.timer("feature_net", len(bank)):
        feats = scorers.feature_fn(bank)
        out["feature_net"] = cosine.rowwise_cosine(feats[ia], feats[ib])
    out.update(_diffsim_scores(scorers, bank, jnp.asarray(ia), jnp.asarray(ib), (tokens, cls)))
    return {name: np.asarray(s, np.float32).reshape(shape) for name, s in out.items()}


def score_all(scorers: Scorers, triplets: Triplets, chunk: int) -> dict[str, np.ndarray]:
    """Similarities [F, 2, n] of every method, in chunks of `chunk` references."""
    n, parts = len(triplets.refs), []
    for begin in tqdm.trange(0, n, chunk, desc="triplets", unit="chunk"):
        end = min(n, begin + chunk)
        parts.append(
            score_chunk(scorers, triplets.refs[begin:end], triplets.alternatives[:, :, begin:end])
        )
    return {name: np.concatenate([p[name] for p in parts], axis=2) for name in parts[0]}


# --- results -------------------------------------------------------------------------------


def accuracies(sims: dict, closer: np.ndarray, resamples: int, seed: int) -> dict:
    """{method: {family: two_afc.summary}} with distances d = -similarity."""
    return {
        name: {
            family: two_afc.summary(
                -s[f, 0], -s[f, 1], closer[f], num_resamples=resamples, seed=seed + f
            )
            for f, family in enumerate(FAMILIES)
        }
        for name, s in sims.items()
    }


def organise(raw: dict, scorers: Scorers) -> dict:
    """Splits the DiffSim-S grid from the rest; adds the default and the best per family."""
    methods = {k: v for k, v in raw.items() if not k.startswith("diffsim_s|")}
    grid = {
        family: {
            block: {
                f"{lam:g}": raw[f"diffsim_s|{block}|{lam:g}"][family] for lam in scorers.logsnrs
            }
            for block in scorers.blocks
        }
        for family in FAMILIES
    }
    methods["diffsim_s"] = {f: grid[f][scorers.default_block]["0"] for f in FAMILIES}
    best = {}
    for family in FAMILIES:
        cells = [(b, lam, r) for b, row in grid[family].items() for lam, r in row.items()]
        block, lam, result = max(cells, key=lambda cell: cell[2]["accuracy"])
        best[family] = dict(result, block=block, logsnr=float(lam))
    methods["diffsim_s_best"] = best
    return {"methods": methods, "diffsim_s_grid": grid}


def timing_report(scorers: Scorers, wall_s: float, pairs: int) -> dict:
    """Seconds per stage, and DiffSim-S's throughput (forwards and pair scoring together)."""
    seconds, counts = scorers.seconds, scorers.counts
    diffsim_s = seconds.get("diffsim_s_forward", 0.0) + seconds.get("diffsim_s_score", 0.0)
    forward = max(seconds.get("diffsim_s_forward", 0.0), 1e-9)
    scored = pairs * len(scorers.logsnrs)  # (pair, λ) scores; each holds every block
    return {
        "wall_s": round(wall_s, 1),
        "seconds": {k: round(v, 2) for k, v in sorted(seconds.items())},
        "diffsim_s_forward_images_per_s": round(counts.get("diffsim_s_forward", 0) / forward, 1),
        "diffsim_s_pairs_per_s": round(scored / max(diffsim_s, 1e-9), 1),
        "diffsim_s_pair_blocks_per_s": round(
            scored * len(scorers.blocks) / max(diffsim_s, 1e-9), 1
        ),
        "pairs_per_logsnr": pairs,
    }


def _git_revision() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "revision": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def _machine() -> dict:
    cpu = platform.processor()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        # Another job on these cores slows every stage: the 1-min load at the end says so.
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "platform": jax.devices()[0].platform,
    }


def _cell(r: dict) -> str:
    return f"{100 * r['accuracy']:.1f} ({100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f})"


def _footer(report: dict) -> str:
    best = report["methods"]["diffsim_s_best"]
    chosen = ", ".join(
        f"{f}: {best[f]['block'].split('/')[-1]} λ={best[f]['logsnr']:g}" for f in FAMILIES
    )
    t, machine, git = report["timing"], report["machine"], report["git"]
    return (
        f"\\* chosen on these triplets (optimistic): {chosen}.\n\n"
        f"Wall time {t['wall_s']:.0f} s on {machine['cores']} cores ({machine['cpu']}); "
        f"DiffSim-S forwards {t['diffsim_s_forward_images_per_s']:.0f} images/s, "
        f"{t['diffsim_s_pairs_per_s']:.0f} pairs/s with all {len(report['diffsim']['blocks'])} "
        f"blocks of a pair from one forward per image; git {git['revision'][:12]}"
        f"{' + uncommitted changes' if git['dirty'] else ''}."
    )


def markdown(report: dict) -> str:
    """The methods × families table (accuracy %, 95% CI) and how it was made."""
    methods = report["methods"]
    rows = [
        f"| {label} | " + " | ".join(_cell(methods[key][f]) for f in FAMILIES) + " |"
        for key, label in TABLE_ROWS
        if key in methods
    ]
    intro = (
        f"2AFC accuracy in % (95% bootstrap interval), {report['triplets_per_family']} "
        f"triplets per family (seed {report['seeds']['triplets']}); chance is 50."
    )
    return "\n".join(
        [
            "# Similarity 2AFC on MNIST test triplets",
            "",
            f"Command: `{report['command']}`",
            "",
            intro,
            "",
            "| method | " + " | ".join(FAMILIES) + " |",
            "| --- |" + " --- |" * len(FAMILIES),
            *rows,
            "",
            _footer(report),
            "",
        ]
    )


def heatmap(report: dict, path: str) -> str:
    """DiffSim-S accuracy over block × λ, one panel per family (50% = chance is white)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid, blocks = report["diffsim_s_grid"], report["diffsim"]["blocks"]
    lams = [f"{lam:g}" for lam in report["diffsim"]["logsnrs"]]
    cols, rows = 3, -(-len(FAMILIES) // 3)
    fig = Figure(figsize=(4.0 * cols + 1.0, (0.45 * len(blocks) + 1.1) * rows + 0.5))
    fig.set_layout_engine("constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, family in zip(axes, FAMILIES, strict=False):
        acc = np.array([[grid[family][b][lam]["accuracy"] for lam in lams] for b in blocks])
        image = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        for (r, c), value in np.ndenumerate(acc):
            ax.text(c, r, f"{100 * value:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lams)), lams, fontsize=7)
        ax.set_yticks(range(len(blocks)), [b.split("/")[-1] for b in blocks], fontsize=7)
        ax.set_title(family, fontsize=9)
        ax.set_xlabel("logSNR λ", fontsize=7)
    for ax in axes[len(FAMILIES) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes), shrink=0.7, label="2AFC accuracy")
    fig.suptitle(
        f"DiffSim-S 2AFC accuracy (%) by block × λ, {report['triplets_per_family']} triplets "
        "per family"
    )
    return atomic_files.save_figure(fig, path, dpi=110)


# --- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", required=True, help="training workdir (config.json, checkpoints/)"
    )
    parser.add_argument("--triplets", type=int, default=2000, help="triplets per family")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_TRIPLETS} triplets, λ in {QUICK_LOGSNRS}"
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--seed", type=int, default=0, help="triplets and bootstrap seed")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--chunk", type=int, default=64, help="references per scoring chunk")
    parser.add_argument(
        "--batch_size", type=int, default=256, help="most images per decoder forward"
    )
    return parser.parse_args(argv)


def build_scorers(workdir: str, logsnrs: tuple[float, ...], batch_size: int) -> tuple[Any, Scorers]:
    config = run_dir.load_config(workdir)
    dm = diffsim.from_workdir(workdir)
    blocks = tuple(diffsim.block_names(dm))
    cross = diffsim.cross_block_names(dm)
    scorers = Scorers(
        dm=dm,
        encoder=assets.load_encoder(config),
        feature_fn=features.feature_fn(assets.feature_net(config)),
        logsnrs=logsnrs,
        blocks=blocks,
        default_block=diffsim.check_settings(dm, method="s")[0],
        cross_block=diffsim.check_settings(dm, method="c")[0] if cross else None,
        batch_size=batch_size,
    )
    return config, scorers


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark; returns the report (also written under --out)."""
    args = parse_args(argv)
    start, load_at_start = time.perf_counter(), os.getloadavg()[0]
    log = lambda message: print(message, file=sys.stderr, flush=True)
    n = QUICK_TRIPLETS if args.quick else args.triplets
    logsnrs = QUICK_LOGSNRS if args.quick else LOGSNRS
    config, scorers = build_scorers(args.workdir, logsnrs, args.batch_size)
    images, labels = assets.load_split(config, config.data.eval_split)
    triplets = make_triplets(images, labels, n, args.seed)
    scorers.seconds["setup"] = time.perf_counter() - start  # models (trained if uncached), data
    split = config.data.eval_split
    log(f"{n} triplets x {len(FAMILIES)} families from {len(images)} {split} images")
    sims = score_all(scorers, triplets, args.chunk)
    command = ["python", "benchmarks/similarity_2afc.py", *(sys.argv[1:] if argv is None else argv)]
    report = {
        "benchmark": "similarity_2afc",
        "command": " ".join(command),
        "workdir": os.path.relpath(os.path.abspath(args.workdir), ROOT),
        "split": config.data.eval_split,
        "split_size": len(images),
        "quick": bool(args.quick),
        "triplets_per_family": n,
        "families": list(FAMILIES),
        "levels": {k: list(v) for k, v in LEVELS.items()},
        "seeds": {"triplets": args.seed, "bootstrap": args.seed, "diffsim_noise": 0},
        "diffsim": {
            "noise": "shared",
            "logsnrs": list(logsnrs),
            "blocks": list(scorers.blocks),
            "default_block": scorers.default_block,
            "cross_block": scorers.cross_block,
        },
        **organise(accuracies(sims, triplets.closer, args.resamples, args.seed), scorers),
    }
    pairs = 2 * len(FAMILIES) * n
    report["timing"] = timing_report(scorers, time.perf_counter() - start, pairs)
    report["machine"], report["git"] = _machine(), _git_revision()
    report["machine"]["load_average_1min_at_start"] = round(load_at_start, 2)
    os.makedirs(args.out, exist_ok=True)
    atomic_files.write_json(os.path.join(args.out, "similarity_2afc.json"), report)
    heatmap(report, os.path.join(args.out, "similarity_2afc_heatmap.png"))
    table = markdown(report)
    atomic_files.write_text(os.path.join(args.out, "similarity_2afc.md"), table)
    print(table)
    return report


if __name__ == "__main__":
    from semantica_jax.utils import xla_cpu

    xla_cpu.apply_defaults(os.environ)  # before JAX creates its backend
    main()
