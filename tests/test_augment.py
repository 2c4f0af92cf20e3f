"""tools/augment.py on a tiny trained workdir: outputs, provenance, TFDS round trip, refusals."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from semantica_jax import errors
from semantica_jax.tools import augment


@pytest.fixture(scope="module")
def labelled(tool_workdir, tmp_path_factory):
    """Two label folders of three real MNIST test digits each, plus the same as an .npz."""
    from semantica_jax import assets
    from semantica_jax import workdir as run_dir

    images, labels = assets.load_split(run_dir.load_config(tool_workdir), "test")
    root = tmp_path_factory.mktemp("labelled")
    chosen = {}
    for name, digit in (("seven", 7), ("two", 2)):
        rows = np.flatnonzero(labels == digit)[:3]
        chosen[name] = images[rows]
        os.makedirs(root / "folders" / name)
        for j, image in enumerate(images[rows]):
            Image.fromarray(image[..., 0]).save(root / "folders" / name / f"{j}.png")
    npz = root / "few.npz"
    np.savez(
        npz,
        images=np.concatenate([chosen["seven"], chosen["two"]]),
        labels=np.array([0, 0, 0, 1, 1, 1]),
    )
    return root


def test_augment_writes_a_tfds_set_with_provenance(tool_workdir, labelled, tmp_path):
    from semantica_jax.data import tfds_images

    out = tmp_path / "aug"
    settings = augment.AugmentSettings(variations=2, tau_low=-1.0, tau_high=1.01, max_tries=1)
    summary = augment.augment(
        tool_workdir, str(labelled / "folders"), str(out), settings, log=lambda _: None
    )
    assert summary["labels"] == ["seven", "two"] and summary["num_real"] == 6
    assert summary["num_variations"] == 12 and summary["unfilled"] == 0  # the filter admits all
    data = np.load(out / "augmented.npz")
    assert len(data["images"]) == 18
    np.testing.assert_array_equal(data["source_index"][:6], np.arange(6))
    np.testing.assert_array_equal(data["source_index"][6:], np.repeat(np.arange(6), 2))
    np.testing.assert_array_equal(
        data["labels"], np.array([0, 0, 0, 1, 1, 1])[data["source_index"]]
    )
    assert data["is_variation"].sum() == 12 and np.all(data["t0"] == 1.0)
    tfds = tfds_images.import_tfds()
    ds = tfds.load(augment.DATASET_NAME, split="train", data_dir=str(out / "tfds"))
    rows = list(tfds.as_numpy(ds))
    assert len(rows) == 18
    np.testing.assert_array_equal([r["label"] for r in rows], data["labels"])
    np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), data["images"])
    assert json.load(open(out / "summary.json"))["drawn"] == 12
    assert os.path.getsize(out / "contact_sheet.png") > 100


def test_the_filter_rejects_and_reports_unfilled(tool_workdir, labelled, tmp_path):
    settings = augment.AugmentSettings(
        variations=2,
        tau_low=0.999,
        tau_high=1.0,
        max_tries=2,
        guidance="constant",
        strength=0.5,
    )
    summary = augment.augment(
        tool_workdir, str(labelled / "few.npz"), str(tmp_path / "o"), settings, log=lambda _: None
    )
    assert summary["drawn"] == 6 * 2 * 2 and summary["unfilled"] == 12 - summary["num_variations"]
    assert summary["rejected"] == summary["drawn"] - summary["num_variations"]
    assert summary["guidance_per_image"] == [0.5] * 6


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(variations=0), "--variations"),
        (dict(strength=0.0), "--strength"),
        (dict(strength=1.5), "--strength"),
        (dict(w=float("nan")), "--w"),
        (dict(max_tries=0), "--max_tries"),
    ],
)
def test_bad_settings_are_refused_before_any_work(change, words, tmp_path):
    with pytest.raises(errors.UserError, match=words):
        augment.augment("/nonexistent", "x", str(tmp_path / "o"), augment.AugmentSettings(**change))
    assert not (tmp_path / "o").exists()


def test_cli_bad_input_is_one_error_line(tool_workdir, labelled, tmp_path, run_tool):
    empty = tmp_path / "labels" / "empty"
    os.makedirs(empty)
    for args, words in (
        ([f"--images={tmp_path / 'labels'}"], "holds no image"),
        ([f"--images={tmp_path / 'missing'}"], "neither a folder"),
    ):
        out = tmp_path / "out"
        proc = run_tool("augment", f"--workdir={tool_workdir}", *args, f"--out={out}")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
        assert not out.exists()
