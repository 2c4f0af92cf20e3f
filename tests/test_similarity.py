"""tools/similarity.py: the similarity command line."""

import os

import numpy as np
import pytest
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
        "--invert=no",  # noise images, not digits: compared exactly as read
        "--preprocess=none",
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


# --- the library: metrics/similarity.py --------------------------------------------------------


def test_pixel_and_ssim_scores(random_digits):
    from semantica_jax.metrics import similarity as sim

    a, b = random_digits(3, 2), random_digits(4, 3)
    xa, xb = image_io.to_model_range(a), image_io.to_model_range(b)
    want = -np.sqrt(((xa[:, None] - xb[None]) ** 2).reshape(3, 4, -1).mean(-1))
    np.testing.assert_allclose(sim.pixel_matrix(a, b), want, atol=1e-6)
    np.testing.assert_allclose(sim.pixel_scores(a, b[:3]), np.diag(want[:, :3]), atol=1e-6)
    same = sim.pixel_matrix(a, a)
    assert np.all(np.diag(same) == 0.0) and np.all(same[~np.eye(3, dtype=bool)] < 0)
    ssim = sim.ssim_matrix(a, b)
    assert ssim.shape == (3, 4) and np.all(ssim < 0.5)  # unrelated noise images
    np.testing.assert_allclose(np.diag(sim.ssim_matrix(a, a)), 1.0, atol=1e-5)
    np.testing.assert_allclose(sim.ssim_scores(a, b[:3]), np.diag(ssim[:, :3]), atol=1e-6)
    # SSIM is dm-pix's, on [0, 1] images.
    import dm_pix

    direct = dm_pix.ssim(a[:1] / 255.0, b[:1] / 255.0, max_val=1.0)
    np.testing.assert_allclose(ssim[0, 0], direct[0], atol=1e-5)
    with pytest.raises(ValueError, match="unknown method"):
        sim.similarity_matrix_of("lpips", a)
    with pytest.raises(ValueError, match="decoder"):
        sim.similarity_matrix_of("diffsim", a)


# --- the command line, in-process (flags are global to absl: each run removes its own) ----------


def _run(capsys, *argv: str):
    """The tool in-process on the images as read (no digit inversion or centring, which
    tests/test_sample.py covers), so its numbers compare with the library's."""
    from absl import flags

    from semantica_jax.tools import similarity

    before = set(flags.FLAGS)
    try:
        similarity.run(["similarity", "--invert=no", "--preprocess=none", *argv])
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
    return capsys.readouterr()


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_data_dir):
    """Five MNIST test digits as PNG files and a gallery folder of eight others."""
    from semantica_jax.data import mnist as mnist_data

    images, labels = mnist_data.load_split("mnist", "test", mnist_data_dir, 28, 1, 13)
    d = tmp_path_factory.mktemp("digits")
    (d / "gallery").mkdir()
    paths = []
    for i, image in enumerate(images):
        name = d / (f"q{i}.png" if i < 5 else f"gallery/g{i}.png")
        Image.fromarray(image[..., 0]).save(name)
        paths.append(str(name))
    Image.fromarray(images[0, ..., 0]).save(d / "gallery" / "copy_of_q0.png")
    (d / "gallery" / "notes.txt").write_text("not an image")
    return {"queries": paths[:5], "gallery": str(d / "gallery"), "images": images}


def test_pixel_and_ssim_cli(capsys, digits):
    q = digits["queries"]
    one = float(_run(capsys, q[0], q[1], "--method=pixel").out)
    x = image_io.to_model_range(digits["images"][:2])
    assert one == pytest.approx(-np.sqrt(np.mean((x[0] - x[1]) ** 2)), abs=1e-4)
    out = _run(capsys, q[0], q[0], "--method=ssim").out
    assert out.strip() == "1.0000"
    table = _run(capsys, *q[:3], "--method=pixel").out.splitlines()
    assert table[0].split() == ["[0]", "[1]", "[2]"] and table[1].split()[1] == "0.0000"


def test_diffsim_cli_matches_library(capsys, digits, tool_workdir):
    from semantica_jax.metrics import diffsim

    q = digits["queries"][:3]
    flags = [f"--workdir={tool_workdir}", "--logsnr=1.5", "--seed=2"]
    block = "--block=transformer_0/block_0"
    for method, kind in (("diffsim", "s"), ("diffsim_c", "c")):
        lines = _run(capsys, *q, f"--method={method}", block, *flags).out.splitlines()
        got = np.array([[float(v) for v in line.split()[1:]] for line in lines[1:4]])
        want = diffsim.matrix(
            diffsim.from_workdir(tool_workdir),
            digits["images"][:3],
            logsnr=1.5,
            seed=2,
            method=kind,
        )
        np.testing.assert_allclose(got, want, atol=2e-4)
        np.testing.assert_array_equal(np.diag(got), 1.0)  # shared noise: identical = 1
    independent = _run(capsys, q[0], q[0], "--method=diffsim", "--noise=independent", *flags)
    assert float(independent.out) < 1.0


def test_encoder_cli_uses_the_workdirs_config(capsys, digits, tool_workdir):
    from semantica_jax import assets
    from semantica_jax import workdir as run_dir

    q = digits["queries"][:2]
    got = float(_run(capsys, *q, f"--workdir={tool_workdir}").out)
    bundle = assets.load_encoder(run_dir.load_config(tool_workdir))
    want = encode_lib.similarity(bundle, digits["images"][0], digits["images"][1])
    assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("method", ["pixel", "diffsim"])
