"""Episodes (groups of related images) and the filtered (conditioning, target) pairs.

Semantica trains on two images of one web page: one conditions, the other is the target,
and a pair is kept only if the frozen encoder finds the two neither unrelated nor near
duplicates: low < cos(cls_cond, cls_target) < high (seed 002 §5, App. C; METHODS §10).
On MNIST an episode stands in for a web page. Kinds:

- `label`:  one episode per class.
- `folder`: one episode per sub-folder of a `folder:PATH` dataset (data/folder.py stores the
  sub-folder index as the label): the paper's web pages, as the user grouped them.
- `kmeans`: one episode per k-means cluster of the L2-normalised CLS embeddings
  (unsupervised; k-means++ init then Lloyd iterations, deterministic from the seed).
- `pages`:  simulated web pages of `page_size` images, each mostly of one class plus a
  fraction `page_offtopic` of images from other classes: the noise filtering must remove.
- `self`:   conditioning = target, the paper's reconstruction baseline (Eq. 2); never
  filtered.

Everything here is numpy on the host: it runs once before training.
"""

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from semantica_jax.utils import atomic_files
from semantica_jax.utils.cosine import l2_normalize

EPISODE_KINDS = ("label", "folder", "kmeans", "pages", "self")
FILTER_MODES = ("quantile", "absolute")

# Independent random streams of one seed, so that e.g. changing pairs_per_image does not
# change which pages were simulated.
_EPISODE_STREAM = 1
_PAIR_STREAM = 2


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """Typed copy of the `episodes` config section (see configs/mnist.py)."""

    kind: str = "label"
    num_clusters: int = 10
    page_size: int = 8
    page_offtopic: float = 0.25
    pairs_per_image: int = 4
    filter: bool = True
    filter_mode: str = "quantile"
    low: float = 0.05
    high: float = 0.95

    def __post_init__(self) -> None:
        if self.kind not in EPISODE_KINDS:
            raise ValueError(
                f"episodes.kind={self.kind!r} is unknown; choose one of {', '.join(EPISODE_KINDS)}"
            )
        if self.filter_mode not in FILTER_MODES:
            raise ValueError(
                f"episodes.filter_mode={self.filter_mode!r} is unknown; choose one of "
                f"{', '.join(FILTER_MODES)}"
            )
        if self.num_clusters < 1:
            raise ValueError(f"episodes.num_clusters={self.num_clusters} must be >= 1")
        if self.page_size < 2:
            raise ValueError(f"episodes.page_size={self.page_size} must be >= 2 to give pairs")
        if not 0.0 <= self.page_offtopic < 1.0:
            raise ValueError(f"episodes.page_offtopic={self.page_offtopic} must be in [0, 1)")
        if self.pairs_per_image < 1:
            raise ValueError(f"episodes.pairs_per_image={self.pairs_per_image} must be >= 1")
        lo, hi = (0.0, 1.0) if self.filter_mode == "quantile" else (-1.0, 1.0)
        if not lo <= self.low < self.high <= hi:
            raise ValueError(
                f"episodes.low={self.low}, high={self.high} must satisfy {lo} <= low < high <= "
                f"{hi} in filter_mode={self.filter_mode!r}"
            )

    @classmethod
    def from_config(cls, cfg: "ml_collections.ConfigDict | EpisodeConfig") -> "EpisodeConfig":
        """Builds the typed config from the `episodes` section (unknown keys are an error)."""
        if isinstance(cfg, EpisodeConfig):
            return cfg
        fields = {f.name for f in dataclasses.fields(cls)}
        values = dict(cfg.items())
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown keys in the episodes config section: {unknown}")
        return cls(**values)

    @property
    def num_offtopic(self) -> int:
        """Off-topic images per simulated page."""
        return int(round(self.page_offtopic * self.page_size))


def _squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """||x_i - c_k||^2 for x [N,D], centroids [K,D] -> [N,K] (clipped at 0)."""
    d = (
        np.sum(x * x, axis=1, keepdims=True)
        - 2.0 * x @ centroids.T
        + np.sum(centroids * centroids, axis=1)[None]
    )
    return np.maximum(d, 0.0)


