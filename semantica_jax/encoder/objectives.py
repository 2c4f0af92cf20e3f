"""Training objectives of the Siamese encoder: pair sampling, losses, JAX augmentations.

* `contrastive_loss`: the standard squared-hinge contrastive loss of Hadsell, Chopra & LeCun
  (METHODS §7), on L2-normalised embeddings. With unit vectors D^2 = 2 - 2 cos, so D lies in
  [0, 2] whatever the network's output scale, and the margin m has a fixed meaning: a
  different-class pair stops contributing once cos <= 1 - m^2 / 2 (m = 1 -> cos <= 0.5).
* `nt_xent_loss`: SimCLR's normalised-temperature cross entropy for the label-free option.
* `view_jitter`: how SimCLR draws its two views of an image (`config.encoder.aug_*`;
  dm-pix through `data.image_augment`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from semantica_jax.data import image_augment
from semantica_jax.utils.cosine import l2_normalize


class ClassIndex(NamedTuple):
    """Labels grouped by class, so that same/different-class partners can be drawn on device.

    Attributes:
      labels: int32 [N] class ids remapped to 0..K-1.
      sorted_index: int32 [N] example indices sorted by class.
      class_offset: int32 [K] start of each class in `sorted_index`.
      class_count: int32 [K] number of examples of each class.
    """

    labels: jnp.ndarray
    sorted_index: jnp.ndarray
    class_offset: jnp.ndarray
    class_count: jnp.ndarray


def build_class_index(labels: np.ndarray) -> ClassIndex:
    """Groups example indices by label; needs at least two classes.

    Args:
      labels: int [N] arbitrary class ids.

    Returns:
      ClassIndex with labels remapped to 0..K-1 (numpy arrays; jit moves them to device).
    """
    labels = np.asarray(labels).reshape(-1)
    classes, remapped = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"the contrastive objective needs at least 2 classes, got {len(classes)}; "
            "use more data or --config.encoder.objective=simclr (label-free)"
        )
    remapped = remapped.astype(np.int32)
    sorted_index = np.argsort(remapped, kind="stable").astype(np.int32)
    class_count = np.bincount(remapped, minlength=len(classes)).astype(np.int32)
    class_offset = (np.cumsum(class_count) - class_count).astype(np.int32)
    return ClassIndex(remapped, sorted_index, class_offset, class_count)


def sample_pairs(
    rng: jax.Array, index: ClassIndex, batch_size: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Draws a balanced batch of pairs: even rows same class, odd rows different class.

    Args:
      rng: PRNG key.
      index: ClassIndex of the training set.
      batch_size: number of pairs B.

    Returns:
      (anchor int32 [B], partner int32 [B], same bool [B]); exactly half the pairs
      (rounded up) are same-class. Different-class partners come from a uniformly drawn
      other class.
    """
    k_anchor, k_class, k_member = jax.random.split(rng, 3)
    num_examples = index.labels.shape[0]
    num_classes = index.class_count.shape[0]
    anchor = jax.random.randint(k_anchor, (batch_size,), 0, num_examples)
    same = jnp.arange(batch_size) % 2 == 0
    anchor_class = index.labels[anchor]
    other_class = (anchor_class + jax.random.randint(k_class, (batch_size,), 1, num_classes)) % (
        num_classes
    )
    partner_class = jnp.where(same, anchor_class, other_class)
    count = index.class_count[partner_class]
    member = jnp.minimum(
        jnp.floor(jax.random.uniform(k_member, (batch_size,)) * count).astype(jnp.int32),
        count - 1,
    )
    partner = index.sorted_index[index.class_offset[partner_class] + member]
    return anchor, partner, same


def contrastive_loss(
    emb_a: jnp.ndarray, emb_b: jnp.ndarray, same: jnp.ndarray, margin: float, eps: float = 1e-12
) -> jnp.ndarray:
    """Standard contrastive loss per pair (Hadsell et al. 2006; METHODS §7).

    L = same * 1/2 D^2 + (1 - same) * 1/2 max(0, m - D)^2, with D = sqrt(||a - b||^2 + eps)
    (the eps keeps the gradient finite when two embeddings coincide). The caller passes
    L2-normalised embeddings so that D in [0, 2] and `margin` has a fixed scale.

    Args:
      emb_a: [B, E] embeddings of the first images.
      emb_b: [B, E] embeddings of their partners.
      same: bool or {0, 1} [B]; 1 = same class (the "similar" pair, Y = 0 in the paper).
      margin: m.
      eps: added to D^2 before the square root.

    Returns:
      [B] loss per pair.
    """
    same = same.astype(emb_a.dtype)
    dist2 = jnp.sum(jnp.square(emb_a - emb_b), axis=-1)
    dist = jnp.sqrt(dist2 + eps)
    return same * 0.5 * dist2 + (1.0 - same) * 0.5 * jnp.square(jnp.maximum(0.0, margin - dist))


