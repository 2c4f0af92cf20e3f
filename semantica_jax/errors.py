"""The one error policy of every job and tool, and the exceptions it knows.

* `UserError` (and, by the library's convention, `ValueError` and `FileNotFoundError`: a bad
  config value, a bad input file, a missing workdir): the user's to fix. Reported as ONE
  `error: ...` line on stderr, exit code 2, no traceback.
* `NonFiniteError`: training or a computation produced NaN/Inf; the state of that step was
  not kept. One `error: ...` line, exit code 1.
* A full disk (ENOSPC/EDQUOT anywhere in the exception's chain, e.g. inside an Orbax save):
  one `error:` line naming the path, exit code 1; nothing is lost, since checkpoints are
  committed atomically and the run resumes from the last complete one.
* Anything else is a bug: the traceback is shown and the exit code is 1.

`reported()` is the only place that maps exceptions to exit codes; `tools.cli.start` and
`main` run their work inside it.
"""

from __future__ import annotations

import contextlib
import errno
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


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# TensorStore (Orbax's array writer) reports ENOSPC as a ValueError("RESOURCE_EXHAUSTED: ...
# No space left on device [os_error_code='28']"), not as an OSError.
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


def is_no_space_text(text: str) -> bool:
    return any(t in text for t in NO_SPACE_TEXT)


def disk_full(err: BaseException | None) -> BaseException | None:
    """The out-of-space error in `err`'s cause/context chain, or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            return err
        if is_no_space_text(str(err)):
            return err
        err = err.__cause__ or err.__context__
    return None


def message(err: BaseException) -> str:
    """The one line reported for a known error."""
    full = disk_full(err)
    if full is not None:
        filename = getattr(full, "filename", None)
        where = f" writing {filename}" if filename else ""
        return (
            f"no space left on device{where}; free space (or point --workdir / the cache dir "
            "elsewhere) and run the same command again: the last complete checkpoint is kept "
            "and the run resumes from it"
        )
    return str(err) or type(err).__name__


def exit_code(err: BaseException) -> int | None:
    """The exit code of a reported error, or None for a bug (the traceback is kept)."""
    if disk_full(err) is not None:
        return EXIT_FAILURE
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
        fail(message(err), code)
