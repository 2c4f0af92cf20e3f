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
    common += ["--invert=no", "--preprocess=none"]  # the inputs exactly as load_image reads
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


def _rows(path) -> int:
    grid = np.asarray(Image.open(path))
    assert (grid.shape[0] - 2) % CELL == 0
    return (grid.shape[0] - 2) // CELL


def test_conditioning_controls_make_their_rows(tool_workdir, tool_inputs, tmp_path):
    """--combine, --mix with an alpha strip, --negative, and strips over w and t0."""
    from semantica_jax.tools import sample

    png, jpg, npy = (tool_inputs[k] for k in ("png", "jpg", "npy"))
    notes = []
    run = lambda name, **kw: sample.make_variations(  # noqa: E731
        tool_workdir,
        kw.pop("images", [png, jpg]),
        str(tmp_path / name),
        num=2,
        steps=2,
        log=notes.append,
        **kw,
    )
    assert _rows(run("combine.png", combine=True)) == 1
    mixed = run("mix.png", images=[], mix=[png, jpg], alpha=[0.0, 0.5, 1.0])
    assert _rows(mixed) == 3
    grid = np.asarray(Image.open(mixed))
    # alpha = 0 and 1 rows show a and b; the middle row their pixel blend.
    a, b = (grid[2 + r * CELL : 2 + r * CELL + SIZE, 2 : 2 + SIZE].astype(float) for r in (0, 2))
    middle = grid[2 + CELL : 2 + CELL + SIZE, 2 : 2 + SIZE].astype(float)
    assert np.abs(middle - (a + b) / 2).max() <= 1.0
    assert _rows(run("neg.png", images=[png], negative=npy, negative_scale=1.0)) == 1
    strip = run("strip.png", images=[png], guidance=[0.0, 1.0], strength=[0.3, 1.0])
    assert _rows(strip) == 4
    assert any("rows: input 0 w=0 t0=0.3" in n for n in notes)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(mix=["a.png"]), "--mix takes two images"),
        (dict(strength=[0.0]), "--strength must be finite and in (0, 1]"),
        (dict(strength=[1.5]), "--strength must be"),
        (dict(mix=["x", "y"], alpha=[2.0]), "--alpha must be"),
        (dict(negative_scale=float("nan"), negative="x.png"), "--negative_scale must be"),
        (dict(combine=True, mix=["x", "y"]), "exclusive"),
        (dict(preprocess="mnist", invert="sideways"), "--invert must be one of"),
    ],
)
def test_control_flags_are_checked_before_any_work(tool_workdir, tmp_path, kw, words):
    from semantica_jax.errors import UserError
    from semantica_jax.tools import sample

    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        sample.make_variations(tool_workdir, ["a.png"], str(tmp_path / "g.png"), **kw)
    assert not (tmp_path / "g.png").exists()


def test_dark_digit_on_white_is_inverted_and_centred(tool_workdir, tmp_path):
    """A user's dark-on-white digit reaches the model light on dark and centred."""
    from semantica_jax.tools import sample
    from semantica_jax.utils import digits

    photo = np.full((90, 70, 3), 235, np.uint8)  # a light page
    photo[10:60, 8:18] = 20  # a dark stroke, off-centre
    photo[10:18, 8:40] = 20
    path = str(tmp_path / "seven.png")
    Image.fromarray(photo).save(path)
    notes = []
    out = sample.make_variations(
        tool_workdir, [path], str(tmp_path / "g.png"), num=1, steps=2, log=notes.append
    )
    assert any("inverted (its border is brighter" in n for n in notes)
    shown = np.asarray(Image.open(out))[2 : 2 + SIZE, 2 : 2 + SIZE]
    expected, _ = digits.prepare(
        np.asarray(Image.fromarray(photo).convert("L"))[..., None],
        invert="auto",
        centre=True,
        size=SIZE,
    )
    np.testing.assert_array_equal(shown, expected[..., 0])
    assert shown[0].max() == 0 and shown.max() == 255  # black border, full-range ink
