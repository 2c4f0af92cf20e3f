"""Embedding cache (reuse, staleness, atomicity), image reading/grids, the similarity CLI."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import mnist as mnist_config
from semantica_jax import embeddings, encoder, image_io
from semantica_jax.models.vit import ViTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ViTConfig.from_config(mnist_config.get_config("tiny").encoder, 28, 1)


def tiny_bundle(seed: int = 0) -> encoder.EncoderBundle:
    model = TINY.module()
    params = jax.device_get(encoder.init_params(model, jax.random.key(seed)))
    return encoder.EncoderBundle(model, params, "", "key0", encoder.hash_params(params))


def digits(num: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num, 28, 28, 1), dtype=np.uint8)


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts encoder batches actually computed (a reused cache computes none)."""
    calls = []
    real = encoder.iter_encode

    def counting(*args, **kwargs):
        for item in real(*args, **kwargs):
            calls.append(len(item[2]))
            yield item

    monkeypatch.setattr(encoder, "iter_encode", counting)
    return calls


def _identity(bundle, images, dataset="mnist"):
    return embeddings.cache_identity(bundle, images, dataset=dataset, split="train", max_examples=0)


def test_cache_values_reuse_and_staleness(tmp_path, encode_calls):
    bundle, images = tiny_bundle(0), digits(10, 0)
    directory = str(tmp_path / "emb")
    logs = []
    tokens, cls = embeddings.cached_embeddings(
        directory, bundle, images, _identity(bundle, images), batch_size=4, log=logs.append
    )
    assert sum(encode_calls) == 10
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.float16
    assert tokens.shape == (10, 49, TINY.width) and cls.dtype == np.float32
    want_tokens, want_cls = encoder.encode(bundle, images)
    np.testing.assert_allclose(tokens, want_tokens, atol=2e-3, rtol=2e-3)  # float16 storage
    np.testing.assert_allclose(cls, want_cls, atol=1e-6)
    mtime = os.stat(os.path.join(directory, "tokens.npy")).st_mtime_ns

    # Fresh: reused, nothing recomputed, files untouched.
    encode_calls.clear()
    again, _ = embeddings.cached_embeddings(
        directory, bundle, images, _identity(bundle, images), log=logs.append
    )
    assert encode_calls == []
    assert os.stat(os.path.join(directory, "tokens.npy")).st_mtime_ns == mtime
    np.testing.assert_array_equal(again, tokens)

    # Other encoder weights (same key): stale, rebuilt with the new values.
    other = tiny_bundle(1)
    logs.clear()
    _, cls_other = embeddings.cached_embeddings(
        directory, other, images, _identity(other, images), log=logs.append
    )
    assert sum(encode_calls) == 10 and any("stale" in m and "params_hash" in m for m in logs)
    np.testing.assert_allclose(cls_other, encoder.encode(other, images)[1], atol=1e-6)

    # Other dataset name, other images, other count: each detected and rebuilt.
    for new_images, dataset, field in [
        (images, "fashion_mnist", "dataset"),
        (digits(10, 5), "mnist", "images_hash"),
        (images[:7], "mnist", "count"),
    ]:
        encode_calls.clear()
        logs.clear()
        tok, _ = embeddings.cached_embeddings(
            directory, other, new_images, _identity(other, new_images, dataset), log=logs.append
        )
        assert sum(encode_calls) == len(new_images), field
        assert any("stale" in m and field in m for m in logs), (field, logs)
        assert len(tok) == len(new_images)


def test_corrupt_cache_files_are_rebuilt(tmp_path, encode_calls):
    bundle, images = tiny_bundle(0), digits(6, 0)
    directory = str(tmp_path / "emb")
    embeddings.cached_embeddings(directory, bundle, images, _identity(bundle, images))
    with open(os.path.join(directory, "tokens.npy"), "wb") as f:
        f.write(b"truncated")
    encode_calls.clear()
    logs = []
    tokens, _ = embeddings.cached_embeddings(
        directory, bundle, images, _identity(bundle, images), log=logs.append
    )
    assert sum(encode_calls) == 6 and tokens.shape[0] == 6
    assert any("unreadable" in m for m in logs)


