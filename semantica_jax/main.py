"""Entry point: `python -m semantica_jax.main --config=configs/mnist.py[:variant] --workdir=DIR`.

  --mode=train  trains (resuming from WORKDIR's latest checkpoint) and writes samples;
  --mode=eval   evaluates WORKDIR's latest checkpoint (EMA params) into WORKDIR/eval/.
Override any field with --config.<field>=<value>, e.g. --config.train.num_steps=100.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from semantica_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/mnist.py or configs/mnist.py:tiny.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.quiet_library_logs()
    # TensorFlow only feeds data and writes summaries: keep it off any accelerator.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")

    from semantica_jax import parallel

    parallel.initialize_distributed()
    config, workdir = _CONFIG.value, _WORKDIR.value
    try:
        if _MODE.value == "train":
            from semantica_jax import train

            _, summary = train.train_and_evaluate(config, workdir)
            logging.info("done at step %s; summary in %s", summary["final_step"], workdir)
        else:
            from semantica_jax import evaluate

            evaluate.evaluate(config, workdir)
    except (ValueError, FileNotFoundError) as e:
        # Bad configs and missing inputs: one clear line, no traceback.
        cli.fail(str(e))
    except RuntimeError as e:
        if type(e).__name__ != "NonFiniteError":
            raise
        cli.fail(str(e), code=1)


def run() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, flags_parser=cli.parse_flags_or_exit)


if __name__ == "__main__":
    run()
