"""Class consistency of the variations the augmentation benchmark kept.

  .venv/bin/python benchmarks/augmentation_consistency.py --out=benchmarks/results

For every variation set under OUT/augmentation/*/augmented.npz: the share of kept variations
whose nearest MNIST train image (1-NN in pixel space over all 60,000, about 97% accurate on
real MNIST test digits) has the label of the variation's source. Near 10% means the
variations are a random digit; near 97% that they keep the class. Writes
OUT/augmentation_consistency.json, keeping the entries of sets no longer on disk (measured
by an earlier call; a set measured again replaces its entry).

  .venv/bin/python benchmarks/augmentation_consistency.py --out=benchmarks/results \
      --sets_dir=/tmp/aug_s3/augmentation     # sets a split run (--first_subset) wrote
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def nearest_labels(queries: np.ndarray, train_x: np.ndarray, train_y: np.ndarray) -> np.ndarray:
    """1-NN labels in pixel space: queries uint8 [Q,H,W,C], train uint8 [N,H,W,C] -> [Q]."""
    train = train_x.reshape(len(train_x), -1).astype(np.float32) / 255.0
    norms = (train**2).sum(1)
    out = []
    for i in range(0, len(queries), 500):
        q = queries[i : i + 500].reshape(-1, train.shape[1]).astype(np.float32) / 255.0
        out.append(train_y[((q**2).sum(1)[:, None] - 2 * q @ train.T + norms).argmin(1)])
    return np.concatenate(out) if out else np.zeros((0,), train_y.dtype)


def measure_sets(sets_dir: str, train_x, train_y, previous: dict | None = None) -> dict:
    """{set name: kept variations, class consistency} for every set under `sets_dir`, on
    top of `previous` (whose entries stay unless a set of that name is measured again)."""
    result = dict(previous or {})
    for path in sorted(glob.glob(os.path.join(sets_dir, "*", "augmented.npz"))):
        data = np.load(path)
        keep = data["is_variation"]
        pred = nearest_labels(data["images"][keep], train_x, train_y)
        name = os.path.basename(os.path.dirname(path))
        result[name] = {
            "kept_variations": int(keep.sum()),
            "class_consistency": float((pred == data["labels"][keep]).mean()),
        }
        print(f"{name}: {result[name]['class_consistency']:.3f} of {int(keep.sum())}")
    return dict(sorted(result.items()))


def main(argv=None) -> dict:
    from configs import mnist
    from semantica_jax import assets
    from semantica_jax.utils import atomic_files

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--sets_dir", default="", help="variation sets (default: OUT/augmentation)")
    args = p.parse_args(argv)
    json_path = os.path.join(args.out, "augmentation_consistency.json")
    previous = {}
    if os.path.isfile(json_path):
        with open(json_path) as f:
            previous = json.load(f)
    train_x, train_y = assets.load_split(mnist.get_config("default"), "train")
    sets_dir = args.sets_dir or os.path.join(args.out, "augmentation")
    result = measure_sets(sets_dir, train_x, train_y, previous)
    atomic_files.write_json(json_path, result)
    return result


if __name__ == "__main__":
    main()