def in_batch_contrastive_loss(
    emb: jnp.ndarray, labels: jnp.ndarray, margin: float
) -> tuple[jnp.ndarray, dict]:
    """Contrastive loss over every pair i < j of a batch, same and different pairs weighted 1:1.

    The batch is built from balanced pairs (`sample_pairs`: anchors + partners), so at least
    half of those pairs are same-class; using all 2B(2B-1)/2 pairs of the 2B images instead of
    only the B drawn ones gives far more signal per forward pass at the same cost. The two
    kinds of pair are averaged separately and then weighted 1:1, so the loss stays balanced
    whatever the class mix of the batch.

    Args:
      emb: [M, E] L2-normalised embeddings.
      labels: int [M] class ids.
      margin: contrastive margin m.

    Returns:
      (loss scalar, {cos_same, cos_diff}: mean cosine of same/different-class pairs).
    """
    num = emb.shape[0]
    upper = jnp.triu(jnp.ones((num, num), bool), k=1)
    same = labels[:, None] == labels[None, :]
    pos, neg = upper & same, upper & ~same
    # ||a - b||^2 from the Gram matrix: avoids materialising the [M, M, E] differences.
    gram = emb @ emb.T
    sq_norm = jnp.diagonal(gram)
    dist2 = jnp.maximum(sq_norm[:, None] + sq_norm[None, :] - 2.0 * gram, 0.0)
    dist = jnp.sqrt(dist2 + 1e-12)
    pos_loss = 0.5 * dist2
    neg_loss = 0.5 * jnp.square(jnp.maximum(0.0, margin - dist))
    num_pos, num_neg = jnp.maximum(jnp.sum(pos), 1), jnp.maximum(jnp.sum(neg), 1)
    loss = (
        0.5 * jnp.sum(jnp.where(pos, pos_loss, 0.0)) / num_pos
        + 0.5 * jnp.sum(jnp.where(neg, neg_loss, 0.0)) / num_neg
    )
    metrics = {
        "cos_same": jnp.sum(jnp.where(pos, gram, 0.0)) / num_pos,
        "cos_diff": jnp.sum(jnp.where(neg, gram, 0.0)) / num_neg,
    }
    return loss, metrics


def nt_xent_loss(emb: jnp.ndarray, temperature: float) -> jnp.ndarray:
    """SimCLR NT-Xent: row i and row i + B are two views of one image.

    Args:
      emb: [2B, E] embeddings (normalised here).
      temperature: tau.

    Returns:
      [2B] loss per view: -log softmax over the 2B - 1 other rows, at the positive.
    """
    two_b = emb.shape[0]
    if two_b % 2:
        raise ValueError(f"nt_xent_loss needs an even number of rows (2B), got {two_b}")
    z = l2_normalize(emb)
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(two_b, dtype=bool), -jnp.inf, logits)
    positive = (jnp.arange(two_b) + two_b // 2) % two_b
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_prob, positive[:, None], axis=-1)[:, 0]


# The SimCLR views' jitter, `config.encoder.<field>` -> (Jitter attribute, the value it had
# before it was a config field: rotation ±15°, scale ±10%, shift ±10% of the side (it was
# ±3 px of 28, and a log-uniform scale, in the hand-written warp this replaced), pixel noise
# 0.1). A config without the fields, or with these values, keeps the encoder cache key it
# always had (bundle.encoder_identity): the same views up to that reparametrisation.
VIEW_FIELDS = {
    "aug_rotation_deg": ("rotation_deg", 15.0),
    "aug_scale": ("scale", 0.1),
    "aug_shift": ("shift", 0.1),
    "aug_elastic": ("elastic_alpha", 0.0),
    "aug_noise": ("noise_std", 0.1),
}


def view_jitter(cfg_encoder: ml_collections.ConfigDict) -> image_augment.Jitter:
    """The SimCLR views' random jitter from `config.encoder.aug_*` (validated).

    Raises:
      ValueError: a value outside its range, naming the config field.
    """
    values = {
        attr: float(cfg_encoder.get(field, old)) for field, (attr, old) in VIEW_FIELDS.items()
    }
    jitter = image_augment.Jitter(**values)
    jitter.validate({attr: f"config.encoder.{field}" for field, (attr, _) in VIEW_FIELDS.items()})
    return jitter
