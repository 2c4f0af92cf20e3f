"""Siamese-encoder similarity of images: cosine of the frozen encoder's CLS embeddings.

Run:
  python -m semantica_jax.similarity a.png b.png                 # one number
  python -m semantica_jax.similarity a.png b.jpg c.npy           # a matrix
  python -m semantica_jax.similarity a.png b.png --config=configs/mnist.py:tiny

Inputs of any size/colour are converted to the config's image size and channels (a note on
stderr says so). An unreadable input prints one error line and exits with status 2. The
encoder is the cached one of the config (trained on first use if absent; see encoder.py).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from semantica_jax import image_io

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(_REPO_ROOT, "configs", "mnist.py")
EXIT_BAD_INPUT = 2


def format_matrix(matrix: np.ndarray, names: list[str]) -> str:
    """Text table of an [N, N] similarity matrix, rows/columns numbered, names listed below."""
    num = len(names)
    head = "      " + " ".join(f"{f'[{j}]':>7}" for j in range(num))
    rows = [
        f"{f'[{i}]':<5} " + " ".join(f"{matrix[i, j]:7.4f}" for j in range(num)) for i in range(num)
    ]
    legend = [f"[{i}] {name}" for i, name in enumerate(names)]
    return "\n".join([head, *rows, "", *legend])


def read_inputs(paths: list[str], image_size: int, channels: int) -> np.ndarray:
    """Reads all inputs (notes on stderr); raises image_io.ImageReadError on the first bad one.

    Returns:
      uint8 [N, image_size, image_size, channels].
    """
    images = []
    for path in paths:
        image, note = image_io.load_image(path, image_size, channels)
        if note:
            print(f"note: {path}: {note}", file=sys.stderr)
        images.append(image)
    return np.stack(images)


def main(argv: list[str]) -> None:
    """absl main: argv[1:] are the image paths."""
    from absl import flags

    from semantica_jax import cli, encoder

    # Keep stderr for notes and errors; Orbax logs every restore at INFO.
    cli.quiet_tool_logs("warning")
    paths = argv[1:]
    if len(paths) < 2:
        cli.fail("give at least two images: similarity A B [C ...]", EXIT_BAD_INPUT)
    config = flags.FLAGS.config
    try:
        images = read_inputs(paths, config.data.image_size, config.data.channels)
    except image_io.ImageReadError as err:
        cli.fail(f"cannot read image {err}", EXIT_BAD_INPUT)
    bundle = encoder.load_or_train_encoder(config)
    matrix = encoder.similarity_matrix(bundle, images)
    if len(paths) == 2:
        print(f"{matrix[0, 1]:.4f}")
    else:
        print(format_matrix(matrix, paths))


def run() -> None:
    from absl import app
    from ml_collections import config_flags

    from semantica_jax import cli

    config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "config whose encoder section/cache is used", lock_config=True
    )
    app.run(main, flags_parser=cli.parse_flags_or_exit)


if __name__ == "__main__":
    run()
