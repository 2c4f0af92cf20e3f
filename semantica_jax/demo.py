"""`make demo`: prepare MNIST offline, train the encoder if absent, train the default model.

  python -m semantica_jax.demo --config=configs/mnist.py --workdir=workdirs/mnist_default

Then prints where the TensorBoard logs, sample grids and checkpoints are.
"""

import os

from absl import app, flags, logging

from semantica_jax import cli
from semantica_jax import main as main_lib

_CONFIG = main_lib._CONFIG
_WORKDIR = main_lib._WORKDIR


def demo(argv) -> None:
    del argv
    cli.quiet_library_logs()
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from semantica_jax import train

    config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
    logging.info("MNIST data, encoder and embeddings are cached in %s", config.cache_dir)
    # Bad configs and missing inputs: one clear line and exit code 2, as in `main`.
    with cli.one_line_errors(ValueError, FileNotFoundError):
        _, summary = train.train_and_evaluate(config, workdir)
    print(
        "\nDemo finished at step {step}.\n"
        "  TensorBoard logs: {w}   (open with: .venv/bin/tensorboard --logdir {w})\n"
        "  sample grids:     {w}/samples/ (latest: {grid})\n"
        "  checkpoints:      {w}/checkpoints/\n"
        "  config, summary:  {w}/config.json, {w}/summary.json\n"
        "  evaluate:         .venv/bin/python -m semantica_jax.main --config=configs/mnist.py "
        "--workdir={w} --mode=eval".format(
            step=summary["final_step"], w=workdir, grid=summary.get("last_sample_grid")
        )
    )


if __name__ == "__main__":
    flags.FLAGS.set_default("mode", "train")
    app.run(demo, flags_parser=cli.parse_flags_or_exit)
