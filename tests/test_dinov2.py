"""The DINOv2 port against the Hugging Face reference, its loader's errors, and training on it.

The fixtures (tests/fixtures/dinov2/{plain,registers}) are tiny random `Dinov2Model` /
`Dinov2WithRegistersModel` checkpoints saved by transformers with the reference forward
stored beside them; `tests/fixtures/make_dinov2_fixture.py` rebuilds them (torch and
transformers are never dependencies of the project).
"""

import os
import shutil

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dinov2")


def _load(name, size, **kw):
    from semantica_jax.models import dinov2

    kw = dict(dict(input_size=size, image_size=size, data_channels=3), **kw)
    return dinov2.load_pretrained(os.path.join(FIXTURES, name), **kw)


@pytest.mark.parametrize(
    "name,size",
    [("plain", 28), ("plain", 56), ("registers", 42), ("registers", 28)],
    ids=["plain-native", "plain-interpolated", "registers-native", "registers-antialiased"],
)
def test_matches_the_reference_forward(name, size):
    from semantica_jax.models import dinov2

    config, params = _load(name, size)
    ref = np.load(os.path.join(FIXTURES, name, "reference.npz"))
    pixels = ref[f"pixels_{size}"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    tokens, cls = config.module().apply(
        {"params": params}, pixels, method=dinov2.Dinov2Encoder.encode_pixels
    )
    last = ref[f"last_hidden_state_{size}"]
    skip = 1 + config.num_registers
    assert tokens.shape == (2, (size // 14) ** 2, 32) == last[:, skip:].shape
    np.testing.assert_allclose(np.asarray(tokens), last[:, skip:], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(cls), ref[f"pooler_output_{size}"], atol=1e-4, rtol=0)
    assert config.num_registers == (2 if name == "registers" else 0)
    assert config.swiglu == (name == "registers")


def test_torch_bicubic_weights_by_value():
    from semantica_jax.models.dinov2 import torch_bicubic_matrix

    same = torch_bicubic_matrix(5, 5)
    np.testing.assert_allclose(same, np.eye(5), atol=1e-7)  # identity at scale 1
    up = torch_bicubic_matrix(2, 4)
    np.testing.assert_allclose(up.sum(1), 1.0, atol=1e-6)  # rows sum to one
    # Output 0 sits at source -0.25: taps -2, -1, 0 clamp to 0 (w(1.75) + w(0.75) + w(0.25)),
    # tap 1 keeps w(1.25), with the a = -0.75 kernel.
    np.testing.assert_allclose(up[0], [1.10546875, -0.10546875], atol=1e-6)


def test_preprocessing_path_on_grey_digits():
    import jax.numpy as jnp

    from semantica_jax.models import dinov2

    config, params = _load("plain", 28, input_size=56, image_size=28, data_channels=1)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 28, 28, 1)).astype(np.float32)
    model = config.module()
    tokens, cls = model.apply({"params": params}, images)
    assert tokens.shape == (3, config.num_tokens, 32) and config.num_tokens == 16
    pixels = dinov2.preprocess(jnp.asarray(images), config)
    assert pixels.shape == (3, 56, 56, 3)
    # Grey replicated to RGB, then normalised per channel by the ImageNet statistics.
    x01 = (pixels * jnp.asarray(dinov2.IMAGENET_STD)) + jnp.asarray(dinov2.IMAGENET_MEAN)
    np.testing.assert_allclose(x01[..., 0], x01[..., 2], atol=1e-5)
    same = model.apply({"params": params}, pixels, method=dinov2.Dinov2Encoder.encode_pixels)
    np.testing.assert_allclose(np.asarray(same[1]), np.asarray(cls), atol=1e-6)


def _rewrite(tmp_path, mutate):
    """A copy of the plain fixture whose tensors went through `mutate(dict)`."""
    from safetensors.numpy import load_file, save_file

    target = tmp_path / "ckpt"
    shutil.copytree(os.path.join(FIXTURES, "plain"), target)
    tensors = load_file(str(target / "model.safetensors"))
    mutate(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    return str(target)


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda t: t.pop("encoder.layer.1.mlp.fc2.weight"), "encoder.layer.1.mlp.fc2.weight"),
        (lambda t: t.pop("layernorm.bias"), "layernorm.bias"),
        (lambda t: t.pop("embeddings.cls_token"), "embeddings.cls_token"),
        (
            lambda t: t.update({"encoder.layer.0.norm1.weight": np.zeros(31, np.float32)}),
            "(31,)",
        ),
    ],
    ids=["missing-layer-key", "missing-final-norm", "no-cls-token", "shape-mismatch"],
)
def test_bad_checkpoints_name_the_key(tmp_path, mutate, expected):
    from semantica_jax.errors import UserError
    from semantica_jax.models import dinov2

    path = _rewrite(tmp_path, mutate)
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        dinov2.load_pretrained(path, input_size=28, image_size=28, data_channels=1)


def test_files_that_are_not_checkpoints(tmp_path):
    from semantica_jax.errors import UserError
    from semantica_jax.models import dinov2

    load = lambda p, **kw: dinov2.load_pretrained(  # noqa: E731
        p, **dict(dict(input_size=28, image_size=28, data_channels=1), **kw)
    )
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\x00\x01 not a checkpoint" * 10)
    with pytest.raises(UserError, match="model.safetensors is not a readable"):
        load(str(garbage))
    (tmp_path / "x.bin").write_text("x")
    with pytest.raises(UserError, match="is not a .safetensors file"):
        load(str(tmp_path / "x.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .safetensors weights"):
        load(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="does not exist"):
        load(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="input_size=30"):
        load(os.path.join(FIXTURES, "plain"), input_size=30)
    # A bare .safetensors file without config.json: heads inferred (32 / 64 -> 1 head).
    bare = tmp_path / "bare.safetensors"
    shutil.copy(os.path.join(FIXTURES, "plain", "model.safetensors"), bare)
    config, _ = load(str(bare))
    assert config.heads == 1 and config.width == 32 and config.depth == 2


def test_pretrained_encoder_trains_the_decoder(session_cache, tmp_path):
    """config.encoder.pretrained drives the whole run: the bundle, cached embeddings keyed by
    the checkpoint, and decoder training on its [T, D] tokens."""
    from configs import mnist
    from semantica_jax import assets, train
    from semantica_jax.encoder.encode import encode

    config = mnist.get_config("tiny")
    config.cache_dir = session_cache
    config.encoder.pretrained = os.path.join(FIXTURES, "plain")
    config.encoder.input_size = 28
    config.train.num_steps = 2
    config.train.eval_every = 0
    bundle = assets.load_or_train_encoder(config)
    assert bundle.model.config.num_tokens == 4 and bundle.model.config.width == 32
    images = (np.random.default_rng(0).uniform(0, 255, (5, 28, 28, 1))).astype(np.uint8)
    tokens, cls = encode(bundle, images)
    assert tokens.shape == (5, 4, 32) and cls.shape == (5, 32) and np.isfinite(tokens).all()
    other = config.copy_and_resolve_references()
    other.encoder.input_size = 42
    assert assets.encoder_token_shape(other) == (9, 32)
    assert assets.load_or_train_encoder(other).key != bundle.key
    _, summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["final_step"] == 2 and np.isfinite(summary["metrics"]["loss"])
    from semantica_jax.tools.denoise import null_cond

    assert null_cond(config, 3)["tokens"].shape == (3, 4, 32)
