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

`--case=large` measures data that does not fit in memory instead: a synthetic TFDS set of
--large_images (200,000) images 64x64x3 (smooth random colour fields, 10 classes) goes
through the real path of `data.stream_above_mb` (image store shards, encoder trained on a
subset, sharded embedding cache, pair pipeline over row arrays, the real train step). Each
phase runs in a child process whose peak RSS (ru_maxrss) is reported:
  - embed: stream the split to disk, train the tiny encoder, embed the split;
  - feed:  reopen it all, pipeline batches/s (sync and prefetched), then --large_steps
           steps of the tiny config's train step fed by that pipeline;
  - in_memory_embed (the control, --no-large_control skips it): the embed phase with the
           split read into memory (stream_above_mb=-1), to show what streaming saves.

Run:  python benchmarks/pipeline_throughput.py --case=large --out=benchmarks/results
      (--work_dir=DIR keeps the synthetic TFDS set and caches for a rerun)
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
    p.add_argument("--case", choices=("mnist", "large"), default="mnist")
    p.add_argument("--large_images", type=int, default=200_000, help="large: train images")
    p.add_argument("--large_size", type=int, default=64, help="large: image side")
    p.add_argument("--large_steps", type=int, default=30, help="large: train steps timed")
    p.add_argument("--large_batches", type=int, default=300, help="large: pipeline batches")
    p.add_argument("--work_dir", default="", help="large: keep data and caches here")
    p.add_argument(
        "--large_control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="large: also embed with the split in memory (the RSS it would take)",
    )
    p.add_argument(
        "--stream_above_mb",
        type=float,
        default=config.data.stream_above_mb,
        help="large: data.stream_above_mb (0 streams a small smoke-test set too)",
    )
    p.add_argument("--phase", choices=("embed", "feed"), default="", help=argparse.SUPPRESS)
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


# --- the large case: 200k 64x64x3 images through the on-disk path ----------------------------

_LARGE_NAME = "synthetic_large"


def make_large_tfds(data_dir: str, num: int, size: int) -> None:
    """Writes TFDS `synthetic_large` (train: num images, test: 2,000) if not there yet.

    Image i is a smooth colour field (8x8x3 random values from seed i, resized to size x
    size), label i % 10. Built from tf.data, so the writer never holds the set in memory.
    """
    from semantica_jax.data import tfds_images

    tf = tfds_images.import_tf()
    tfds = tfds_images.import_tfds()
    if os.path.isdir(os.path.join(data_dir, _LARGE_NAME)):
        return

    def example(i):
        low = tf.random.stateless_uniform([8, 8, 3], seed=tf.stack([i, 7]), maxval=255.0)
        image = tf.cast(tf.image.resize(low, [size, size], method="bilinear"), tf.uint8)
        return {"image": tf.io.encode_png(image), "label": i % 10}

    def split(n, offset):
        ds = tf.data.Dataset.range(offset, offset + n)
        return ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    tfds.dataset_builders.store_as_tfds_dataset(
        name=_LARGE_NAME,
        version="1.0.0",
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(size, size, 3)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }
        ),
        split_datasets={"train": split(num, 0), "test": split(2000, num)},
        data_dir=data_dir,
        description="synthetic smooth colour fields for the pipeline benchmark",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        disable_shuffling=True,
    )


