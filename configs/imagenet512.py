"""Semantica at 512x512 on ImageNet: the paper's final decoder (seed 002 §6.1).

For TPU pods / GPU clusters; parameters are sharded over an fsdp axis. Run:
  python -m semantica_jax.main --config=configs/imagenet512.py --workdir=gs://BUCKET/semantica512

Starts from configs/imagenet256.py and changes only what differs: a 2x2 patchify stem
(512² -> 256²), then 128, 256, 1024, 2048, 4096 channels with 2, 3, 3, 3, 12 blocks. By the
same reading as the 256² model, the stages at 256², 128², 64² are conv ResBlock stages,
the 2048-wide stage at 32x32 and the 4096-wide stage at 16x16 are transformer stages, and
only the 16x16 stage cross-attends. The noise resolution stays 32 (METHODS 1.2).
"""

import ml_collections

from configs import imagenet256


def get_config() -> ml_collections.ConfigDict:
    """Returns the ImageNet 512x512 config."""
    c = imagenet256.get_config()
    c.data.image_size = 512  # H = W fed to the decoder

    c.model.stem = "patch"  # 2x2 stride-2 patchify, undone by depth-to-space at the output
    c.model.patch_size = 2  # 512² -> 256² feature maps
    c.model.channels = (128, 256, 1024)  # conv stages at 256², 128², 64²
    c.model.blocks = (2, 3, 3)  # blocks of the three conv stages
    c.model.transformer_width = (2048, 4096)  # 32² and 16² transformer stages
    c.model.transformer_blocks = (3, 12)  # blocks of the two transformer stages
    c.model.heads = 16  # head_dim 128 at 2048 wide, 256 at 4096 (not stated by the paper)
    c.model.emb_dim = 2048  # conditioning embedding width

    c.diffusion.noise_resolution = 32  # shift = 2 log(32 / 512) (not stated; METHODS 1.2)
    c.diffusion.noise_resolution_high = 512  # only for cosine_interpolated experiments

    c.mesh.fsdp = 8  # ~4B parameters + Adam moments + EMA do not fit one device's memory
    return c
