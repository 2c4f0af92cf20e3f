"""The one job entry of semantica_jax: train, evaluate, or train the encoder.

  python -m semantica_jax.main --config=configs/mnist.py[:variant] --workdir=DIR [--mode=...]


  --mode=train    trains (resuming from WORKDIR's latest checkpoint) and writes samples;
                  this is what `make demo` runs, and it ends with where everything is;
  --mode=eval     evaluates WORKDIR's latest checkpoint (EMA params) into WORKDIR/eval/;
  --mode=encoder  trains the frozen encoder into WORKDIR/encoder and evaluates it
                  (e.g. --config=configs/encoder_mnist.py).
Override any field with --config.<field>=<value>, e.g. --config.train.num_steps=100.
A bad flag, config or input is one `error:` line and exit code 2 (see errors.py).
"""

from __future__ import annotations

import os

from absl import logging

from semantica_jax import errors
from semantica_jax.tools import cli
from semantica_jax.utils import xla_cpu

MODES = ("train", "eval", "encoder")


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    return dict(
        config=config_flags.DEFINE_config_file(
            "config",
            None,
            "Config file, e.g. configs/mnist.py or configs/mnist.py:tiny.",
            lock_config=True,
        ),
        workdir=flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples."),
        mode=flags.DEFINE_enum("mode", "train", list(MODES), "What to run."),
    )


def closing_summary(summary: dict, workdir: str) -> str:
    """Where a finished training run put its logs, samples, checkpoints and how to evaluate."""
    return (
        "\nTraining finished at step {step}.\n"
        "  TensorBoard logs: {w}   (open with: .venv/bin/tensorboard --logdir {w})\n"
        "  sample grids:     {w}/samples/ (latest: {grid})\n"
        "  checkpoints:      {w}/checkpoints/\n"
        "  config, summary:  {w}/config.json, {w}/summary.json\n"
        "  evaluate:         .venv/bin/python -m semantica_jax.main --config=configs/mnist.py "
        "--workdir={w} --mode=eval".format(
            step=summary["final_step"], w=workdir, grid=summary.get("last_sample_grid")
        )
    )


def run(argv: list[str] | None = None) -> None:
    f = cli.start(_define_flags, ["config", "workdir"], argv, doc=__doc__, role="job")
    from semantica_jax.utils import parallel

    # One CPU device per core in a single-process eval: the sampler's batch split over them.
    if f["mode"] == "eval" and parallel.launched_processes() == 1:
        xla_cpu.apply_sampling_devices(os.environ, int(f["config"].eval.batch_size))
    # TensorFlow only feeds data and writes summaries: keep it off any accelerator.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    parallel.initialize_distributed()
    config, workdir = f["config"], os.path.abspath(f["workdir"])
    with errors.reported():
        cli.check_output_dir(workdir)
        if f["mode"] == "train":
            from semantica_jax import train

            _, summary = train.train_and_evaluate(config, workdir)
            logging.info("done at step %s; summary in %s", summary["final_step"], workdir)
            import jax

            if jax.process_index() == 0:
                print(closing_summary(summary, workdir), flush=True)
        elif f["mode"] == "eval":
            from semantica_jax import evaluate

            evaluate.evaluate(config, workdir)
        else:
            from semantica_jax import train_encoder

            train_encoder.run_encoder_job(config, workdir)


if __name__ == "__main__":
    run()
