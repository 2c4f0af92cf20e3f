"""The one error policy of every job and tool, and the exceptions it knows.

* `UserError` (and, by the library's convention, `ValueError` and `FileNotFoundError`: a bad
  config value, a bad input file, a missing workdir): the user's to fix. Reported as ONE
  `error: ...` line on stderr, exit code 2, no traceback.
* `NonFiniteError`: training or a computation produced NaN/Inf; the state of that step was
  not kept. One `error: ...` line, exit code 1.
* Anything else is a bug: the traceback is shown and the exit code is 1.

`reported()` is the only place that maps exceptions to exit codes; `tools.cli.start` and
`main` run their work inside it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import NoReturn

EXIT_USAGE = 2  # bad flag, bad override, bad input: the user's to fix
EXIT_FAILURE = 1  # the run failed (non-finite values) or a bug


class UserError(ValueError):
    """A problem with the user's flags, config or input; the message says how to fix it."""


class NonFiniteError(RuntimeError):
    """A loss, gradient or result became NaN/Inf; the state at that step was not kept."""


# Library code raises ValueError for bad config values and FileNotFoundError for missing
# inputs; both are user errors at the command line.
USER_ERRORS = (UserError, ValueError, FileNotFoundError)


def exit_code(err: BaseException) -> int | None:
    """The exit code of a reported error, or None for a bug (the traceback is kept)."""
    if isinstance(err, NonFiniteError):
        return EXIT_FAILURE
    if isinstance(err, USER_ERRORS):
        return EXIT_USAGE
    return None


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Prints `error: message` (one line) on stderr and exits with `code`."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Runs the block under the policy: user and non-finite errors become `fail(...)`."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised unless the policy knows it
        code = exit_code(err)
        if code is None:
            raise
        fail(str(err) or type(err).__name__, code)
