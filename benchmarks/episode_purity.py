"""How label-pure a run's label-free episodes are, and how good its encoder is at labels.

  .venv/bin/python benchmarks/episode_purity.py --workdir=workdirs/mnist_unsupervised \
      --clusters=10,100,1000 --out=benchmarks/results

For the run's frozen encoder (the cached embeddings of its train split): the 1-NN label
accuracy of its CLS (cosine; the first `--queries` train images against the rest), and for
each k-means cluster count the share of training pairs that join two different digits,
before and after the run's similarity filter (`episodes.build_pairs`, the code training
uses). No decoder is trained: this says which episodes a label-free generator would learn
from. Writes OUT/episode_purity.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def nearest_neighbour_accuracy(cls: np.ndarray, labels: np.ndarray, queries: int) -> float:
    """1-NN label accuracy by CLS cosine: rows [0, queries) against rows [queries, N)."""
    from semantica_jax.utils.cosine import cosine_matrix

    gallery = cls[queries:]
    hits = 0
    for lo in range(0, queries, 1000):
        hi = min(queries, lo + 1000)
        nearest = np.argmax(cosine_matrix(cls[lo:hi], gallery), axis=1)
        hits += int(np.sum(labels[queries:][nearest] == labels[lo:hi]))
    return hits / queries


def main(argv: list[str] | None = None) -> dict:
    from semantica_jax import assets
    from semantica_jax import workdir as run_dir
    from semantica_jax.data import episodes
    from semantica_jax.utils import atomic_files

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a run whose encoder and episodes to read")
    p.add_argument("--clusters", default="10,100,1000", help="k-means cluster counts")
    p.add_argument("--queries", type=int, default=5000, help="1-NN query images")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    counts = [int(k) for k in args.clusters.split(",")]
    config = run_dir.load_config(args.workdir)
    train = assets.embedded_split(config, assets.load_encoder(config), config.data.train_split)
    cls, labels = np.asarray(train.cls), np.asarray(train.labels)
    if not 0 < args.queries < len(labels) or min(counts) < 1:
        p.exit(2, f"error: --queries must be in (0, {len(labels)}), --clusters >= 1\n")
    result = {
        "workdir": args.workdir,
        "encoder_objective": config.encoder.objective,
        "encoder_steps": config.encoder.num_steps,
        "nn_label_accuracy": nearest_neighbour_accuracy(cls, labels, args.queries),
        "queries": args.queries,
        "filter": {k: config.episodes[k] for k in ("filter", "filter_mode", "low", "high")},
        "rows": [],
    }
    print(f"1-NN label accuracy of the CLS: {result['nn_label_accuracy']:.3f}", flush=True)
    for k in counts:
        start = time.perf_counter()
        config.episodes.kind, config.episodes.num_clusters = "kmeans", k
        _, report = episodes.build_pairs(cls, labels, config.episodes, config.seed)
        row = {
            "clusters": k,
            "pairs_kept": report["num_kept"],
            "different_digit_before": report["label_mismatch_fraction_before"],
            "different_digit_after": report["label_mismatch_fraction_after"],
            "seconds": round(time.perf_counter() - start, 1),
        }
        result["rows"].append(row)
        print(row, flush=True)
    atomic_files.write_json(os.path.join(args.out, "episode_purity.json"), result)
    return result


if __name__ == "__main__":
    main()
