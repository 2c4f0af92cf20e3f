"""Command-line plumbing shared by the entry points (main, demo, sample, denoise, similarity).

Defines no flags: each entry point defines its own, then hands `parse_flags_or_exit` to
`absl.app.run(..., flags_parser=...)` or calls it itself. Problems the user can fix (a bad
flag, a bad input file) are ONE `error: ...` line on stderr and a non-zero exit code, not
a traceback.
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from absl import flags
from absl import logging as absl_logging

EXIT_USAGE = 2  # bad flag, bad override, bad input: the user's to fix


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Prints `error: message` on stderr and exits with `code`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def one_line_errors(*errors: type[BaseException], code: int = EXIT_USAGE) -> Iterator[None]:
    """Turns the given exception types raised inside the block into `fail(str(err), code)`."""
    try:
        yield
    except errors as err:
        fail(str(err), code)


def parse_flags_or_exit(argv: list[str], allow_args: bool = True) -> list[str]:
    """absl flag parsing where a bad flag or `--config.X` override is one `error:` line.

    Usable as `app.run(main, flags_parser=parse_flags_or_exit)`.

    Args:
      argv: the full command line (argv[0] is the program).
      allow_args: False makes positional arguments an error too.

    Returns:
      argv[0] and the positional arguments.
    """
    try:
        rest = flags.FLAGS(argv)
    # ml_collections reports a bad override as AttributeError/KeyError (unknown field) or
    # TypeError/ValueError (value of the wrong type), not as flags.Error.
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        reason = str(e).strip().splitlines()[-1]
        if isinstance(e, AttributeError | KeyError):
            reason = reason.strip("\"'")
        culprit = next((a for a in argv[1:] if reason and reason in a), None)
        if culprit and culprit.startswith("--config."):
            field = culprit.split("=", 1)[0][len("--config.") :]
            fail(f"bad override {culprit}: no config field {field!r}")
        fail(reason)
    if not allow_args and len(rest) > 1:
        fail(f"unexpected arguments: {' '.join(rest[1:])}")
    return rest


def quiet_library_logs() -> None:
    """Keeps INFO lines of our code and clu (progress, ETA); libraries speak from WARNING up."""

    def keep(record: py_logging.LogRecord) -> bool:
        own = "semantica_jax" in record.pathname or "/clu/" in record.pathname
        # Python's WARNING (30): absl's logging.WARNING is its own scale (1), not a levelno.
        return own or record.levelno >= py_logging.WARNING

    absl_logging.get_absl_handler().addFilter(keep)


def quiet_tool_logs(level: str = "error") -> None:
    """For tools that talk through print: absl/Orbax below `level`, and TF's C++ logs, hidden.

    Args:
      level: absl verbosity name ("warning", "error"). The tools use "error": restoring one
        item of a training checkpoint makes Orbax warn about a metadata file that only the
        full CheckpointManager restore writes/reads.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    absl_logging.set_verbosity(level)


def start_tool(
    define_flags: Callable[[], dict[str, Any]],
    required: list[str],
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """The start of every tool's `run`: flags defined and parsed, library logs quieted.

    Args:
      define_flags: defines the tool's flags; returns {name: absl FlagHolder}.
      required: flags that must be given.
      argv: the command line; None reads sys.argv. Positional arguments are an error.

    Returns:
      {name: parsed value} for the holders `define_flags` returned.
    """
    holders = define_flags()
    flags.mark_flags_as_required(required)
    parse_flags_or_exit(sys.argv if argv is None else argv, allow_args=False)
    quiet_tool_logs()
    return {name: holder.value for name, holder in holders.items()}
