"""data/folder.py and configs/folder.py: a user's folder of grouped images, end to end."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CLASS = 12


@pytest.fixture(scope="module")
def image_folder(mnist_data_dir, tmp_path_factory):
    """MNIST test digits as PNGs, one sub-folder per class, plus what users' folders hold:
    stray top-level files, a corrupt PNG, a text file, an RGB JPEG of another size, an RGBA
    PNG and a single-image folder."""
    from semantica_jax.data import mnist

    images, labels = mnist.load_split("mnist", "test[:400]", mnist_data_dir, 28, 1)
    root = tmp_path_factory.mktemp("folder") / "images"
    for c in range(10):
        (root / f"digit_{c}").mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == c)[:PER_CLASS]):
            Image.fromarray(images[i, ..., 0]).save(root / f"digit_{c}" / f"{j:03d}.png")
    (root / "readme.txt").write_text("top-level note")
    Image.fromarray(images[0, ..., 0]).save(root / "stray.png")
    (root / "digit_0" / "broken.png").write_bytes(b"\x89PNG garbage")
    (root / "digit_1" / "notes.txt").write_text("not an image")
    rgb = np.stack([images[1, ..., 0]] * 3, axis=-1)
    Image.fromarray(rgb).resize((50, 40)).save(root / "digit_2" / "photo.jpg")
    rgba = np.concatenate([rgb, np.full((28, 28, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(root / "digit_3" / "alpha.png")
    (root / "lonely").mkdir()
    Image.fromarray(images[2, ..., 0]).save(root / "lonely" / "only.png")
    return str(root)


def _config(path, cache):
    from configs import folder

    config = folder.get_config(f"{path},tiny")
    config.cache_dir = cache
    return config


def test_folder_converts_once_with_counted_warnings(image_folder, tmp_path, caplog):
    from semantica_jax import assets
    from semantica_jax.data import folder

    config = _config(image_folder, str(tmp_path))
    with caplog.at_level(logging.WARNING):
        images, labels = assets.load_split(config, "train")
    n = 10 * PER_CLASS + 3  # + the JPEG, the RGBA PNG and the lonely image
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    counts = np.bincount(labels)
    assert counts.tolist() == [PER_CLASS] * 2 + [PER_CLASS + 1] * 2 + [PER_CLASS] * 6 + [1]
    text = caplog.text
    assert "2 files at the top level" in text and "readme.txt, stray.png" in text
    assert "2 unreadable or non-image files" in text and "broken.png" in text
    assert "1 episodes with a single image (lonely)" in text
    report = folder.report(config.data.dataset, assets.data_dir(config), 32, 3)
    assert report["episodes"][-1] == "lonely" and report["images"] == n
    # Grey digits become equal RGB channels; the stored set is a TFDS dataset.
    assert np.array_equal(images[..., 0], images[..., 2])
    name = folder.prepare(config.data.dataset, assets.data_dir(config), 32, 3)
    assert os.path.isfile(os.path.join(assets.data_dir(config), name, "1.0.0", "folder.json"))
    # A second read converts nothing; an edited folder is converted again.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again, _ = assets.load_split(config, "train")
    assert "converting" not in caplog.text and np.array_equal(again, images)
    Image.fromarray(images[0]).save(os.path.join(image_folder, "lonely", "second.png"))
    try:
        assert folder.prepare(config.data.dataset, assets.data_dir(config), 32, 3) != name
    finally:
        os.remove(os.path.join(image_folder, "lonely", "second.png"))


@pytest.mark.parametrize(
    "layout, words",
    [
        ("missing", "does not exist"),
        ("file", "is not a directory"),
        ("flat", "has no sub-folders"),
        ("junk", "holds no readable image"),
    ],
)
def test_unusable_folders_are_one_error(tmp_path, layout, words):
    from semantica_jax.data import folder
    from semantica_jax.errors import UserError

    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout == "flat":
        root.mkdir()
        (root / "a.png").write_bytes(b"x")
    elif layout == "junk":
        (root / "ep").mkdir(parents=True)
        (root / "ep" / "a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=words):
        folder.load_split(f"folder:{root}", "train", str(tmp_path / "tfds"), 32, 3, 0)
    with pytest.raises(UserError, match="one split"):
        folder.load_split(f"folder:{root}", "test", str(tmp_path / "tfds"), 32, 3, 0)


def test_folder_episodes_pair_only_within_a_subfolder():
    from semantica_jax.data import episodes

    labels = np.array([0, 0, 1, 1, 1, 2])
    groups = episodes.build_episodes("folder", np.zeros((6, 4)), labels, {"kind": "folder"}, 0)
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3, 4], [5]]


def test_folder_config_trains_end_to_end(image_folder, tmp_path, main_env):
    """configs/folder.py: SimCLR encoder on the folder, decoder on folder episodes."""
    workdir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "semantica_jax.main",
        f"--config={ROOT}/configs/folder.py:{image_folder},tiny",
        f"--workdir={workdir}",
        f"--config.cache_dir={tmp_path / 'cache'}",
        "--config.train.num_steps=2",
    ]
    proc = subprocess.run(
        argv, cwd=ROOT, env=main_env(1), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "simclr" in proc.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_step"] == 2
    pairs = summary["pairs"]
    assert pairs["kind"] == "folder" and pairs["num_episodes"] == 11
    assert pairs["num_images"] == 10 * PER_CLASS + 3
    # Every kept pair joins two images of one sub-folder.
    assert pairs["num_kept"] > 0 and pairs["label_mismatch_fraction_after"] == 0.0
    assert (workdir / "pair_similarity.png").is_file()


def test_folder_kind_needs_a_folder_dataset():
    from configs import mnist
    from semantica_jax import train

    config = mnist.get_config("tiny")
    config.episodes.kind = "folder"
    with pytest.raises(ValueError, match="episodes.kind=folder"):
        train.validate_config(config)
