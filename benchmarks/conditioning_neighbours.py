"""What the frozen encoder sees in chosen conditioning images: their nearest train images.

  .venv/bin/python benchmarks/conditioning_neighbours.py --workdir=workdirs/mnist_quality \
      --k=20 --out=benchmarks/results/quality

For test images of a run (by default the conditioning images of its training sample grid,
rows top to bottom, `train.sample_grid_conditioning`; or `--indices=8,18`): the labels of
their K nearest train images by CLS cosine among the run's cached embeddings, counted per
class. A conditioning image whose neighbours are mostly another digit is one the decoder
cannot vary within its class, whatever it learned. Writes OUT/conditioning_neighbours.json.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def neighbour_label_counts(
    gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray, k: int, classes: int
) -> np.ndarray:
    """int [M, classes]: per query [M, D], the labels of its k nearest gallery rows [N, D]
    (cosine), counted per class."""
    from semantica_jax.encoder.evaluate import nearest

    top, _ = nearest(gallery, queries, k)
    return np.stack([np.bincount(gallery_labels[t], minlength=classes) for t in top])


def main(argv: list[str] | None = None) -> dict:
    from semantica_jax import assets, train
    from semantica_jax import workdir as run_dir
    from semantica_jax.utils import atomic_files

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a run whose encoder and test split to read")
    p.add_argument("--indices", default="", help="test indices; '' = the sample grid's rows")
    p.add_argument("--k", type=int, default=20, help="nearest train images per query")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    config = run_dir.load_config(args.workdir)
    bundle = assets.load_encoder(config)
    gallery = assets.embedded_split(config, bundle, config.data.train_split)
    test = assets.embedded_split(config, bundle, config.data.eval_split)
    try:
        indices = (
            [int(i) for i in args.indices.split(",")]
            if args.indices
            else train.sample_grid_conditioning(test, int(config.train.num_sample_rows)).tolist()
        )
    except ValueError:
        p.exit(2, f"error: --indices={args.indices} must be comma-separated integers\n")
    if not indices or min(indices) < 0 or max(indices) >= len(test.labels):
        p.exit(2, f"error: --indices must lie in [0, {len(test.labels)}) (the test split)\n")
    if not 0 < args.k <= len(gallery.labels):
        p.exit(2, f"error: --k must be in [1, {len(gallery.labels)}] (the train split)\n")
    classes = int(max(gallery.labels.max(), test.labels.max())) + 1
    counts = neighbour_label_counts(
        np.asarray(gallery.cls), np.asarray(gallery.labels), test.cls[indices], args.k, classes
    )
    rows = []
    for index, row in zip(indices, counts, strict=True):
        label = int(test.labels[index])
        rows.append(
            {
                "test_index": index,
                "label": label,
                "neighbour_labels": row.tolist(),
                "own_class_share": float(row[label] / args.k),
                "majority": int(np.argmax(row)),
            }
        )
        print(rows[-1], flush=True)
    result = {"workdir": args.workdir, "k": args.k, "rows": rows}
    atomic_files.write_json(os.path.join(args.out, "conditioning_neighbours.json"), result)
    return result


if __name__ == "__main__":
    main()