def test_failed_build_leaves_nothing_partial(tmp_path, monkeypatch):
    bundle, images = tiny_bundle(0), digits(12, 0)
    directory = str(tmp_path / "emb")
    real = encoder.iter_encode

    def crash_after_first_batch(*args, **kwargs):
        gen = real(*args, **kwargs)
        yield next(gen)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(encoder, "iter_encode", crash_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        embeddings.cached_embeddings(
            directory, bundle, images, _identity(bundle, images), batch_size=4
        )
    assert os.listdir(tmp_path) == []  # neither the final dir nor a temp dir

    # A failed rebuild keeps the previous complete cache intact.
    monkeypatch.setattr(encoder, "iter_encode", real)
    _, cls = embeddings.cached_embeddings(directory, bundle, images, _identity(bundle, images))
    monkeypatch.setattr(encoder, "iter_encode", crash_after_first_batch)
    other = tiny_bundle(1)
    with pytest.raises(KeyboardInterrupt):
        embeddings.cached_embeddings(
            directory, other, images, _identity(other, images), batch_size=4
        )
    assert os.listdir(tmp_path) == ["emb"]
    monkeypatch.setattr(encoder, "iter_encode", real)
    _, cls_again = embeddings.cached_embeddings(
        directory, bundle, images, _identity(bundle, images)
    )
    np.testing.assert_array_equal(cls_again, cls)


def test_embedding_cache_from_config(tmp_path, encode_calls):
    config = mnist_config.get_config("tiny")
    config.cache_dir = str(tmp_path)
    images = digits(9, 0)
    reads = []

    def fake_load_split(dataset, split, data_dir, size, channels, max_examples):
        reads.append((dataset, split, size, channels, max_examples))
        return images, np.zeros(len(images), np.int32)

    bundle = tiny_bundle(0)
    tokens, cls = embeddings.embedding_cache(config, bundle, "test", load_split=fake_load_split)
    assert reads == [("mnist", "test", 28, 1, 512)]
    assert tokens.shape == (9, 49, TINY.width) and cls.shape == (9, TINY.width)
    assert os.path.isfile(tmp_path / "embeddings" / "key0" / "mnist-test-first512" / "cls.npy")
    encode_calls.clear()
    embeddings.embedding_cache(config, bundle, "test", load_split=fake_load_split)
    assert encode_calls == []


# --- image files --------------------------------------------------------------------------


def test_load_image_converts_png_and_npy(tmp_path):
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[10:30, 12:18] = 255
    Image.fromarray(rgb).save(tmp_path / "a.png")
    image, note = image_io.load_image(str(tmp_path / "a.png"), 28, 1)
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8
    assert "30x40 RGB -> 28x28x1" in note
    assert image.max() > 200 and image[0, 0, 0] == 0  # the bar survived, the corner is black

    grey = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "b.png")
    same, note = image_io.load_image(str(tmp_path / "b.png"), 28, 1)
    assert note is None
    np.testing.assert_array_equal(same[..., 0], grey)

    np.save(tmp_path / "c.npy", grey.astype(np.float32) / 127.5 - 1.0)
    from_npy, note = image_io.load_image(str(tmp_path / "c.npy"), 28, 1)
    assert "[-1, 1]" in note
    np.testing.assert_allclose(from_npy[..., 0].astype(int), grey.astype(int), atol=1)

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(image_io.ImageReadError, match="bad.png"):
        image_io.load_image(str(tmp_path / "bad.png"), 28, 1)
    with pytest.raises(image_io.ImageReadError, match="no such file"):
        image_io.load_image(str(tmp_path / "missing.png"), 28, 1)


def test_save_grid_layout_and_atomic(tmp_path):
    images = np.stack([np.full((28, 28, 1), 40 * i, np.uint8) for i in range(5)])
    path = image_io.save_grid(images, str(tmp_path / "grid.png"), ncols=3, padding=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)
    assert grid[2 + 30 + 5, 2 + 30 + 5] == 160  # image 4: row 1, col 1
    assert grid[1, 1] == 0  # padding
    assert os.listdir(tmp_path) == ["grid.png"]


# --- similarity CLI -----------------------------------------------------------------------


def _run_cli(args, cwd):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return subprocess.run(
        [sys.executable, "-m", "semantica_jax.similarity", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_similarity_cli(tmp_path):
    bundle = tiny_bundle(0)
    enc_dir = encoder.save_encoder(str(tmp_path / "enc"), TINY, bundle.params, {"key": "k"}).path
    paths = []
    for i, image in enumerate(digits(3, 1)):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(image[..., 0]).resize((56, 56)).save(paths[-1])
    (tmp_path / "corrupt.png").write_bytes(b"garbage")
    flags = [
        f"--config={ROOT}/configs/mnist.py:tiny",
        f"--config.cache_dir={tmp_path}",
        f"--config.encoder.checkpoint={enc_dir}",
    ]

    bad = _run_cli([paths[0], str(tmp_path / "corrupt.png"), *flags], cwd=tmp_path)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "corrupt.png" in errors[0]

    ok = _run_cli([*paths, *flags], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].split() == ["[0]", "[1]", "[2]"]
    rows = np.array([[float(v) for v in line.split()[1:]] for line in lines[1:4]])
    images = np.stack([image_io.load_image(p, 28, 1)[0] for p in paths])
    np.testing.assert_allclose(rows, encoder.similarity_matrix(bundle, images), atol=1e-4)
    assert "56x56 L -> 28x28x1" in ok.stderr
