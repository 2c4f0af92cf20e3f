"""tools/cli.py: output paths refused before any work."""

import os

import pytest

from semantica_jax.errors import UserError
from semantica_jax.tools import cli


def test_check_output_file(tmp_path):
    cli.check_output_file(str(tmp_path / "grid.png"))
    cli.check_output_file(str(tmp_path / "new" / "deeper" / "grid.png"))  # created on write
    (tmp_path / "a_file").write_text("x")
    cases = [
        ("", "is empty"),
        (str(tmp_path), "is a directory"),
        (str(tmp_path / "a_file" / "grid.png"), "is a file, not a directory"),
    ]
    if os.geteuid() != 0:  # root writes anywhere: the read-only case needs a normal user
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append((str(ro / "grid.png"), "is not writable"))
    for path, words in cases:
        with pytest.raises(UserError, match=words):
            cli.check_output_file(path)
    assert sorted(os.listdir(tmp_path)) == sorted(["a_file"] + (["ro"] if len(cases) > 3 else []))
