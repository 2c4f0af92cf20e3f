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
"""

from __future__ import annotations

from collections.abc import MutableMapping

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "dot"}


def with_defaults(xla_flags: str) -> str:
    """XLA_FLAGS with every default the string does not already set appended."""
    parts = xla_flags.split()
    for name, value in DEFAULTS.items():
        if not any(p.lstrip("-").split("=", 1)[0] == name for p in parts):
            parts.append(f"--{name}={value}")
    return " ".join(parts)


def apply_defaults(environ: MutableMapping[str, str]) -> str:
    """Sets environ['XLA_FLAGS'] to `with_defaults` of its value; returns the new value."""
    environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""))
    return environ["XLA_FLAGS"]