def kmeans_plus_plus_init(x: np.ndarray, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each new centre drawn with probability proportional to D(x)^2.

    Args:
      x: points [N,D] float.
      num_clusters: K <= N.
      rng: numpy generator (the only source of randomness).

    Returns:
      Initial centroids [K,D] (copies of K distinct-by-construction points of x).
    """
    n = x.shape[0]
    centroids = np.empty((num_clusters, x.shape[1]), dtype=x.dtype)
    centroids[0] = x[rng.integers(n)]
    closest = _squared_distances(x, centroids[:1])[:, 0]
    for k in range(1, num_clusters):
        total = closest.sum()
        # All points coincide with chosen centres: any point is as good as another.
        probs = closest / total if total > 0 else np.full(n, 1.0 / n)
        centroids[k] = x[rng.choice(n, p=probs)]
        closest = np.minimum(closest, _squared_distances(x, centroids[k : k + 1])[:, 0])
    return centroids


def kmeans(
    x: np.ndarray, num_clusters: int, seed: int, max_iters: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """k-means (k-means++ init + Lloyd iterations until the assignment stops changing).

    Args:
      x: points [N,D].
      num_clusters: K, 1 <= K <= N.
      seed: makes the result deterministic.
      max_iters: cap on Lloyd iterations.

    Returns:
      (assignments int32 [N] in [0, K), centroids float32 [K,D]). A cluster that empties
      keeps its previous centroid (and may stay empty).
    """
    x = np.asarray(x, dtype=np.float32)
    if not 1 <= num_clusters <= x.shape[0]:
        raise ValueError(f"num_clusters={num_clusters} must be in [1, {x.shape[0]}] (N points)")
    rng = np.random.default_rng((seed, _EPISODE_STREAM))
    centroids = kmeans_plus_plus_init(x, num_clusters, rng)
    assign = np.full(x.shape[0], -1, dtype=np.int32)
    for _ in range(max_iters):
        new_assign = np.argmin(_squared_distances(x, centroids), axis=1).astype(np.int32)
        if np.array_equal(new_assign, assign):
            break
        assign = new_assign
        counts = np.bincount(assign, minlength=num_clusters)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
    return assign, centroids


def simulate_pages(
    labels: np.ndarray, page_size: int, num_offtopic: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Partitions images into simulated web pages with a known share of off-topic images.

    Each page has a topic class; `page_size - num_offtopic` of its images are of that class
    and `num_offtopic` are of other classes. Every image is on at most one page; the few
    left over (per class, fewer than page_size) are on none.

    Args:
      labels: int [N] classes.
      page_size: images per page (>= 2).
      num_offtopic: off-topic images per page, 0 <= num_offtopic < page_size.
      seed: makes the pages deterministic.

    Returns:
      (pages int64 [num_pages, page_size] image indices,
       offtopic bool [num_pages, page_size] True where the image is not of the page topic).
    """
    labels = np.asarray(labels)
    if not 0 <= num_offtopic < page_size:
        raise ValueError(f"num_offtopic={num_offtopic} must be in [0, page_size={page_size})")
    rng = np.random.default_rng((seed, _EPISODE_STREAM))
    num_on = page_size - num_offtopic
    classes = np.unique(labels)
    if num_offtopic > 0 and classes.size < 2:
        raise ValueError("pages with off-topic images need at least two classes in `labels`")
    on_parts, topics, pool = [], [], []
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        # A class fills as many pages as it has page_size images; the images its pages
        # do not use on-topic become off-topic material for other classes' pages.
        num_pages_c = members.size // page_size
        on_parts.append(members[: num_pages_c * num_on].reshape(num_pages_c, num_on))
        topics.append(np.full(num_pages_c, c))
        pool.append(members[num_pages_c * num_on :])
    on_topic = np.concatenate(on_parts)
    page_topic = np.concatenate(topics)
    num_pages = page_topic.size
    if num_pages == 0:
        raise ValueError(
            f"no class has page_size={page_size} images: lower episodes.page_size or use more data"
        )
    if num_offtopic == 0:
        pages, offtopic = on_topic, np.zeros(on_topic.shape, dtype=bool)
    else:
        slot_topic = np.repeat(page_topic, num_offtopic)
        pool_all = rng.permutation(np.concatenate(pool))[: slot_topic.size]
        fill = _assign_offtopic(pool_all, labels[pool_all], slot_topic, rng)
        pages = np.concatenate([on_topic, fill.reshape(num_pages, num_offtopic)], axis=1)
        offtopic = np.zeros(pages.shape, dtype=bool)
        offtopic[:, num_on:] = True
    # Shuffle the page order and the positions within a page: nothing downstream should
    # be able to tell off-topic images by where they sit.
    order = rng.permutation(num_pages)
    within = np.argsort(rng.random(pages.shape), axis=1)
    pages = np.take_along_axis(pages[order], within, axis=1)
    offtopic = np.take_along_axis(offtopic[order], within, axis=1)
    return pages, offtopic


def _assign_offtopic(
    pool: np.ndarray, pool_labels: np.ndarray, slot_topic: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Orders `pool` so that pool[i] is not of class slot_topic[i] (random repair swaps).

    Args:
      pool: image indices [S] (already shuffled).
      pool_labels: their classes [S].
      slot_topic: topic of the page each slot belongs to [S].
      rng: numpy generator.

    Returns:
      The reordered pool [S].
    """
    pool, pool_labels = pool.copy(), pool_labels.copy()
    if pool.size < slot_topic.size:
        raise ValueError("not enough images left over to fill the off-topic slots")
    for _ in range(100):
        bad = np.flatnonzero(pool_labels == slot_topic)
        if bad.size == 0:
            return pool
        for i in bad:
            if pool_labels[i] != slot_topic[i]:
                continue  # fixed by an earlier swap in this sweep
            # Swap with a slot j whose image fits slot i and which accepts image i.
            ok = np.flatnonzero((pool_labels != slot_topic[i]) & (slot_topic != pool_labels[i]))
            if ok.size:
                j = ok[rng.integers(ok.size)]
                pool[[i, j]] = pool[[j, i]]
                pool_labels[[i, j]] = pool_labels[[j, i]]
    raise ValueError(
        "could not give every page off-topic images of another class: one class dominates "
        "the data; lower episodes.page_offtopic"
    )


def build_episodes(
    kind: str, cls: np.ndarray, labels: np.ndarray, cfg: Any, seed: int
) -> list[np.ndarray]:
    """Groups image indices into episodes.

    Args:
      kind: label | folder | kmeans | pages | self.
      cls: CLS embeddings [N,D] (used by kmeans).
      labels: int [N] (used by label and pages).
      cfg: the `episodes` config section (or an EpisodeConfig).
      seed: makes kmeans and pages deterministic.

    Returns:
      A list of int64 index arrays, one per episode (non-empty; singletons possible).
    """
    cfg = dataclasses.replace(EpisodeConfig.from_config(cfg), kind=kind)
    cls, labels = np.asarray(cls), np.asarray(labels)
    n = labels.shape[0]
    if cls.ndim != 2 or cls.shape[0] != n:
        raise ValueError(f"cls must be [N,D] with N = len(labels) = {n}; got {cls.shape}")
    if kind == "self":
        return [np.array([i]) for i in range(n)]
    if kind in ("label", "folder"):  # a folder dataset's label is its sub-folder
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    elif kind == "kmeans":
        assign, _ = kmeans(
            l2_normalize(np.asarray(cls, np.float32)), min(cfg.num_clusters, n), seed
        )
        groups = [np.flatnonzero(assign == k) for k in range(cfg.num_clusters)]
    else:  # pages
        pages, _ = simulate_pages(labels, cfg.page_size, cfg.num_offtopic, seed)
        groups = list(pages)
    return [g.astype(np.int64) for g in groups if g.size > 0]


def sample_pairs(
    episodes: list[np.ndarray], pairs_per_image: int, seed: int
) -> tuple[np.ndarray, int]:
    """For every image of an episode of size n >= 2, draws min(pairs_per_image, n - 1)
    distinct conditioning images from the same episode, never the target itself.

    Args:
      episodes: index arrays, one per episode.
      pairs_per_image: k.
      seed: makes the pairs deterministic.

    Returns:
      (pairs int32 [P,2] as (cond_index, target_index), number of size-1 episodes dropped).
    """
    sizes = np.array([e.size for e in episodes], dtype=np.int64)
    keep = sizes >= 2
    num_singletons = int(np.sum(sizes == 1))
    if not keep.any():
        return np.zeros((0, 2), np.int32), num_singletons
    members = np.concatenate([e for e, k in zip(episodes, keep, strict=True) if k])
    sizes = sizes[keep]
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)  # episode start of each member
    size_of = np.repeat(sizes, sizes)
    pos = np.arange(members.size) - starts  # position of each member within its episode
    rng = np.random.default_rng((seed, _PAIR_STREAM))
    offsets, valid = _distinct_offsets(size_of, pairs_per_image, rng)
    cond_pos = (pos[:, None] + offsets) % size_of[:, None]
    cond = members[starts[:, None] + cond_pos]
    target = np.broadcast_to(members[:, None], cond.shape)
    pairs = np.stack([cond[valid], target[valid]], axis=1).astype(np.int32)
    return pairs, num_singletons


def _distinct_offsets(
    n: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, min(k, n-1) distinct offsets uniformly from {1..n-1} (without replacement).

    Offsets from a target's position (mod n) give distinct partners that are never the
    target. Vectorised over rows: draw the j-th pick from the n-1-j values still free,
    then map it past the earlier picks (taken in ascending order).

    Args:
      n: episode size of each row [M] (>= 2).
      k: offsets wanted per row.
      rng: numpy generator.

    Returns:
      (offsets int64 [M,k] in [1, n-1], valid bool [M,k]: False past n-1 picks).
    """
    m = n.shape[0]
    picks = np.zeros((m, k), dtype=np.int64)
    valid = np.arange(k)[None, :] < np.minimum(k, n - 1)[:, None]
    for j in range(k):
        span = np.maximum(n - 1 - j, 1)
        v = np.floor(rng.random(m) * span).astype(np.int64)
        earlier = np.sort(np.where(valid[:, :j], picks[:, :j], np.iinfo(np.int64).max), axis=1)
        for i in range(j):
            v += v >= earlier[:, i]
        picks[:, j] = v
    return picks + 1, valid


def pair_similarity(cls: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Cosine similarity of the CLS embeddings of each pair: [P] float32.

    Args:
      cls: CLS embeddings [N,D].
      pairs: int [P,2] (cond_index, target_index).
      chunk: pairs per block, to bound the temporary [chunk,D] arrays.
    """
    unit = l2_normalize(np.asarray(cls, np.float32))
    sims = np.empty(pairs.shape[0], dtype=np.float32)
    for s in range(0, pairs.shape[0], chunk):
        p = pairs[s : s + chunk]
        sims[s : s + chunk] = np.sum(unit[p[:, 0]] * unit[p[:, 1]], axis=1)
    return sims


def resolve_thresholds(sims: np.ndarray, low: float, high: float, mode: str) -> tuple[float, float]:
    """Thresholds in cosine units: as given (absolute) or the low/high quantiles of `sims`."""
    if mode == "absolute":
        return float(low), float(high)
    if mode == "quantile":
        if sims.size == 0:
            raise ValueError("quantile thresholds need at least one candidate pair")
        q_low, q_high = np.quantile(sims.astype(np.float64), [low, high])
        return float(q_low), float(q_high)
    raise ValueError(f"filter_mode={mode!r} is unknown; choose one of {', '.join(FILTER_MODES)}")


def filter_pairs(sims: np.ndarray, low: float, high: float) -> np.ndarray:
    """Mask of the pairs to keep: low < sims < high, both strict (cosine units) -> bool [P]."""
    return (sims > low) & (sims < high)


def candidate_pairs(
    cls: np.ndarray, labels: np.ndarray, cfg_episodes: Any, seed: int
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """All (cond, target) pairs before filtering, deterministic from the seed.

    Args:
      cls: CLS embeddings [N,D].
      labels: int [N].
      cfg_episodes: the `episodes` config section (or an EpisodeConfig).
      seed: the config seed.

    Returns:
      (pairs int32 [P0,2], offtopic bool [P0] for pages (pair holds an image off its
       page's topic) else None, episode statistics dict).
    """
    cfg = EpisodeConfig.from_config(cfg_episodes)
    labels = np.asarray(labels)
    n = labels.shape[0]
    offtopic = None
    if cfg.kind == "self":
        pairs = np.stack([np.arange(n), np.arange(n)], axis=1).astype(np.int32)
        stats = {"num_episodes": n, "num_singleton_episodes_dropped": 0, "images_in_episodes": n}
        return pairs, None, stats
    if cfg.kind == "pages":
        # The pages are needed with their off-topic flags, so build them here directly.
        pages, page_off = simulate_pages(labels, cfg.page_size, cfg.num_offtopic, seed)
        episodes = list(pages)
        is_off = np.zeros(n, dtype=bool)
        is_off[pages[page_off]] = True
    else:
        episodes = build_episodes(cfg.kind, cls, labels, cfg, seed)
    pairs, num_singletons = sample_pairs(episodes, cfg.pairs_per_image, seed)
    if cfg.kind == "pages":
        offtopic = is_off[pairs[:, 0]] | is_off[pairs[:, 1]]
    sizes = np.array([e.size for e in episodes])
    majority = [np.bincount(labels[e] - labels.min()).max() for e in episodes]
    stats = {
        "num_episodes": len(episodes),
        "num_singleton_episodes_dropped": num_singletons,
        "images_in_episodes": int(sizes.sum()),
        "episode_size_min": int(sizes.min()),
        "episode_size_mean": float(sizes.mean()),
        "episode_size_max": int(sizes.max()),
        # Share of images that carry their episode's majority label: 1.0 for `label`,
        # how well k-means recovers the classes, 1 - page_offtopic for pages.
        "episode_label_purity": float(np.sum(majority) / sizes.sum()),
    }
    return pairs, offtopic, stats


def build_pairs(
    cls: np.ndarray, labels: np.ndarray, cfg_episodes: Any, seed: int
) -> tuple[np.ndarray, dict]:
    """Episode pairs kept by the CLS-cosine filter, and a report of what was dropped.

    The histogram of all candidates: `save_similarity_report(report["similarities"],
    report["low_cosine"], report["high_cosine"], report, png_path, json_path)`.

    Args:
      cls: CLS embeddings [N,D] of the frozen encoder.
      labels: int [N] (label episodes, simulated pages, and the report's label statistics).
      cfg_episodes: the `episodes` config section (or an EpisodeConfig).
      seed: the config seed.

    Returns:
      (pairs int32 [P,2] as (cond_index, target_index), report dict of plain Python values:
       counts kept / dropped below low / above high, thresholds in cosine units
       (`low_cosine`, `high_cosine`; None when not filtering), label-mismatch fractions
       before/after, for pages the off-topic pair fractions before/after, and
       `similarities` float32 [P0]: the cosine of every candidate pair (a numpy array,
       the one entry that is not a plain Python value)).
    """
    cfg = EpisodeConfig.from_config(cfg_episodes)
    cls, labels = np.asarray(cls), np.asarray(labels)
    if labels.ndim != 1 or cls.ndim != 2 or cls.shape[0] != labels.shape[0]:
        raise ValueError(f"need cls [N,D] and labels [N]; got {cls.shape} and {labels.shape}")
    pairs, offtopic, stats = candidate_pairs(cls, labels, cfg, seed)
    sims = pair_similarity(cls, pairs)
    filtering = cfg.filter and cfg.kind != "self"  # the reconstruction baseline: all pairs
    if filtering:
        low, high = resolve_thresholds(sims, cfg.low, cfg.high, cfg.filter_mode)
        keep = filter_pairs(sims, low, high)
    else:
        low, high = None, None
        keep = np.ones(pairs.shape[0], dtype=bool)
    mismatch = labels[pairs[:, 0]] != labels[pairs[:, 1]]
    report = {
        "kind": cfg.kind,
        "num_images": int(labels.shape[0]),
        **stats,
        "num_candidate_pairs": int(pairs.shape[0]),
        "filter": filtering,
        "filter_mode": cfg.filter_mode,
        "low_param": cfg.low,
        "high_param": cfg.high,
        "low_cosine": low,
        "high_cosine": high,
        "num_kept": int(keep.sum()),
        "num_dropped_low": int(np.sum(sims <= low)) if filtering else 0,
        "num_dropped_high": int(np.sum(sims >= high)) if filtering else 0,
        "kept_fraction": _fraction(keep),
        "similarity_mean_before": _mean(sims),
        "similarity_mean_after": _mean(sims[keep]),
        "label_mismatch_fraction_before": _fraction(mismatch),
        "label_mismatch_fraction_after": _fraction(mismatch[keep]),
    }
    if offtopic is not None:
        report["offtopic_pair_fraction_before"] = _fraction(offtopic)
        report["offtopic_pair_fraction_after"] = _fraction(offtopic[keep])
    # Not JSON: kept for the histogram (save_similarity_report writes its counts instead).
    report["similarities"] = sims
    if report["num_kept"] == 0:
        raise ValueError(
            f"no pair survived filtering ({low} < cos < {high}, mode {cfg.filter_mode}): widen "
            "episodes.low/high or set episodes.filter=False"
        )
    return pairs[keep], report


def _fraction(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if mask.size else None


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x, dtype=np.float64)) if x.size else None


def save_similarity_report(
    sims: np.ndarray,
    low: float | None,
    high: float | None,
    report: dict,
    png_path: str,
    json_path: str,
    bins: int = 100,
) -> None:
    """Writes the histogram of pair similarities (thresholds drawn) and the numbers as JSON.

    Both files are written to a temporary name in their directory and then renamed, so a
    reader never sees a partial file.

    Args:
      sims: cosine similarities of all candidate pairs [P0].
      low, high: thresholds in cosine units (None: not drawn).
      report: the dict from `build_pairs`; its plain values are written, numpy arrays
        (the similarities) are replaced by the histogram counts.
      png_path: destination of the histogram (PNG).
      json_path: destination of the numbers (JSON).
      bins: histogram bins over [-1, 1].
    """
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sims = np.asarray(sims, dtype=np.float64)
    counts, edges = np.histogram(np.clip(sims, -1.0, 1.0), bins=bins, range=(-1.0, 1.0))
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, alpha=0.7, label=f"{sims.size} candidate pairs")
    for value, name, color in ((low, "low", "tab:red"), (high, "high", "tab:orange")):
        if value is not None:
            ax.axvline(value, color=color, linestyle="--", label=f"{name} = {value:.3f}")
    kept = report.get("num_kept")
    ax.set_title(f"CLS cosine of episode pairs ({report.get('kind', '?')}; kept {kept})")
    ax.set_xlabel("cos(cls_cond, cls_target)")
    ax.set_ylabel("pairs")
    ax.legend(loc="upper left")
    fig.tight_layout()
    atomic_files.save_figure(fig, png_path, format="png")

    numbers = {
        **{k: v for k, v in report.items() if not isinstance(v, np.ndarray)},
        "low_cosine": low,
        "high_cosine": high,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }
    atomic_files.write_json(json_path, numbers, sort_keys=True)
