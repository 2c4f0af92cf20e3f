"""Atomic file and directory writes: a reader sees the old content or the new, never half.

Files: the content goes to a temp file in the destination's directory (same filesystem, so
the final `os.replace` is atomic), which is removed again if writing fails.

* `write_bytes_atomic(path, write_fn, binary=True)`: the primitive; `write_fn(fileobj)`.
* `write_json(path, obj, ...)`, `write_text(path, text)`, `save_figure(fig, path)`.

Directories (caches and checkpoints that hold several files): build the content in
`temp_dir_beside(path)`, then `publish_dir(tmp, path)`; the caller removes `tmp` in a
`finally` (it is gone after a successful publish).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import IO, Any


def write_bytes_atomic(path: str, write_fn: Callable[[IO], Any], binary: bool = True) -> str:
    """Calls `write_fn(fileobj)` on a temp file next to `path`, then renames it onto `path`.

    Args:
      path: destination; its directory is created if missing.
      write_fn: writes the whole content into the open file object it is given.
      binary: open the temp file in binary mode ("wb"); False opens it as text ("w").

    Returns:
      `path`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # A dot name: directory listings and globs of the destination's kind skip it.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix="_" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write_fn(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str, text: str) -> str:
    """Writes `text` to `path` atomically; returns `path`."""
    return write_bytes_atomic(path, lambda f: f.write(text), binary=False)


def write_json(
    path: str,
    obj: Any,
    *,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """Writes `obj` as JSON (indent 2, no trailing newline) to `path` atomically.

    Args:
      path: destination.
      obj: JSON-able value.
      sort_keys: sort the keys of every dict (stable diffs between runs).
      default: converts values json cannot encode (e.g. `float` for numpy scalars, `str`
        for anything, `list` for tuples of arrays); None raises TypeError on them.

    Returns:
      `path`.
    """
    return write_bytes_atomic(
        path,
        lambda f: json.dump(obj, f, indent=2, sort_keys=sort_keys, default=default),
        binary=False,
    )


def read_json(path: str) -> Any:
    """The JSON value in `path`, or None if it is missing or does not parse."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_figure(fig: Any, path: str, **savefig_kwargs: Any) -> str:
    """Saves a matplotlib figure to `path` atomically and closes it; returns `path`.

    Args:
      fig: a `matplotlib.figure.Figure` (made with pyplot or with a bare Agg canvas).
      path: destination; its extension picks the format ("png" when there is none) unless
        `format` is given.
      **savefig_kwargs: passed to `fig.savefig` (e.g. dpi=100, format="png").
    """
    # A file object carries no extension, so the format is named explicitly.
    kwargs = {"format": os.path.splitext(path)[1][1:].lower() or "png", **savefig_kwargs}
    try:
        write_bytes_atomic(path, lambda f: fig.savefig(f, **kwargs))
    finally:
        # Only pyplot keeps figures alive; if it was never imported there is nothing to close
        # (and importing it here would pick a GUI backend for callers that avoid pyplot).
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
    return path


def temp_dir_beside(path: str) -> str:
    """Creates and returns an empty `.NAME.tmp-XXXXXXXX` dir next to `path` (NAME its basename).

    Building a directory there and `publish_dir`-ing it makes the whole directory appear at
    once; the dot name keeps it out of listings of the parent. Parents are created.
    """
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)


def publish_dir(tmp: str, path: str) -> bool:
    """Renames the finished dir `tmp` onto `path` (absent or empty).

    Returns:
      True if `tmp` is now `path`; False if another process published a non-empty `path`
      first (the rename fails): the caller decides whether theirs is as good as ours.

    Raises:
      OSError: the rename failed for another reason.
    """
    try:
        os.rename(tmp, path)
    except OSError:
        if not os.path.isdir(path):
            raise
        return False
    return True
