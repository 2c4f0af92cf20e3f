"""tools/sample.py: variations of user images from a trained workdir."""

import os

import numpy as np
import pytest
from PIL import Image

from semantica_jax.utils import image_io

SIZE = 28  # MNIST config


CELL = SIZE + 2  # image_io.make_grid's default padding


def test_sample_cli_grid_is_deterministic(tool_workdir, tool_inputs, tmp_path, run_tool, ok):
    images = [f"--image={tool_inputs[k]}" for k in ("png", "jpg", "npy")]
    common = [f"--workdir={tool_workdir}", *images, "--num=2", "--steps=2", "--guidance=0.5"]
    first, again, other = (tmp_path / n for n in ("a.png", "b.png", "c.png"))
    proc = ok(run_tool("sample", *common, "--seed=0", f"--out={first}"))
    assert "encoder: reusing cached" in proc.stderr  # the run's encoder, not a new one
    assert f"note: {tool_inputs['jpg']}: converted 50x40 RGB -> 28x28x1" in proc.stderr
    assert f"wrote {first}" in proc.stdout
    grid = np.asarray(Image.open(first))
    assert grid.shape == (3 * CELL + 2, 3 * CELL + 2)  # 3 inputs x (input + 2 variations)
    for row, key in enumerate(("png", "jpg", "npy")):
        converted, _ = image_io.load_image(tool_inputs[key], SIZE, 1)
        top = 2 + row * CELL
        np.testing.assert_array_equal(grid[top : top + SIZE, 2 : 2 + SIZE], converted[..., 0])
    ok(run_tool("sample", *common, "--seed=0", f"--out={again}"))
    assert first.read_bytes() == again.read_bytes()
    ok(run_tool("sample", *common, "--seed=1", f"--out={other}"))
    other_grid = np.asarray(Image.open(other))
    np.testing.assert_array_equal(other_grid[:, : CELL + 2], grid[:, : CELL + 2])  # inputs
    assert not np.array_equal(other_grid[:, CELL + 2 :], grid[:, CELL + 2 :])  # variations


@pytest.mark.parametrize(
    "case, words",
    [
        ("bad", "not a readable image"),
        ("bad_npy", "must hold"),
        ("missing", "no such file"),
        ("no_checkpoint", "no checkpoints"),
        ("out_is_a_directory", "is a directory"),
    ],
)
def test_sample_cli_bad_input_is_one_error_line(
    tool_workdir, tool_inputs, tmp_path, case, words, run_tool
):
    workdir = tool_workdir
    image = tool_inputs.get(case, str(tmp_path / "missing.png"))
    if case == "no_checkpoint":
        workdir = str(tmp_path / "run")
        os.makedirs(workdir)
        with open(os.path.join(tool_workdir, "config.json")) as src:
            (tmp_path / "run" / "config.json").write_text(src.read())
        image = tool_inputs["png"]
    out = tmp_path / "grid.png"
    if case == "out_is_a_directory":
        image, out = tool_inputs["png"], tmp_path
    proc = run_tool("sample", f"--workdir={workdir}", f"--image={image}", f"--out={out}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr
    assert out == tmp_path or not out.exists()
    assert os.listdir(tmp_path) in ([], ["run"])  # no temp file either


@pytest.mark.parametrize(
    "flag, words",
    [
        ("--guidance=nan", "--guidance must be finite"),
        ("--seed=-1", "--seed must be in"),
        ("--scale=100000", "--scale must be in"),
        ("--num=0", "--num must be >= 1"),
    ],
)
def test_sample_cli_bad_flag_value_is_one_error_line(
    tool_workdir, tool_inputs, tmp_path, flag, words, run_tool
):
    out = tmp_path / "grid.png"
    proc = run_tool(
        "sample", f"--workdir={tool_workdir}", f"--image={tool_inputs['png']}", flag, f"--out={out}"
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr
    assert not out.exists() and os.listdir(tmp_path) == []
