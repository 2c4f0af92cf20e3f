"""How every job and tool starts: flags defined, parsed, logs set, work run under one policy.

`start(define_flags, required, argv)` is the one start-up of `main` and of every tool: it
defines the caller's flags, answers `--help` (exit 0), turns a bad flag or `--config.X`
override into one `error:` line (exit 2) and sets the logs. The work itself then runs inside
`errors.reported()`, the one mapping from exceptions to exit codes.

Also here, for the tools that read a training workdir: the shared flags
(`define_workdir_flags`), their checks (`check_sampler_flags`) and the loading of the user's
input images (`load_inputs`).
"""

from __future__ import annotations

import functools
import logging as py_logging
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import flags
from absl import logging as absl_logging

from semantica_jax.errors import UserError, disk_full, fail, is_no_space_text
from semantica_jax.utils import digits, xla_cpu

_HELP = ("--help", "-h", "--helpshort", "--helpfull", "-?")
# Output grids are upscaled in memory: 32x of a 28 px grid is already ~900 px per digit.
MAX_SCALE = 32
MAX_STEPS = 10_000
Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    """The tools' sink for notes and progress: one line on stderr (stdout keeps results)."""
    print(message, file=sys.stderr, flush=True)


def parse_flags_or_exit(argv: list[str], allow_args: bool = True) -> list[str]:
    """absl flag parsing where a bad flag or `--config.X` override is one `error:` line.

    Args:
      argv: the full command line (argv[0] is the program).
      allow_args: False makes positional arguments an error too.

    Returns:
      argv[0] and the positional arguments.
    """
    # ml_collections reads `--config.X` overrides from sys.argv, not from the argv parsed:
    # make them the same, so that `run(argv)` in-process parses exactly like a command line.
    sys.argv = list(argv)
    try:
        rest = flags.FLAGS(argv)
    # ml_collections reports a bad override as AttributeError/KeyError (unknown field) or
    # TypeError/ValueError (value of the wrong type), not as flags.Error; loading a config
    # file runs the user's code, which can raise anything (OSError, SyntaxError, ...).
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if isinstance(e, AttributeError | KeyError):
            reason = reason.strip("\"'")
        culprit = next((a for a in argv[1:] if reason and reason in a), None)
        if culprit and culprit.startswith("--config."):
            field = culprit.split("=", 1)[0][len("--config.") :]
            fail(f"bad override {culprit}: no config field {field!r}")
        fail(reason)
    if not allow_args and len(rest) > 1:
        fail(f"unexpected arguments: {' '.join(rest[1:])}; every input is a --flag")
    return rest


def _print_help(doc: str, holders: dict[str, Any]) -> None:
    lines = [doc.strip(), "", "flags:"]
    for holder in holders.values():
        flag = flags.FLAGS[holder.name]
        lines.append(f"  --{flag.name}: {flag.help} (default: {flag.default_as_str or 'none'})")
    print("\n".join(lines))


def quiet_library_logs() -> None:
    """Jobs: INFO lines of our code and clu (progress, ETA); libraries from WARNING up."""

    def keep(record: py_logging.LogRecord) -> bool:
        if (record.exc_info and disk_full(record.exc_info[1]) is not None) or (
            record.levelno >= py_logging.ERROR and is_no_space_text(str(record.msg))
        ):
            return False  # Orbax's threads log it with tracebacks; reported() says it once
        own = "semantica_jax" in record.pathname or "/clu/" in record.pathname
        # Python's WARNING (30): absl's logging.WARNING is its own scale (1), not a levelno.
        return own or record.levelno >= py_logging.WARNING

    absl_logging.get_absl_handler().addFilter(keep)
    absl_logging.set_verbosity(absl_logging.INFO)


def quiet_tool_logs(level: str = "error") -> None:
    """Tools talk through print: absl (our libraries, Orbax) below `level` is hidden.

    Args:
      level: absl verbosity name. The tools use "error": restoring one item of a training
        checkpoint makes Orbax warn about a metadata file only a full restore reads.
    """
    absl_logging.set_verbosity(level)


