"""Entry point: `python -m semantica_jax.main --config=configs/mnist.py[:variant] --workdir=DIR`.

  --mode=train  trains (resuming from WORKDIR's latest checkpoint) and writes samples;
  --mode=eval   evaluates WORKDIR's latest checkpoint (EMA params) into WORKDIR/eval/.
Override any field with --config.<field>=<value>, e.g. --config.train.num_steps=100.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/mnist.py or configs/mnist.py:tiny.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def quiet_library_logs() -> None:
    """Keeps INFO lines of our code and clu (progress, ETA); libraries speak from WARNING up."""

    def keep(record) -> bool:
        own = "semantica_jax" in record.pathname or "/clu/" in record.pathname
        return own or record.levelno >= 30  # Python's WARNING (absl's constants differ)

    logging.get_absl_handler().addFilter(keep)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    # TensorFlow only feeds data and writes summaries: keep it off any accelerator.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None

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
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, but a bad flag or override is one line naming it, and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        reason = str(e).strip().splitlines()[-1]
        if isinstance(e, AttributeError | KeyError):
            reason = reason.strip("\"'")
        culprit = next((a for a in argv[1:] if reason and reason in a), None)
        if culprit and culprit.startswith("--config."):
            field = culprit.split("=", 1)[0][len("--config.") :]
            print(f"error: bad override {culprit}: no config field {field!r}", file=sys.stderr)
        else:
            print(f"error: {reason}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
