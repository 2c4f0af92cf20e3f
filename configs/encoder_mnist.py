"""The MNIST frozen encoder job: the same `encoder` section the training config uses.

Run:
  python -m semantica_jax.main --mode=encoder --config=configs/encoder_mnist.py \
      --workdir=workdirs/encoder
  python -m semantica_jax.main --mode=encoder --config=configs/encoder_mnist.py:tiny \
      --workdir=/tmp/enc

It returns `configs.mnist.get_config(variant)` unchanged, so an encoder trained by this job
has the same cache key as the one `load_or_train_encoder` looks for during training, and the
job installs it in the cache dir. Override fields on the command line, e.g.
`--config.encoder.num_steps=300` (a different key: a different cached encoder).
"""

import ml_collections

from configs import mnist


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """Returns configs/mnist.py's config for `variant` (the part after `:` in --config)."""
    return mnist.get_config(variant)
