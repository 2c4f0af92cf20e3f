"""Semantica at 256x256 on ImageNet: the paper's baseline decoder (seed 002 §6.1).

For TPU pods / GPU clusters; it does not fit a CPU. Run:
  python -m semantica_jax.main --config=configs/imagenet256.py --workdir=gs://BUCKET/semantica256

Starts from configs/mnist.py and changes only what differs. Decoder (METHODS 1.8):
1x1 conv stem; four downsampling stages with 128, 128, 256, 512 channels and a final
1024-wide transformer stage at 16x16. The first three stages are conv ResBlock stages at
256², 128², 64² (3 blocks each); the fourth stage (512 channels) runs at 32x32 and, as the
paper says transformer blocks run at 32x32 and 16x16, it is a transformer stage of width
512. Its block count is not given: 3 (METHODS 11). The 16x16 stage has 16 blocks of width
1024 and is the only one that cross-attends ("conditioning only in the lowest-resolution
transformer"). Conditioning: DINOv2-B/14 tokens (D = 768; 224² input -> 16x16 = 256 patch
tokens; CLS kept separately in cond_cls).
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
    """Returns the ImageNet 256x256 config."""
    c = mnist.get_config()

    # --- data -------------------------------------------------------------------------
    c.data.dataset = "imagenet2012"  # TFDS name (manual download; prepare it in data_dir)
    c.data.image_size = 256  # H = W fed to the decoder
    c.data.channels = 3  # RGB
    c.data.eval_split = "validation"  # ImageNet has no labelled test split in TFDS

    # --- frozen encoder: DINOv2 ViT-B/14 -------------------------------------------------
    c.encoder.patch_size = 14  # B/14
    c.encoder.width = 768  # token dimension D of the context tokens
    c.encoder.depth = 12  # transformer blocks
    c.encoder.heads = 12  # attention heads
    c.encoder.mlp_ratio = 4  # MLP hidden = 4 * 768
    c.encoder.image_size = 224  # encoder input side (not stated by the paper; DINOv2's 224)
    c.encoder.num_tokens = 256  # context tokens T = (224 / 14)**2 patch tokens (CLS separate)

    # --- episodes: DINOv2 cosine thresholds of the paper (METHODS 10) ---------------------
    c.episodes.filter_mode = "absolute"  # thresholds are cosines, not quantiles
    c.episodes.low = 0.3  # drop unrelated pairs
    c.episodes.high = 0.9  # drop near-duplicates

    # --- decoder ------------------------------------------------------------------------
    c.model.stem = "conv"  # initial 1x1 convolution
    c.model.patch_size = 1  # no patchify at 256²
    c.model.channels = (128, 128, 256)  # conv stages at 256², 128², 64²
    c.model.blocks = (3, 3, 3)  # "the first three stages have three blocks each"
    with c.model.ignore_type():
        # One width per transformer stage: the 32² stage keeps the 4th stage's 512 channels.
        c.model.transformer_width = (512, 1024)
    c.model.transformer_blocks = (3, 16)  # 32² stage (guess, METHODS 11), 16² stage: sixteen
    c.model.transformer_conditioned = (False, True)  # cross-attention only at 16²
    c.model.heads = 8  # head_dim 64 at 512 wide, 128 at 1024 (not stated by the paper)
    c.model.mlp_ratio = 4  # transformer MLP hidden = 4 * width
    c.model.emb_dim = 1024  # conditioning embedding width
    c.model.cross_attention = True  # cross-attend to the DINOv2 tokens
    c.model.cls_film = False  # paper's final model: cross-attention (CLS-FiLM is an ablation)
    c.model.dropout = 0.1  # low-resolution blocks only (rate not stated; METHODS 11)
    c.model.dtype = "bfloat16"  # compute dtype on TPU/GPU; parameters stay float32

    # --- diffusion: v-prediction, eps-space loss, cosine shifted to noise resolution 32 ----
    c.diffusion.noise_resolution = 32  # shift = 2 log(32 / 256)
    c.diffusion.noise_resolution_high = 256  # only for cosine_interpolated experiments

    # --- sampler ------------------------------------------------------------------------
    c.sampler.num_steps = 256  # not stated by the paper; Ho & Salimans' trade-off
    c.sampler.guidance = 0.5  # ablation guidance of the paper

    # --- training -----------------------------------------------------------------------
    c.train.batch_size = 2048  # global batch
    c.train.num_steps = 300_000  # ablation length of the paper
    c.train.learning_rate = 2e-4  # Adam, b1 0.9, b2 0.99, eps 1e-12 (inherited)
    c.train.warmup_steps = 10_000  # not stated; Google configs of this lineage
    c.train.lr_decay = "constant"  # Semantica states no decay
    c.train.ema_decay = 0.9999  # Polyak averaging
    c.train.log_every = 100  # steps between scalar summaries
    c.train.checkpoint_every = 5_000  # steps between checkpoints
    c.train.eval_every = 20_000  # steps between sample grids

    # --- evaluation ---------------------------------------------------------------------
    c.eval.num_images = 50_000  # FID on 50k ImageNet samples
    c.eval.batch_size = 1024  # sampling batch (global)
    c.eval.guidance_sweep = (0.0, 0.5, 1.0)  # w values of the sweep
    c.eval.kshot = (1,)  # one-shot protocol (METHODS 5.3)
    return c
