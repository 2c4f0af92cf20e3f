"""The XLA:CPU flags this project sets by default, measured to speed up its step.

`apply_defaults(environ)` adds each default to XLA_FLAGS unless the user's XLA_FLAGS
already names that flag (theirs wins; `--xla_cpu_experimental_ynn_fusion_type=-dot` turns
this one off). It must run before JAX creates its CPU backend: every job and tool calls it
from `tools.cli.start`, the benchmarks from their child processes. The flags only affect
the CPU backend; on a GPU or TPU they are ignored.

- `--xla_cpu_experimental_ynn_fusion_type=dot`: matmuls and the convolutions XLA lowers to
  them run as YNNPACK (XNNPACK) fusions. Default train step on 2 cores of an Intel Xeon
  (AVX-512, AMX): 146 vs 107 images/s, sampler likewise (README "Speed"; measured with
  `benchmarks/train_throughput.py --no_xla_defaults` side by side). Adding `eltwise`,
  `reduce` or `individual_convolution` fusions was slower (126, 108, 130 images/s).

The YNN fusion is not added when XLA_FLAGS forces several host devices: with 2 devices
and the batch sharded over them, the guided sampler returned other images for 3 of 50
samples than on one device (identical without the flag, and identical unguided;
jax 0.10.2), so it is off wherever the CPU is split. `benchmarks/ynn_devices_check.py`
reproduces it on random weights (samples 0-2 of 50, from 8 guided steps on; one guided
forward pass agrees): rerun it before turning the fusion back on with a newer jax.

`apply_sampling_devices(environ, batch_size)` (`main --mode=eval`) splits the CPU into
one XLA device per core (`--xla_force_host_platform_device_count`), so that the
sampler's batch, sharded over the mesh, runs as independent parts instead of every op
split across the cores, and turns the default YNN fusion off with it: guided DDPM at
batch 50 on 2 cores of the Xeon, 13.5 images/s against 8.5 on one device with
the fusion (README "Sampler"). Training keeps one device and the fusion.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "dot"}


def with_defaults(xla_flags: str) -> str:
    """XLA_FLAGS with every default the string does not already set appended.

    Unchanged where XLA_FLAGS forces several host devices: the YNN fusion is wrong there
    (module doc).
    """
    parts = xla_flags.split()
    if forced_devices(xla_flags) > 1:
        return xla_flags
    for name, value in DEFAULTS.items():
        if flag_value(xla_flags, name) is None:
            parts.append(f"--{name}={value}")
    return " ".join(parts)


def apply_defaults(environ: MutableMapping[str, str]) -> str:
    """Sets environ['XLA_FLAGS'] to `with_defaults` of its value; returns the new value."""
    environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""))
    return environ["XLA_FLAGS"]


DEVICE_COUNT = "xla_force_host_platform_device_count"


def flag_value(xla_flags: str, name: str) -> str | None:
    """The value XLA_FLAGS gives flag `name` (without dashes); None when it is not named."""
    for part in xla_flags.split():
        key, _, value = part.lstrip("-").partition("=")
        if key == name:
            return value
    return None


def forced_devices(xla_flags: str) -> int:
    """The host device count XLA_FLAGS forces (1 when it names none)."""
    return int(flag_value(xla_flags, DEVICE_COUNT) or 1)


def sampling_device_count(batch_size: int, cores: int) -> int:
    """The most CPU devices, at most one per core, that split `batch_size` evenly."""
    return max(n for n in range(1, max(cores, 1) + 1) if batch_size % n == 0)


def apply_sampling_devices(
    environ: MutableMapping[str, str], batch_size: int, cores: int | None = None
) -> str:
    """Adds `--xla_force_host_platform_device_count` for sampling unless XLA_FLAGS sets it.

    With more than one device, the default YNN fusion (`with_defaults`) is dropped from
    XLA_FLAGS (module doc). Must run before JAX creates its CPU backend. `cores`
    defaults to the cores this process may run on. Returns the new XLA_FLAGS.
    """
    flags = environ.get("XLA_FLAGS", "")
    if flag_value(flags, DEVICE_COUNT) is not None:
        return flags
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    count = sampling_device_count(int(batch_size), cores)
    if count > 1:
        defaults = {f"--{name}={value}" for name, value in DEFAULTS.items()}
        parts = [p for p in flags.split() if p not in defaults]
        environ["XLA_FLAGS"] = " ".join([*parts, f"--{DEVICE_COUNT}={count}"])
    return environ.get("XLA_FLAGS", "")