def start(
    define_flags: Callable[[], dict[str, Any]],
    required: list[str],
    argv: list[str] | None = None,
    *,
    doc: str = "",
    role: str = "tool",
    allow_args: bool = False,
) -> dict[str, Any]:
    """The start of every job and tool: flags defined and parsed, logs set.

    Args:
      define_flags: defines the caller's flags; returns {name: absl FlagHolder}.
      required: flags that must be given.
      argv: the command line; None reads sys.argv.
      doc: what `--help` prints above the flags (the caller's module docstring).
      role: "tool" (talks through print; library logs hidden) or "job" (logs INFO).
      allow_args: positional arguments are allowed (returned under "args").

    Returns:
      {name: parsed value} for the holders `define_flags` returned, plus "args".
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    xla_cpu.apply_defaults(os.environ)  # before JAX creates its backend
    argv = list(sys.argv if argv is None else argv)
    holders = define_flags()
    if any(arg in _HELP for arg in argv[1:]):
        _print_help(doc, holders)
        sys.exit(0)
    missing = [f"--{name}" for name in required if not _given(name, argv)]
    if missing:
        fail(f"missing required flag(s) {', '.join(missing)}; see --help")
    rest = parse_flags_or_exit(argv, allow_args=allow_args)
    absl_logging.use_absl_handler()
    sys.unraisablehook = _drop_closed_loop_callbacks
    if role == "job":
        quiet_library_logs()
    else:
        quiet_tool_logs()
    values = {}
    for name, holder in holders.items():
        try:
            values[name] = holder.value  # a config file is loaded (and run) here
            if type(values[name]).__name__ == "_ErrorConfig":
                getattr(values[name], "load_error")  # noqa: B009 - raises the deferred error
        except Exception as err:  # noqa: BLE001 - a user's config file can raise anything
            reason = " ".join(str(err).split())[:400] or type(err).__name__
            fail(f"--{name}: {reason}")
    values["args"] = rest[1:]
    return values


def _drop_closed_loop_callbacks(unraisable) -> None:
    """sys.unraisablehook: after an Orbax save fails (e.g. a full disk), TensorStore's
    pending write callbacks find the save's event loop closed and each prints a traceback.
    Those say nothing beyond the one error line `errors.reported` prints; the rest go to
    the default hook."""
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


def _given(name: str, argv: list[str]) -> bool:
    return any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in argv[1:])


# --- tools on a training workdir -------------------------------------------------------------


def define_workdir_flags(scale_help: str) -> dict[str, Any]:
    """The flags of every tool on a training workdir: --workdir, --steps, --kind,
    --cache_dir, --scale. Defined on demand, not at import, by the tool being run."""
    from semantica_jax.diffusion import samplers

    return dict(
        workdir=flags.DEFINE_string(
            "workdir", None, "Training workdir (config.json, checkpoints/)."
        ),
        steps=flags.DEFINE_integer("steps", 0, "Sampler steps; 0 = the run's sampler.num_steps."),
        kind=flags.DEFINE_enum("kind", "", ["", *samplers.KINDS], "Sampler; '' = the run's."),
        cache_dir=flags.DEFINE_string("cache_dir", "", "Encoder cache dir; '' = the run's."),
        scale=flags.DEFINE_integer("scale", 1, scale_help),
    )


def check_sampler_flags(steps: int, kind: str, scale: int) -> dict[str, Any]:
    """Checks the shared sampler flags; returns the sampler overrides they ask for.

    Raises:
      UserError: a step count outside [0, MAX_STEPS], a scale outside [1, MAX_SCALE] or an
        unknown sampler kind.
    """
    from semantica_jax.diffusion import samplers

    if steps < 0:
        raise UserError(f"--steps must be >= 0 (0 = the run's sampler.num_steps), got {steps}")
    if not 1 <= scale <= MAX_SCALE:
        raise UserError(f"--scale must be in [1, {MAX_SCALE}], got {scale}")
    if steps > MAX_STEPS:
        raise UserError(f"--steps must be <= {MAX_STEPS}, got {steps}")
    if kind and kind not in samplers.KINDS:
        raise UserError(f"--kind must be one of {', '.join(samplers.KINDS)}, got {kind!r}")
    overrides: dict[str, Any] = {"num_steps": int(steps)} if steps else {}
    if kind:
        overrides["kind"] = kind
    return overrides


def check_output_file(path: str, flag: str = "--out") -> None:
    """Refuses, before any work, an output path that could not be written.

    Raises:
      UserError: `path` is empty or an existing directory, or its nearest existing
        ancestor is not a writable directory (a file, or a read-only file system).
    """
    if not path:
        raise UserError(f"{flag} is empty; give a file path")
    if os.path.isdir(path):
        raise UserError(f"{flag}={path} is a directory; give a file path inside it")
    _check_writable_ancestor(path, flag)


def check_output_dir(path: str, flag: str = "--workdir") -> None:
    """Refuses, before any work, a directory path that could not be created or written.

    Raises:
      UserError: `path` is empty or an existing file, or it (or its nearest existing
        ancestor) is not a writable directory.
    """
    if not path:
        raise UserError(f"{flag} is empty; give a directory path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag}={path} is a file, not a directory; choose another path")
    _check_writable_ancestor(os.path.join(path, "x"), flag)


def _check_writable_ancestor(path: str, flag: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{flag}={path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag}={path}: {parent} is not writable; choose another path")


PREPROCESS_CHOICES = ("mnist", "none")


def input_defaults(config, invert: str, preprocess: str) -> tuple[str, str]:
    """The tools' --invert/--preprocess resolved for a run: 'default' means auto and mnist
    for an MNIST-trained run, no and none otherwise."""
    mnist = config.data.dataset == "mnist" and int(config.data.channels) == 1
    return (
        ("auto" if mnist else "no") if invert == "default" else invert,
        ("mnist" if mnist else "none") if preprocess == "default" else preprocess,
    )


def define_input_flags() -> dict[str, Any]:
    """--invert and --preprocess, shared by the tools that read user images."""
    return dict(
        invert=flags.DEFINE_enum(
            "invert",
            "default",
            ["default", *digits.INVERT_CHOICES],
            "auto: invert an image whose border is brighter than its centre (dark ink on "
            "white), with a note; yes | no. default: auto for MNIST-trained runs, else no.",
        ),
        preprocess=flags.DEFINE_enum(
            "preprocess",
            "default",
            ["default", *PREPROCESS_CHOICES],
            "mnist: size-normalise the digit to 20x20 and centre its centre of mass in 28x28 "
            "as MNIST does; none: only resize. default: mnist for MNIST-trained runs.",
        ),
    )


def load_inputs(
    paths: list[str],
    image_size: int,
    channels: int,
    log: Log | None = None,
    invert: str = "no",
    preprocess: str = "none",
):
    """Reads user images converted to the model's size and colour.

    Args:
      paths: PNG/JPEG/.npy files (see `image_io.load_image`).
      image_size: S; channels: C of the model.
      log: `log(str)` for conversion notes; default prints `note: ...` on stderr.
      invert: 'auto' (invert when the border is brighter than the centre) | 'yes' | 'no'.
      preprocess: 'mnist' (centre the digit as MNIST does; 1-channel models) | 'none'.

    Returns:
      uint8 [N, S, S, C].

    Raises:
      UserError: no path, or a file is missing or unusable (the message names it).
    """
    from semantica_jax.utils import image_io

    log = log or stderr_log
    if not paths:
        raise UserError("no input image; pass --image=PATH (repeat it for several)")
    if invert not in digits.INVERT_CHOICES:
        raise UserError(f"--invert must be one of {', '.join(digits.INVERT_CHOICES)}")
    if preprocess not in PREPROCESS_CHOICES:
        raise UserError(f"--preprocess must be one of {', '.join(PREPROCESS_CHOICES)}")
    if preprocess == "mnist" and int(channels) != 1:
        raise UserError("--preprocess=mnist centres grey digits; this run is RGB: use none")
    transform = None
    if invert != "no" or preprocess == "mnist":
        transform = functools.partial(
            digits.prepare, invert=invert, centre=preprocess == "mnist", size=int(image_size)
        )
    images = []
    for path in paths:
        try:
            image, note = image_io.load_image(path, int(image_size), int(channels), transform)
        except image_io.ImageReadError as err:
            raise UserError(str(err)) from err
        if note:
            log(f"note: {path}: converted {note}")
        images.append(image)
    return np.stack(images)
