"""Siamese-encoder similarity of images: cosine of the frozen encoder's CLS embeddings.

Run:
  python -m semantica_jax.tools.similarity a.png b.png                 # one number
  python -m semantica_jax.tools.similarity a.png b.jpg c.npy           # a matrix
  python -m semantica_jax.tools.similarity a.png b.png --config=configs/mnist.py:tiny

Inputs of any size/colour are converted to the config's image size and channels (a note on
stderr says so). An unreadable input prints one error line and exits with status 2. The
encoder is the cached one of the config (trained on first use if absent; see assets.py).
"""

from __future__ import annotations

import os

import numpy as np

from semantica_jax import errors
from semantica_jax.errors import UserError
from semantica_jax.tools import cli

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(_REPO_ROOT, "configs", "mnist.py")


def format_matrix(matrix: np.ndarray, names: list[str]) -> str:
    """Text table of an [N, N] similarity matrix, rows/columns numbered, names listed below."""
    num = len(names)
    head = "      " + " ".join(f"{f'[{j}]':>7}" for j in range(num))
    rows = [
        f"{f'[{i}]':<5} " + " ".join(f"{matrix[i, j]:7.4f}" for j in range(num)) for i in range(num)
    ]
    legend = [f"[{i}] {name}" for i, name in enumerate(names)]
    return "\n".join([head, *rows, "", *legend])


def similarity_of_files(config, paths: list[str]) -> np.ndarray:
    """The encoder's CLS-cosine matrix [N, N] of image files (notes on stderr).

    Raises:
      UserError: fewer than two images, or one that cannot be read.
    """
    from semantica_jax import assets
    from semantica_jax.encoder.encode import similarity_matrix

    if len(paths) < 2:
        raise UserError("give at least two images: similarity A B [C ...]")
    images = cli.load_inputs(paths, config.data.image_size, config.data.channels)
    return similarity_matrix(assets.load_or_train_encoder(config), images)


def _define_flags():
    from ml_collections import config_flags

    return dict(
        config=config_flags.DEFINE_config_file(
            "config",
            DEFAULT_CONFIG,
            "Config whose encoder section/cache is used.",
            lock_config=True,
        )
    )


def run(argv: list[str] | None = None) -> None:
    """Entry point of `python -m semantica_jax.tools.similarity A B [C ...]`."""
    f = cli.start(_define_flags, [], argv, doc=__doc__, allow_args=True)
    with errors.reported():
        matrix = similarity_of_files(f["config"], f["args"])
    paths = f["args"]
    print(f"{matrix[0, 1]:.4f}" if len(paths) == 2 else format_matrix(matrix, paths))


if __name__ == "__main__":
    run()
