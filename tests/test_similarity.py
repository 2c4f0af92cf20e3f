"""tools/similarity.py: the similarity command line."""

import os

import numpy as np
from PIL import Image

from semantica_jax.encoder import bundle as bundle_lib
from semantica_jax.encoder import encode as encode_lib
from semantica_jax.utils import image_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_similarity_cli(tmp_path, run_tool, config_vit, make_bundle, random_digits):
    bundle = make_bundle(config_vit, 0, key="key0")
    enc_dir = bundle_lib.save_encoder(
        str(tmp_path / "enc"), config_vit, bundle.params, {"key": "k"}
    ).path
    paths = []
    for i, image in enumerate(random_digits(3, 1)):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(image[..., 0]).resize((56, 56)).save(paths[-1])
    (tmp_path / "corrupt.png").write_bytes(b"garbage")
    flags = [
        f"--config={ROOT}/configs/mnist.py:tiny",
        f"--config.cache_dir={tmp_path}",
        f"--config.encoder.checkpoint={enc_dir}",
    ]

    bad = run_tool("similarity", paths[0], str(tmp_path / "corrupt.png"), *flags)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "corrupt.png" in errors[0]

    ok = run_tool("similarity", *paths, *flags)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].split() == ["[0]", "[1]", "[2]"]
    rows = np.array([[float(v) for v in line.split()[1:]] for line in lines[1:4]])
    images = np.stack([image_io.load_image(p, 28, 1)[0] for p in paths])
    np.testing.assert_allclose(rows, encode_lib.similarity_matrix(bundle, images), atol=1e-4)
    assert "56x56 L -> 28x28x1" in ok.stderr
