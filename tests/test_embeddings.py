"""encoder/embeddings.py: the embedding cache."""

import os

import numpy as np
import pytest

from semantica_jax.encoder import embeddings
from semantica_jax.encoder import encode as encode_lib


def _identity(bundle, images, dataset="mnist"):
    return embeddings.cache_identity(bundle, images, dataset=dataset, split="train", max_examples=0)


def test_cache_values_reuse_and_staleness(
    tmp_path, encode_calls, config_vit, make_bundle, random_digits
):
    bundle, images = make_bundle(config_vit, 0, key="key0"), random_digits(10, 0)
    directory = str(tmp_path / "emb")
    logs = []
    tokens, cls = embeddings.cached_embeddings(
        directory,
        bundle,
        images,
        _identity(bundle, images),
        batch_size=4,
        log=logs.append,
        warn=logs.append,
    )
    assert sum(encode_calls) == 10
    assert "embeddings: 10 images in batches of 4 (3 steps; progress every 10 s)" in logs
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.float16
    assert tokens.shape == (10, 49, config_vit.width) and cls.dtype == np.float32
    want_tokens, want_cls = encode_lib.encode(bundle, images)
    np.testing.assert_allclose(tokens, want_tokens, atol=2e-3, rtol=2e-3)  # float16 storage
    np.testing.assert_allclose(cls, want_cls, atol=1e-6)
    mtime = os.stat(os.path.join(directory, "tokens.npy")).st_mtime_ns

    # Fresh: reused, nothing recomputed, files untouched.
    encode_calls.clear()
    again, _ = embeddings.cached_embeddings(
        directory, bundle, images, _identity(bundle, images), log=logs.append, warn=logs.append
    )
    assert encode_calls == []
    assert os.stat(os.path.join(directory, "tokens.npy")).st_mtime_ns == mtime
    np.testing.assert_array_equal(again, tokens)

    # Other encoder weights (same key): stale, rebuilt with the new values.
    other = make_bundle(config_vit, 1, key="key0")
    logs.clear()
    _, cls_other = embeddings.cached_embeddings(
        directory, other, images, _identity(other, images), log=logs.append, warn=logs.append
    )
    assert sum(encode_calls) == 10 and any("stale" in m and "params_hash" in m for m in logs)
    np.testing.assert_allclose(cls_other, encode_lib.encode(other, images)[1], atol=1e-6)

    # Other dataset name, other images, other count: each detected and rebuilt.
    for new_images, dataset, field in [
        (images, "fashion_mnist", "dataset"),
        (random_digits(10, 5), "mnist", "images_hash"),
        (images[:7], "mnist", "count"),
    ]:
        encode_calls.clear()
        logs.clear()
        tok, _ = embeddings.cached_embeddings(
            directory,
            other,
            new_images,
            _identity(other, new_images, dataset),
            log=logs.append,
            warn=logs.append,
        )
        assert sum(encode_calls) == len(new_images), field
        assert any("stale" in m and field in m for m in logs), (field, logs)
        assert len(tok) == len(new_images)


def test_failed_build_leaves_nothing_partial(
    tmp_path, monkeypatch, make_bundle, config_vit, random_digits
):
    bundle, images = make_bundle(config_vit, 0, key="key0"), random_digits(12, 0)
    directory = str(tmp_path / "emb")
    real = encode_lib.iter_encode

    def crash_after_first_batch(*args, **kwargs):
        gen = real(*args, **kwargs)
        yield next(gen)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(embeddings, "iter_encode", crash_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        embeddings.cached_embeddings(
            directory, bundle, images, _identity(bundle, images), batch_size=4
        )
    assert os.listdir(tmp_path) == []  # neither the final dir nor a temp dir

    # A failed rebuild keeps the previous complete cache intact.
    monkeypatch.setattr(embeddings, "iter_encode", real)
    _, cls = embeddings.cached_embeddings(directory, bundle, images, _identity(bundle, images))
    monkeypatch.setattr(embeddings, "iter_encode", crash_after_first_batch)
    other = make_bundle(config_vit, 1, key="key0")
    with pytest.raises(KeyboardInterrupt):
        embeddings.cached_embeddings(
            directory, other, images, _identity(other, images), batch_size=4
        )
    assert os.listdir(tmp_path) == ["emb"]
    monkeypatch.setattr(embeddings, "iter_encode", real)
    _, cls_again = embeddings.cached_embeddings(
        directory, bundle, images, _identity(bundle, images)
    )
    np.testing.assert_array_equal(cls_again, cls)
