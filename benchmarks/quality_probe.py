"""A quick quality figure for comparing training runs: FID / P / R and class consistency.

For each workdir, its latest (or `--step`) checkpoint's EMA model runs `main --mode=eval`'s
full-set protocol (`evaluate.protocol`, K = N) on N balanced test images with the run's
own sampler and guidance: one variation of each image, MNIST FID / precision / recall
against those N images, plus the share of samples the feature classifier puts in the
conditioning image's class (overall, per class and the worst class). It is the eval's
guidance-sweep point at a small N (~30 s at N = 300 on 2 CPU cores), used to choose the
default config; at N = 300 the real-data FID floor is ~24 and class consistency has a
standard error of ~0.03.

Run:  python benchmarks/quality_probe.py WORKDIR [WORKDIR ...] [--num_images=300]
          [--step=1000] [--out=benchmarks/results/quality_probe.json]
"""

import argparse
import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semantica_jax import assets, evaluate  # noqa: E402
from semantica_jax import workdir as run_dir  # noqa: E402
from semantica_jax.metrics import features, fewshot, variation  # noqa: E402
from semantica_jax.utils import atomic_files, image_io, parallel  # noqa: E402


def probe(workdir: str, num_images: int, step: int | None) -> dict:
    """Quality figures of one run's checkpoint (see the module docstring)."""
    config = run_dir.load_config(workdir)
    with config.unlocked():
        config.eval.batch_size = min(num_images, 300)
    params, step = run_dir.restore_ema_params(workdir, step=step)
    bundle = assets.load_encoder(config)
    test = assets.embedded_split(config, bundle, config.data.eval_split)
    feat_bundle = assets.feature_net(config)
    feature_fn = features.feature_fn(feat_bundle)
    subset = evaluate.balanced_subset(test.labels, num_images, config.seed + 1, "num_images")
    labels = test.labels[subset]
    real_feats = fewshot.compute_features(feature_fn, image_io.to_model_range(test.images[subset]))
    gen = evaluate.Generator(config, params, test, parallel.make_mesh(config.mesh.fsdp))
    guidance = float(config.sampler.guidance)
    m, _, samples, _ = evaluate.protocol(
        gen,
        real_feats,
        subset,
        labels,
        num_images,
        guidance,
        jax.random.PRNGKey(config.seed + 1),
        feature_fn,
        config.seed,
        int(config.eval.pr_k),
    )
    m.update(workdir=workdir, step=int(step))
    m.update(variation.class_consistency(features.classify(feat_bundle, samples), labels))
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdirs", nargs="+", help="training workdirs (semantica_jax.main)")
    p.add_argument("--num_images", type=int, default=300, help="N, a multiple of 10")
    p.add_argument("--step", type=int, default=None, help="checkpoint step; default latest")
    p.add_argument("--out", default="", help="JSON file for the list of results")
    args = p.parse_args()
    results = []
    for workdir in args.workdirs:
        results.append(probe(workdir, args.num_images, args.step))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        atomic_files.write_text(args.out, json.dumps(results, indent=2))


if __name__ == "__main__":
    from semantica_jax.utils import xla_cpu

    xla_cpu.apply_defaults(os.environ)  # before JAX creates its backend
    main()
