"""One table of bad inputs across every entry point: each is one `error:` line, exit 2, no
traceback, and nothing new in the workdir or next to --out.

Cheap cases run in-process through each entry's `run(argv)` (the same start-up and error
policy as the command line; absl flags defined by a run are removed afterwards), on the
session's tiny trained workdir. Slow-path cases (real subprocesses, 8 devices, kills,
damaged checkpoints and caches) live in the module tests named in the README's
"Reliability" section.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
from PIL import Image

ENTRIES = {
    "main": "semantica_jax.main",
    "sample": "semantica_jax.tools.sample",
    "denoise": "semantica_jax.tools.denoise",
    "similarity": "semantica_jax.tools.similarity",
    "augment": "semantica_jax.tools.augment",
}
TINY = "--config=configs/mnist.py:tiny"

# (entry, argv with {placeholders}, words the error line must contain)
CASES = {
    # --- main: config file, overrides, flags, workdir -----------------------------------
    "main: config file missing": ("main", ["--config={tmp}/nope.py", "--workdir={out}"], "nope.py"),
    "main: config syntax error": ("main", ["--config={syntax}", "--workdir={out}"], "syntax"),
    "main: get_config raises": ("main", ["--config={raises}", "--workdir={out}"], "broken"),
    "main: unknown variant": (
        "main",
        ["--config=configs/mnist.py:nope", "--workdir={out}"],
        "nope",
    ),
    "main: unknown field": (
        "main",
        [TINY, "--workdir={out}", "--config.nonexistent=1"],
        "nonexistent",
    ),
    "main: int field given text": (
        "main",
        [TINY, "--workdir={out}", "--config.train.num_steps=abc"],
        "num_steps",
    ),
    "main: batch size 0": (
        "main",
        [TINY, "--workdir={out}", "--config.train.batch_size=0"],
        "batch_size",
    ),
    "main: negative batch": (
        "main",
        [TINY, "--workdir={out}", "--config.train.batch_size=-4"],
        "batch_size",
    ),
    "main: NaN learning rate": (
        "main",
        [TINY, "--workdir={out}", "--config.train.learning_rate=nan"],
        "learning_rate",
    ),
    "main: zero learning rate": (
        "main",
        [TINY, "--workdir={out}", "--config.train.learning_rate=0"],
        "learning_rate",
    ),
    "main: SimCLR view scale 1.5": (
        "main",
        [TINY, "--workdir={out}", "--config.encoder.aug_scale=1.5"],
        "config.encoder.aug_scale=1.5 must be in",
    ),
    "main: keep no checkpoint": (
        "main",
        [TINY, "--workdir={out}", "--config.train.keep_checkpoints=0"],
        "keep_checkpoints",
    ),
    "main: negative encoder steps": (
        "main",
        [TINY, "--workdir={out}", "--config.encoder.num_steps=-1"],
        "encoder.num_steps",
    ),
    "main: unknown lr decay": (
        "main",
        [TINY, "--workdir={out}", "--config.train.lr_decay=linear"],
        "lr_decay",
    ),
    "main: unknown stem": ("main", [TINY, "--workdir={out}", "--config.model.stem=nope"], "stem"),
    "main: width not divisible by heads": (
        "main",
        [TINY, "--workdir={out}", "--config.model.transformer_width=33"],
        "heads",
    ),
    "main: unknown schedule": (
        "main",
        [TINY, "--workdir={out}", "--config.diffusion.schedule=nope"],
        "schedule",
    ),
    "main: Min-SNR gamma 0": (
        "main",
        [TINY, "--workdir={out}", "--config.diffusion.min_snr_gamma=0"],
        "config.diffusion.min_snr_gamma=0.0 must be positive",
    ),
    "main: unknown prediction": (
        "main",
        [TINY, "--workdir={out}", "--config.diffusion.prediction=nope"],
        "prediction",
    ),
    "main: unknown episodes": (
        "main",
        [TINY, "--workdir={out}", "--config.episodes.kind=nope"],
        "episodes.kind",
    ),
    "main: unknown sampler": (
        "main",
        [TINY, "--workdir={out}", "--config.sampler.kind=nope"],
        "sampler.kind",
    ),
    "main: NaN guidance": (
        "main",
        [TINY, "--workdir={out}", "--config.sampler.guidance=nan"],
        "guidance",
    ),
    "main: unknown encoder objective": (
        "main",
        [TINY, "--workdir={out}", "--config.encoder.objective=nope"],
        "objective",
    ),
    "main: positional argument": ("main", [TINY, "--workdir={out}", "extra_arg"], "extra_arg"),
    "main: unknown mode": ("main", [TINY, "--workdir={out}", "--mode=bogus"], "mode"),
    "main: unknown flag": ("main", [TINY, "--workdir={out}", "--bogus=1"], "bogus"),
    "main: missing workdir flag": ("main", [TINY], "--workdir"),
    "main: missing config flag": ("main", ["--workdir={out}"], "--config"),
    "main: workdir is a file": ("main", [TINY, "--workdir={file}"], "is a file"),
    "main: eval of an empty dir": ("main", [TINY, "--workdir={out}", "--mode=eval"], "train"),
    "main: encoder mode, batch 0": (
        "main",
        [TINY, "--workdir={out}", "--mode=encoder", "--config.encoder.batch_size=0"],
        "batch_size",
    ),
    # --- sample ---------------------------------------------------------------------------
    "sample: missing --workdir": ("sample", ["--image={png}", "--out={out}/g.png"], "--workdir"),
    "sample: missing --image": ("sample", ["--workdir={run}", "--out={out}/g.png"], "--image"),
    "sample: workdir missing": (
        "sample",
        ["--workdir={tmp}/nope", "--image={png}", "--out={out}/g.png"],
        "nope",
    ),
    "sample: not a training workdir": (
        "sample",
        ["--workdir={out}", "--image={png}", "--out={out}/g.png"],
        "workdir",
    ),
    "sample: image missing": (
        "sample",
        ["--workdir={run}", "--image={tmp}/no.png", "--out={out}/g.png"],
        "no such file",
    ),
    "sample: image unreadable": (
        "sample",
        ["--workdir={run}", "--image={bad}", "--out={out}/g.png"],
        "not a readable image",
    ),
    "sample: npy of wrong shape": (
        "sample",
        ["--workdir={run}", "--image={npy_shape}", "--out={out}/g.png"],
        "must hold",
    ),
    "sample: empty npy": (
        "sample",
        ["--workdir={run}", "--image={npy_empty}", "--out={out}/g.png"],
        "npy",
    ),
    "sample: complex npy": (
        "sample",
        ["--workdir={run}", "--image={npy_complex}", "--out={out}/g.png"],
        "npy",
    ),
    "sample: NaN npy": (
        "sample",
        ["--workdir={run}", "--image={npy_nan}", "--out={out}/g.png"],
        "NaN",
    ),
    "sample: guidance nan": (
        "sample",
        ["--workdir={run}", "--image={png}", "--guidance=nan", "--out={out}/g.png"],
        "--guidance",
    ),
    "sample: guidance inf": (
        "sample",
        ["--workdir={run}", "--image={png}", "--guidance=inf", "--out={out}/g.png"],
        "--guidance",
    ),
    "sample: guidance 1e30": (
        "sample",
        ["--workdir={run}", "--image={png}", "--guidance=1e30", "--out={out}/g.png"],
        "--guidance",
    ),
    "sample: negative seed": (
        "sample",
        ["--workdir={run}", "--image={png}", "--seed=-1", "--out={out}/g.png"],
        "--seed",
    ),
    "sample: seed 2**70": (
        "sample",
        ["--workdir={run}", "--image={png}", f"--seed={2**70}", "--out={out}/g.png"],
        "seed",
    ),
    "sample: absurd scale": (
        "sample",
        ["--workdir={run}", "--image={png}", "--scale=100000", "--out={out}/g.png"],
        "--scale",
    ),
    "sample: zero variations": (
        "sample",
        ["--workdir={run}", "--image={png}", "--num=0", "--out={out}/g.png"],
        "--num",
    ),
    "sample: negative steps": (
        "sample",
        ["--workdir={run}", "--image={png}", "--steps=-1", "--out={out}/g.png"],
        "--steps",
    ),
    "sample: too many steps": (
        "sample",
        ["--workdir={run}", "--image={png}", "--steps=100000", "--out={out}/g.png"],
        "--steps",
    ),
    "sample: unknown sampler": (
        "sample",
        ["--workdir={run}", "--image={png}", "--kind=bogus", "--out={out}/g.png"],
        "kind",
    ),
    "sample: out is a directory": (
        "sample",
        ["--workdir={run}", "--image={png}", "--out={out}"],
        "is a directory",
    ),
    "sample: out under a file": (
        "sample",
        ["--workdir={run}", "--image={png}", "--out={file}/g.png"],
        "not a directory",
    ),
    "sample: unknown flag": (
        "sample",
        ["--workdir={run}", "--image={png}", "--bogus", "--out={out}/g.png"],
        "bogus",
    ),
    # --- denoise --------------------------------------------------------------------------
    "denoise: missing --image": ("denoise", ["--workdir={run}", "--out={out}/d.png"], "--image"),
    "denoise: image missing": (
        "denoise",
        ["--workdir={run}", "--image={tmp}/no.png", "--out={out}/d.png"],
        "no such file",
    ),
    "denoise: unknown condition": (
        "denoise",
        ["--workdir={run}", "--image={png}", "--condition=bogus", "--out={out}/d.png"],
        "condition",
    ),
    "denoise: negative noise": (
        "denoise",
        ["--workdir={run}", "--image={png}", "--noise=-1", "--out={out}/d.png"],
        "noise",
    ),
    "denoise: out is a directory": (
        "denoise",
        ["--workdir={run}", "--image={png}", "--out={out}"],
        "is a directory",
    ),
    "denoise: too many steps": (
        "denoise",
        ["--workdir={run}", "--image={png}", "--steps=100000", "--out={out}/d.png"],
        "--steps",
    ),
    # --- similarity -----------------------------------------------------------------------
    "similarity: unknown method": ("similarity", ["--method=bogus", "{png}", "{png}"], "method"),
    "similarity: one image": ("similarity", [TINY, "--method=pixel", "{png}"], "two"),
    "similarity: diffsim without workdir": (
        "similarity",
        ["--method=diffsim", "{png}", "{png}"],
        "--workdir",
    ),
    "similarity: unreadable image": (
        "similarity",
        [TINY, "--method=pixel", "{png}", "{bad}"],
        "bad.png",
    ),
    # --- augment --------------------------------------------------------------------------
    "augment: zero variations": (
        "augment",
        ["--workdir={run}", "--images={labelled}", "--variations=0", "--out={out}/aug"],
        "--variations",
    ),
    "augment: strength 0": (
        "augment",
        ["--workdir={run}", "--images={labelled}", "--strength=0", "--out={out}/aug"],
        "--strength",
    ),
    "augment: strength 1.5": (
        "augment",
        ["--workdir={run}", "--images={labelled}", "--strength=1.5", "--out={out}/aug"],
        "--strength",
    ),
    "augment: images missing": (
        "augment",
        ["--workdir={run}", "--images={tmp}/nope", "--out={out}/aug"],
        "nope",
    ),
    "augment: empty label folder": (
        "augment",
        ["--workdir={run}", "--images={empty_label}", "--out={out}/aug"],
        "empty",
    ),
    "augment: no workdir": (
        "augment",
        ["--workdir={tmp}/nope", "--images={labelled}", "--out={out}/aug"],
        "nope",
    ),
}


def _inputs(tmp) -> dict[str, str]:
    """The bad and good files the table refers to, written once per test into `tmp`."""
    paths = {"tmp": str(tmp), "out": str(tmp / "out"), "file": str(tmp / "a_file")}
    os.makedirs(paths["out"])
    (tmp / "a_file").write_text("not a directory")
    (tmp / "syntax.py").write_text("def get_config(:\n")
    (tmp / "raises.py").write_text("def get_config():\n    raise RuntimeError('broken config')\n")
    paths["syntax"], paths["raises"] = str(tmp / "syntax.py"), str(tmp / "raises.py")
    digit = (np.arange(28 * 28).reshape(28, 28) % 255).astype(np.uint8)
    Image.fromarray(digit).save(tmp / "digit.png")
    paths["png"] = str(tmp / "digit.png")
    (tmp / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths["bad"] = str(tmp / "bad.png")
    for name, array in {
        "npy_shape": np.zeros((2, 3, 4, 5), np.float32),
        "npy_empty": np.zeros((0,), np.float32),
        "npy_complex": np.zeros((28, 28), np.complex64),
        "npy_nan": np.full((28, 28), np.nan, np.float32),
    }.items():
        np.save(tmp / f"{name}.npy", array)
        paths[name] = str(tmp / f"{name}.npy")
    for folder in ("labelled/a", "labelled/b"):
        os.makedirs(tmp / folder)
        Image.fromarray(digit).save(tmp / folder / "x.png")
    os.makedirs(tmp / "empty_label" / "a")
    os.makedirs(tmp / "empty_label" / "b")
    Image.fromarray(digit).save(tmp / "empty_label" / "a" / "x.png")
    paths["labelled"], paths["empty_label"] = str(tmp / "labelled"), str(tmp / "empty_label")
    return paths


def _listing(*dirs: str) -> set[str]:
    return {os.path.join(r, n) for d in dirs for r, ds, fs in os.walk(d) for n in ds + fs}


def test_the_table_spans_every_entry_point():
    assert len(CASES) >= 60
    assert {entry for entry, _, _ in CASES.values()} == set(ENTRIES)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(case, tool_workdir, tmp_path, capsys, monkeypatch):
    from absl import flags

    entry, argv, words = CASES[case]
    paths = _inputs(tmp_path)
    paths["run"] = tool_workdir
    argv = [a.format(**paths) for a in argv]
    before_files = _listing(paths["out"], tool_workdir)
    module = importlib.import_module(ENTRIES[entry])
    monkeypatch.setattr("sys.argv", list(__import__("sys").argv))  # start() sets it
    before_flags = set(flags.FLAGS)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            module.run([entry, *argv])
    finally:
        for name in set(flags.FLAGS) - before_flags:
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2, err[-2000:]
    assert len(lines) == 1 and words in lines[0], err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert _listing(paths["out"], tool_workdir) == before_files
