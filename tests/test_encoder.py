"""Frozen encoder: ViT shapes, losses against their formulas, training, checkpoints, bundle."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import mnist as mnist_config
from semantica_jax import checkpointing, encoder, encoder_eval
from semantica_jax import encoder_objectives as objectives
from semantica_jax.models.vit import ViTConfig

TINY = ViTConfig(
    image_size=28, channels=1, patch_size=4, width=16, depth=1, heads=2, mlp_ratio=2, embed_dim=8
)


def bars(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-class synthetic set: class 0 = a vertical bar, class 1 = a horizontal bar.

    Returns uint8 [num, 28, 28, 1] (random position, length and noise) and int32 labels.
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(num) % 2).astype(np.int32)
    images = rng.integers(0, 40, size=(num, 28, 28), dtype=np.int32)
    for i, label in enumerate(labels):
        pos, lo = rng.integers(5, 21), rng.integers(2, 8)
        hi = lo + rng.integers(12, 19)
        if label == 0:
            images[i, lo:hi, pos : pos + 3] = 255
        else:
            images[i, pos : pos + 3, lo:hi] = 255
    return images.astype(np.uint8)[..., None], labels


def tiny_encoder_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = mnist_config.get_config("tiny").encoder
    cfg.unlock()
    cfg.update(dict(num_steps=40, batch_size=16, learning_rate=3e-3, warmup_steps=5, log_every=20))
    cfg.update(overrides)
    return cfg


def tiny_bundle(seed: int = 0, path: str = "") -> encoder.EncoderBundle:
    model = TINY.module()
    params = jax.device_get(encoder.init_params(model, jax.random.key(seed)))
    return encoder.EncoderBundle(model, params, path, "k", encoder.hash_params(params))


# --- model --------------------------------------------------------------------------------


def test_vit_shapes_and_cls_is_layer_normed():
    bundle = tiny_bundle()
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 28, 28, 1)), jnp.float32)
    tokens, cls = bundle.model.apply({"params": bundle.params}, images)
    assert tokens.shape == (3, 49, 16) and cls.shape == (3, 16)
    # Final LayerNorm at init (scale 1, bias 0): each CLS vector has mean 0 and variance 1.
    np.testing.assert_allclose(np.mean(cls, axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.var(cls, axis=-1), 1.0, rtol=1e-3)
    emb = bundle.model.apply({"params": bundle.params}, cls, method=bundle.model.embed)
    assert emb.shape == (3, 8)
    with pytest.raises(ValueError, match="expects images"):
        bundle.model.apply({"params": bundle.params}, jnp.zeros((1, 32, 32, 1)))


def test_vit_config_rejects_bad_sizes():
    cfg = tiny_encoder_cfg(patch_size=5)
    with pytest.raises(ValueError, match="patch_size=5 does not divide"):
        ViTConfig.from_config(cfg, 28, 1)


# --- objectives ---------------------------------------------------------------------------


def test_contrastive_loss_equals_formula():
    a = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    b = jnp.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    same = jnp.array([1, 0, 0, 1])
    got = np.asarray(objectives.contrastive_loss(a, b, same, margin=2.0, eps=0.0))
    d = np.sqrt(2.0)
    # same: D^2 / 2 ; different: max(0, m - D)^2 / 2 ; coinciding different pair: m^2 / 2.
    np.testing.assert_allclose(got, [1.0, 0.5 * (2.0 - d) ** 2, 2.0, 0.0], rtol=1e-6)
    got_m1 = np.asarray(objectives.contrastive_loss(a, b, same, margin=1.0, eps=0.0))
    np.testing.assert_allclose(got_m1[1], 0.0)  # D = sqrt(2) > m = 1: no push.
    # D = sqrt(D^2 + eps) keeps the gradient finite where embeddings coincide.
    grad = jax.grad(lambda x: objectives.contrastive_loss(x, b, same, 1.0).sum())(a)
    assert np.all(np.isfinite(grad))


def test_in_batch_contrastive_loss_matches_pairwise_formula():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(7, 5))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 1, 0, 2, 1, 0, 2])
    margin = 1.2
    pos, neg = [], []
    for i in range(7):
        for j in range(i + 1, 7):
            dist = np.sqrt(np.sum((emb[i] - emb[j]) ** 2) + 1e-12)
            if labels[i] == labels[j]:
                pos.append(0.5 * dist**2)
            else:
                neg.append(0.5 * max(0.0, margin - dist) ** 2)
    want = 0.5 * np.mean(pos) + 0.5 * np.mean(neg)
    got, metrics = objectives.in_batch_contrastive_loss(
        jnp.asarray(emb, jnp.float32), jnp.asarray(labels), margin
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    cos = emb @ emb.T
    same_cos = [cos[i, j] for i in range(7) for j in range(i + 1, 7) if labels[i] == labels[j]]
    np.testing.assert_allclose(float(metrics["cos_same"]), np.mean(same_cos), rtol=1e-5)


def test_nt_xent_equals_formula():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(6, 4)).astype(np.float32)
    tau = 0.5
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = []
    for i in range(6):
        pos = (i + 3) % 6
        logits = np.array([z[i] @ z[j] / tau for j in range(6) if j != i])
        want.append(np.log(np.sum(np.exp(logits))) - z[i] @ z[pos] / tau)
    got = np.asarray(objectives.nt_xent_loss(jnp.asarray(emb), tau))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sample_pairs_are_balanced_and_correct():
    labels = np.array([3, 3, 7, 7, 7, 9, 9, 3])
    index = objectives.build_class_index(labels)
    anchor, partner, same = objectives.sample_pairs(jax.random.key(0), index, 64)
    anchor, partner, same = map(np.asarray, (anchor, partner, same))
    assert same.sum() == 32
    np.testing.assert_array_equal(labels[anchor] == labels[partner], same)
    with pytest.raises(ValueError, match="at least 2 classes"):
        objectives.build_class_index(np.zeros(5, int))


def test_augment_keeps_range_and_shape_and_moves_pixels():
    images, _ = bars(4, seed=0)
    x = images.astype(np.float32) / 127.5 - 1
    out = np.asarray(objectives.augment(jax.random.key(0), jnp.asarray(x)))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert np.mean(np.abs(out - x)) > 0.05
    zero = objectives.augment(
        jax.random.key(0),
        jnp.asarray(x),
        max_rotation_deg=0,
        max_log_scale=0,
        max_shift=0,
        noise_std=0,
    )
    np.testing.assert_allclose(np.asarray(zero), x, atol=1e-5)  # identity warp is exact


# --- training -----------------------------------------------------------------------------


def _gap_and_knn(bundle, images, labels):
    _, cls = encoder.encode(bundle, images, with_tokens=False)
    report, _, _ = encoder_eval.cosine_distributions(cls, labels, num_pairs=2000)
    gap = report["same"]["mean"] - report["different"]["mean"]
    acc = encoder_eval.knn_accuracy(cls[:100], labels[:100], cls[100:], labels[100:], k=5)
    return gap, acc


@pytest.mark.parametrize("objective", ["contrastive", "simclr"])
def test_training_separates_two_classes(objective):
    train_x, train_y = bars(256, seed=0)
    test_x, test_y = bars(200, seed=1)
    before = tiny_bundle(seed=0)
    gap0, acc0 = _gap_and_knn(before, test_x, test_y)
    cfg = tiny_encoder_cfg(objective=objective)
    model, params, summary = encoder.train_encoder(
        TINY,
        cfg,
        train_x,
        train_y if objective == "contrastive" else None,
        seed=0,
        log=lambda _: None,
    )
    after = encoder.EncoderBundle(model, params, "", "", encoder.hash_params(params))
    gap1, acc1 = _gap_and_knn(after, test_x, test_y)
    assert summary["steps"] == 40 and np.isfinite(summary["final"]["loss"])
    assert gap1 > gap0 + 0.1, (gap0, gap1)
    if objective == "contrastive":
        assert acc1 >= 0.95, (acc0, acc1)
        assert gap1 > 0.4, gap1


def test_knn_accuracy_on_known_points():
    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]], np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    queries = np.array([[1, 0.05], [0.05, 1]], np.float32)
    np.testing.assert_array_equal(encoder_eval.knn_predict(gallery, labels, queries, k=3), [0, 1])
    assert encoder_eval.knn_accuracy(gallery, labels, queries, np.array([0, 0]), k=1) == 0.5
    assert encoder_eval.roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.85])) == 0.75


# --- checkpoints --------------------------------------------------------------------------


def test_save_restore_pytree_round_trip_exact(tmp_path):
    tree = {
        "w": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32),
        "nested": {"b": jnp.arange(5, dtype=jnp.bfloat16), "i": np.arange(6, dtype=np.int32)},
    }
    path = checkpointing.save_pytree(tmp_path / "ckpt", tree)
    for target in (None, jax.eval_shape(lambda: tree)):
        got = checkpointing.restore_pytree(path, target)
        for want, have in zip(jax.tree.leaves(tree), jax.tree.leaves(got), strict=True):
            assert have.dtype == want.dtype and have.shape == want.shape
            np.testing.assert_array_equal(np.asarray(have), np.asarray(want))
    with pytest.raises(FileExistsError):
        checkpointing.save_pytree(path, tree)


def test_crashed_save_is_not_restored_and_is_replaced(tmp_path):
    final = tmp_path / "ckpt"
    # What a save killed before Orbax's final rename leaves behind.
    partial = tmp_path / "ckpt.orbax-checkpoint-tmp"
    partial.mkdir()
    (partial / "garbage").write_text("half written")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpointing.restore_pytree(final)
    checkpointing.save_pytree(final, {"x": np.ones(3, np.float32)})
    assert not partial.exists()
    np.testing.assert_array_equal(checkpointing.restore_pytree(final)["x"], np.ones(3))


# --- bundle: save/load, cache, encode, similarity -----------------------------------------


def test_save_load_encoder_round_trip_and_mismatch(tmp_path):
    bundle = tiny_bundle(seed=3)
    saved = encoder.save_encoder(str(tmp_path / "enc"), TINY, bundle.params, {"key": "abc"})
    loaded = encoder.load_encoder(saved.path, expected=TINY)
    assert loaded.params_hash == bundle.params_hash and loaded.key == "abc"
    jax.tree.map(np.testing.assert_array_equal, loaded.params, bundle.params)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    wider = ViTConfig(**{**TINY.__dict__, "width": 32, "heads": 2})
    with pytest.raises(ValueError, match="width: checkpoint 16 vs config 32"):
        encoder.load_encoder(saved.path, expected=wider)


def test_load_or_train_encoder_trains_once_then_reuses(tmp_path, monkeypatch):
    config = mnist_config.get_config("tiny")
    config.cache_dir = str(tmp_path)
    config.encoder.num_steps = 3
    calls = []

    def fake_data(cfg):
        calls.append(cfg.data.dataset)
        return bars(64, seed=0)

    monkeypatch.setattr(encoder, "_load_train_data", fake_data)
    first = encoder.load_or_train_encoder(config, log=lambda _: None)
    second = encoder.load_or_train_encoder(config, log=lambda _: None)
    assert calls == ["mnist"]  # trained once
    assert first.path == second.path == str(tmp_path / "encoder" / encoder.encoder_key(config))
    assert first.params_hash == second.params_hash
    with open(os.path.join(first.path, "encoder.json")) as f:
        assert json.load(f)["identity"]["encoder"]["num_steps"] == 3
    # Another encoder setting -> another key -> trained again.
    config.encoder.margin = 0.5
    third = encoder.load_or_train_encoder(config, log=lambda _: None)
    assert len(calls) == 2 and third.path != first.path
    # An explicit checkpoint is loaded as is.
    config.encoder.checkpoint = first.path
    assert encoder.load_or_train_encoder(config).params_hash == first.params_hash


def test_encode_batched_dtypes_and_similarity():
    bundle = tiny_bundle()
    images, _ = bars(7, seed=4)
    tokens, cls = encoder.encode(bundle, images, batch_size=3)
    tokens_f, cls_f = encoder.encode(bundle, images.astype(np.float32) / 127.5 - 1, batch_size=100)
    assert tokens.shape == (7, 49, 16) and cls.shape == (7, 16)
    np.testing.assert_allclose(tokens, tokens_f, atol=1e-4)
    np.testing.assert_allclose(cls, cls_f, atol=1e-4)
    direct = bundle.model.apply({"params": bundle.params}, images[:2] / 127.5 - 1.0)[1]
    np.testing.assert_allclose(cls[:2], direct, atol=1e-4)
    matrix = encoder.similarity_matrix(bundle, images)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
    want = cls[0] @ cls[1] / np.linalg.norm(cls[0]) / np.linalg.norm(cls[1])
    assert abs(encoder.similarity(bundle, images[0], images[1]) - want) < 1e-5
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
        encoder.encode(bundle, images.astype(np.float32))


def test_encoder_job_writes_eval_and_installs_in_cache(tmp_path, monkeypatch):
    from semantica_jax.data import mnist as mnist_data

    config = mnist_config.get_config("tiny")
    config.cache_dir = str(tmp_path / "cache")
    config.encoder.num_steps = 30
    config.encoder.learning_rate = 3e-3
    splits = {"train": bars(200, seed=0), "test": bars(60, seed=1)}
    monkeypatch.setattr(mnist_data, "load_split", lambda ds, split, *a, **k: splits[split])
    report = encoder_eval.run_encoder_job(config, str(tmp_path / "work"), log=lambda _: None)
    with open(tmp_path / "work" / "encoder_eval.json") as f:
        on_disk = json.load(f)
    assert on_disk["knn5_accuracy"] == report["knn5_accuracy"] >= 0.9
    assert on_disk["query_size"] == 60 and on_disk["gallery_size"] == 200
    same, diff = on_disk["cosine"]["same"], on_disk["cosine"]["different"]
    assert same["mean"] > diff["mean"] and set(same["quantiles"]) >= {"q05", "q50", "q95"}
    assert (tmp_path / "work" / "encoder_cosine_hist.png").stat().st_size > 1000
    cached = tmp_path / "cache" / "encoder" / encoder.encoder_key(config)
    assert encoder.load_encoder(str(cached)).params_hash == report["params_hash"]
