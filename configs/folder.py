"""Train on your own images, grouped into episodes by sub-folder (README "Your own images").

  python -m semantica_jax.main --config=configs/folder.py:/path/to/images --workdir=DIR

PATH holds one sub-folder per episode (the paper's "web page": images that belong together),
e.g. PATH/trip_rome/*.jpg, PATH/trip_oslo/*.jpg; data/folder.py says what happens to files
at the top level, unreadable files and single-image folders. The images are converted once,
at `data.image_size` and `data.channels`, into the cache dir. The encoder is trained
label-free (SimCLR) on them and the decoder learns to generate one image of an episode from
another (`episodes.kind=folder`, pairs filtered by encoder cosine).

Fields a user sets (as --config.X=... overrides):
  data.image_size   32 (default): side of the square the images are cropped/resized to; a
                    multiple of 4 (encoder patch) that the U-ViT can halve twice (e.g. 32, 64)
  data.channels     3 (RGB, default) or 1 (grey)
  encoder.pretrained  a local DINOv2 checkpoint (directory or .safetensors) instead of
                    training the encoder here; encoder.input_size its input side (224)
  episodes.low / episodes.high  the pair filter (quantiles of the pair cosines by default;
                    episodes.filter_mode=absolute for fixed cosines as in the paper)
  train.num_steps, train.batch_size   the decoder's budget
Variant: `configs/folder.py:PATH,tiny` is the tests' seconds-long configuration.

A folder dataset has one split, `train`; the sample grids condition on its images. The
MNIST evaluation (FID with the MNIST feature net) does not apply: train.eval_every = 0.
"""

import ml_collections

from configs import mnist


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """arg: 'PATH' or 'PATH,tiny'."""
    path, _, variant = (arg or "").partition(",")
    c = mnist.get_config("tiny" if variant == "tiny" else "default")
    if variant not in ("", "tiny"):
        raise ValueError(f"unknown variant {variant!r} of configs/folder.py; use PATH or PATH,tiny")
    c.data.dataset = f"folder:{path}"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.train_split = "train"
    c.data.eval_split = "train"
    c.encoder.objective = "simclr"  # no labels: the folders are groups, not classes
    c.episodes.kind = "folder"
    c.train.eval_every = 0
    return c