def large_config(args: argparse.Namespace, work_dir: str):
    """The tiny config on `synthetic_large` at --large_size, everything under work_dir."""
    config = get_config("tiny")
    config.cache_dir = os.path.join(work_dir, "cache")
    config.data.update(
        dataset=_LARGE_NAME,
        data_dir=os.path.join(work_dir, "tfds"),
        image_size=args.large_size,
        channels=3,
        max_examples=0,
        stream_above_mb=args.stream_above_mb,
    )
    config.encoder.max_train_images = 20_000
    config.encoder.patch_size = 8
    config.train.update(
        num_steps=args.large_steps,
        checkpoint_every=args.large_steps,
        eval_every=0,
        log_every=max(1, args.large_steps // 3),
    )
    return config


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(args: argparse.Namespace) -> dict:
    """One phase of the large case, in this (child) process; returns its figures."""
    from semantica_jax import assets, train

    config = large_config(args, args.work_dir)
    out: dict = {"phase": args.phase}
    if args.phase == "embed":
        t0 = time.perf_counter()
        images, _ = assets.load_split(config, "train")
        out["store_s"] = time.perf_counter() - t0
        out["stored_images"] = len(images)
        out["stored_gib"] = images.nbytes / 2**30
        t0 = time.perf_counter()
        bundle = assets.load_encoder(config)
        out["encoder_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = assets.embedded_split(config, bundle, "train")
        out["embed_s"] = time.perf_counter() - t0
        out["embed_images_per_s"] = len(data.labels) / out["embed_s"]
        out["tokens_gib"] = data.tokens.nbytes / 2**30
        out["tokens_type"] = type(data.tokens).__name__
    else:
        bundle = assets.load_encoder(config)
        data = assets.embedded_split(config, bundle, "train")
        t0 = time.perf_counter()
        pipe, _ = pipeline.make_train_pipeline(config, data, config.train.batch_size)
        out["pairs"], out["pairs_s"] = pipe.num_pairs, time.perf_counter() - t0
        for name, prefetch in (("sync", 0), ("prefetch", config.data.prefetch)):
            pipe.close()
            pipe.prefetch = prefetch
            pipe.restore({"epoch": 0, "step": 0})
            figures = time_batches(pipe, args.large_batches, 0.0, name)
            out.update({f"{name}_{k}": v for k, v in figures.items()})
        pipe.close()
        workdir = os.path.join(args.work_dir, "run")
        if os.path.isdir(workdir):
            import shutil

            shutil.rmtree(workdir)
        _, summary = train.train_and_evaluate(config, workdir)
        out["train_steps"] = int(summary["final_step"])
        out["train_images_per_s"] = float(summary["metrics"]["images_per_sec"])
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main_large(args: argparse.Namespace) -> dict:
    """The large case: build the data, run both phases as children, collect the figures."""
    import subprocess

    keep = bool(args.work_dir)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="pipeline_large_")
    try:
        t0 = time.perf_counter()
        make_large_tfds(os.path.join(work_dir, "tfds"), args.large_images, args.large_size)
        out = {
            "benchmark": "pipeline_throughput_large",
            "num_images": args.large_images,
            "image_shape": [args.large_size, args.large_size, 3],
            "images_gib": args.large_images * args.large_size**2 * 3 / 2**30,
            "make_tfds_s": time.perf_counter() - t0,  # ~0 when --work_dir had it
            "cpu_count": os.cpu_count(),
        }
        # The control last: the same embedding with the split in memory (threshold -1); it
        # replaces the sharded embedding cache, which a rerun then builds again.
        runs = [("embed", "embed", args.stream_above_mb), ("feed", "feed", args.stream_above_mb)]
        runs += [("in_memory_embed", "embed", -1.0)] if args.large_control else []
        for name, phase, threshold in runs:
            argv = [sys.executable, os.path.abspath(__file__), "--case=large", f"--phase={phase}"]
            argv += [f"--work_dir={work_dir}", f"--large_images={args.large_images}"]
            argv += [f"--large_size={args.large_size}", f"--large_steps={args.large_steps}"]
            argv += [f"--large_batches={args.large_batches}", f"--stream_above_mb={threshold}"]
            proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name}: {result}")
            out.update({f"{name}_{k}": v for k, v in result.items() if k != "phase"})
        return out
    finally:
        if not keep:
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)


def main() -> None:
    args = parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return
    if args.case == "large":
        write_result(main_large(args), args.out, "pipeline_throughput_large.json")
        return
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
    write_result(out, args.out, "pipeline_throughput.json")


def write_result(out: dict, directory: str, name: str) -> None:
    """Prints the figures and writes them to directory/name (if a directory is given)."""
    text = json.dumps(out, indent=2)
    print(text)
    if directory:
        path = atomic_files.write_text(os.path.join(directory, name), text + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
