"""Batches/s of the input pipeline alone, on MNIST-sized synthetic arrays.

Shapes follow the default config (configs/mnist.py): N train images H x W x C uint8,
encoder tokens [N, (H/patch)^2, width] as a float16 memmap in a temp dir (as the
embedding cache stores them), CLS [N, width], label episodes, global batch
`train.batch_size`. Three figures:
  - sync:     prefetch=0, the cost of building one batch on the consumer's thread;
  - prefetch: the default prefetch depth, a consumer that does nothing else;
  - overlap:  a consumer that "trains" for --step_ms per batch; the time it waits in
              next() shows whether the train step ever waits for data.

Run:  python benchmarks/pipeline_throughput.py --out=benchmarks/results
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import tqdm

# Run as a script from the repo root: make the `configs` package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.mnist import get_config  # noqa: E402
from semantica_jax.data import episodes, pipeline  # noqa: E402
from semantica_jax.utils import atomic_files  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Command-line flags; defaults come from the default MNIST config."""
    config = get_config()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="", help="directory for pipeline_throughput.json")
    p.add_argument("--num_images", type=int, default=60000, help="N (MNIST train: 60000)")
    p.add_argument("--batch_size", type=int, default=config.train.batch_size)
    p.add_argument("--prefetch", type=int, default=config.data.prefetch)
    p.add_argument("--num_batches", type=int, default=2000, help="batches timed per figure")
    p.add_argument("--step_ms", type=float, default=20.0, help="simulated train step (overlap)")
    p.add_argument("--seed", type=int, default=config.seed)
    p.add_argument(
        "--num_tokens",
        type=int,
        default=(config.data.image_size // config.encoder.patch_size) ** 2,
        help="T of the cached tokens (default: patch tokens only; CLS is stored apart)",
    )
    return p.parse_args()


def make_arrays(n: int, num_tokens: int, tmp_dir: str, seed: int) -> tuple:
    """Synthetic images uint8 [N,H,W,C], tokens float16 memmap [N,T,D], cls, labels."""
    config = get_config()
    size, channels = config.data.image_size, config.data.channels
    width = config.encoder.width
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int32)
    # Clustered CLS (a centre per class) so the similarity filter sees a realistic spread.
    centres = rng.standard_normal((10, width), dtype=np.float32)
    cls = centres[labels] + rng.standard_normal((n, width), dtype=np.float32)
    path = os.path.join(tmp_dir, "tokens.npy")
    tokens = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float16, shape=(n, num_tokens, width)
    )
    for s in range(0, n, 4096):  # chunked: bounded memory while writing
        chunk = rng.standard_normal((min(4096, n - s), num_tokens, width), dtype=np.float32)
        tokens[s : s + 4096] = chunk
    tokens.flush()
    del tokens
    return images, np.load(path, mmap_mode="r"), cls, labels


def time_batches(it: pipeline.Pipeline, num_batches: int, step_s: float, label: str) -> dict:
    """Takes num_batches from `it`, sleeping step_s after each, with a tqdm progress bar."""
    next(it)  # start-up (thread start, first permutation) is not steady state
    waited = 0.0
    start = time.perf_counter()
    for _ in tqdm.trange(num_batches, desc=f"  {label}", unit="batch"):
        t0 = time.perf_counter()
        next(it)
        waited += time.perf_counter() - t0
        if step_s:
            time.sleep(step_s)
    elapsed = time.perf_counter() - start
    return {
        "batches_per_s": num_batches / elapsed,
        "images_per_s": num_batches * it.batch_size / elapsed,
        "mean_wait_in_next_ms": 1e3 * waited / num_batches,
    }


def main() -> None:
    args = parse_args()
    config = get_config()
    with tempfile.TemporaryDirectory(prefix="pipeline_bench_") as tmp_dir:
        t0 = time.perf_counter()
        images, tokens, cls, labels = make_arrays(
            args.num_images, args.num_tokens, tmp_dir, args.seed
        )
        print(f"synthetic arrays in {time.perf_counter() - t0:.1f}s: tokens {tokens.shape} f16")
        t0 = time.perf_counter()
        pairs, report = episodes.build_pairs(cls, labels, config.episodes, args.seed)
        build_s = time.perf_counter() - t0
        print(f"build_pairs ({config.episodes.kind}): {len(pairs)} pairs in {build_s:.2f}s")

        def make(prefetch: int) -> pipeline.Pipeline:
            arrays = (images, tokens, cls, labels, pairs)
            return pipeline.Pipeline(*arrays, batch_size=args.batch_size, seed=0, prefetch=prefetch)

        results = {}
        for name, prefetch, step_s in (
            ("sync", 0, 0.0),
            ("prefetch", args.prefetch, 0.0),
            ("overlap", args.prefetch, args.step_ms / 1e3),
        ):
            # The overlap run is capped: its length is set by the simulated step.
            n = args.num_batches if not step_s else min(args.num_batches, int(10.0 / step_s))
            with make(prefetch) as it:
                results[name] = time_batches(it, n, step_s, name)

    out = {
        "benchmark": "pipeline_throughput",
        "num_images": args.num_images,
        "tokens_shape": list(tokens.shape[1:]),
        "tokens_dtype": "float16 memmap (page-cached)",
        "batch_size": args.batch_size,
        "prefetch": args.prefetch,
        "num_pairs": int(len(pairs)),
        "build_pairs_s": build_s,
        "simulated_step_ms": args.step_ms,
        "cpu_count": os.cpu_count(),
        **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()},
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        path = atomic_files.write_text(
            os.path.join(args.out, "pipeline_throughput.json"), text + "\n"
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