def test_retrieval(capsys, digits, tool_workdir, tmp_path, method):
    out = tmp_path / "strip.png"
    args = [f"--gallery={digits['gallery']}", "--top=3", f"--out={out}", "--scale=2"]
    result = _run(
        capsys, *digits["queries"][:2], f"--method={method}", *args, f"--workdir={tool_workdir}"
    )
    lines = result.out.splitlines()
    assert lines[0] == digits["queries"][0]
    rank1 = lines[1].split()
    assert rank1[0] == "1" and rank1[2].endswith("copy_of_q0.png")  # the copy is nearest
    assert float(rank1[1]) == (0.0 if method == "pixel" else 1.0)
    assert lines[4] == digits["queries"][1] and lines[-1] == f"wrote {out}"
    strip = np.asarray(Image.open(out))
    assert strip.shape == (2 * (2 * 30 + 2), 2 * (4 * 30 + 2))  # 2 rows x (query + 3), scale 2
    np.testing.assert_array_equal(strip[4:60:2, 4:60:2], digits["images"][0, ..., 0])  # query
    many = _run(
        capsys, digits["queries"][0], "--method=pixel", *args[:1], "--top=50", f"--out={out}"
    )
    assert "holds 9 images; showing 9" in many.err and len(many.out.splitlines()) == 11


def _no_cross_workdir(tool_workdir, tmp_path):
    """A copy of tool_workdir's config.json with the decoder's cross-attention off (no
    checkpoint: the block check fails before one is read)."""
    import json

    config = json.load(open(os.path.join(tool_workdir, "config.json")))
    config["model"]["cross_attention"] = False
    (tmp_path / "film").mkdir()
    (tmp_path / "film" / "config.json").write_text(json.dumps(config))
    return str(tmp_path / "film")


BAD = {
    "missing workdir": (["--method=diffsim", "--workdir={tmp}/nope"], "does not exist"),
    "invalid workdir": (["--method=diffsim", "--workdir={tmp}"], "not a training workdir"),
    "unreadable image": (["--method=pixel", "{bad}"], "bad.png"),
    "unknown block": (
        ["--method=diffsim", "--workdir={run}", "--block=up/block_9"],
        "valid blocks: ['transformer_0/block_0']",
    ),
    "no cross-attention": (["--method=diffsim_c", "--workdir={film}"], "cross-attention"),
    "no cross-attention block": (
        ["--method=diffsim_c", "--workdir={film}", "--block=transformer_0/block_0"],
        "cross-attention",
    ),
    "logsnr inf": (["--method=diffsim", "--workdir={run}", "--logsnr=inf"], "finite"),
    "logsnr nan": (["--method=diffsim", "--workdir={run}", "--logsnr=nan"], "finite"),
    "unknown method": (["--method=lpips"], "choose one of encoder, diffsim"),
    "top 0": (["--method=pixel", "--top=0"], "--top must be >= 1"),
    "empty gallery": (["--method=pixel", "--gallery={tmp}/empty"], "holds no image"),
    "gallery not a folder": (["--method=pixel", "--gallery={tmp}/nothing"], "not a folder"),
    "diffsim without workdir": (["--method=diffsim"], "--workdir"),
    "diffsim_c without workdir": (["--method=diffsim_c"], "--workdir"),
    "one image": (["--method=pixel", "--only-one"], "at least two images"),
    "bad noise": (["--noise=fresh"], "shared|independent"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(capsys, case, digits, tool_workdir, tool_inputs, tmp_path):
    args, message = BAD[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    film = _no_cross_workdir(tool_workdir, tmp_path)
    fill = dict(tmp=tmp_path, run=tool_workdir, film=film, bad=tool_inputs["bad"])
    args = [a.format(**fill) for a in args]
    queries = digits["queries"][:2]
    if "--only-one" in args:
        args.remove("--only-one")
        queries = queries[:1]
    out = tmp_path / "strip.png"
    with pytest.raises(SystemExit) as exit_info:
        _run(capsys, *queries, *args, f"--out={out}")
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    errors = _error_lines(stderr)
    assert len(errors) == 1 and message in errors[0], stderr
    assert not out.exists() and not list(tmp_path.glob("*.png"))


def test_bad_input_with_gallery_writes_nothing(capsys, digits, tool_workdir, tool_inputs, tmp_path):
    """A bad block or an unreadable gallery image with --gallery: no strip."""
    import shutil

    out = tmp_path / "strip.png"
    gallery = tmp_path / "gallery"
    shutil.copytree(digits["gallery"], gallery)
    shutil.copy(tool_inputs["bad"], gallery / "zz_bad.png")
    for folder, args, message in (
        (gallery, ["--method=pixel"], "zz_bad.png"),
        (
            digits["gallery"],
            ["--method=diffsim", f"--workdir={tool_workdir}", "--block=x"],
            "block",
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            _run(capsys, digits["queries"][0], f"--gallery={folder}", f"--out={out}", *args)
        assert exit_info.value.code == 2
        errors = _error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and message in errors[0]
        assert not out.exists()
