"""Progress of long loops, the ecosystem's way: clu's `ReportProgress` in library loops.

Every long library loop (decoder and encoder training, the feature net, embedding, TFDS
reading, evaluation sampling) reports rate, percentage and ETA through
`clu.periodic_actions.ReportProgress`, which logs, on the local platform,

    Setting work unit notes: 5.6 steps/s, 40.0% (600/1500), ETA: 2m

every `every_secs` and at the last step (and sets the work unit's notes on a cluster
platform). `loop` logs one line first that names the loop and its unit, so the notes
lines that follow can be attributed. The tools' loops use `tqdm` instead (a bar on
stderr for an interactive user). Loss and accuracy stay in each loop's own log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

DEFAULT_EVERY_SECS = 10.0


def loop(
    total: int,
    what: str,
    *,
    every_secs: float = DEFAULT_EVERY_SECS,
    writer: Any = None,
    log: Callable[[str], None] = logging.info,
) -> Any:
    """A ReportProgress for `total` steps of a loop, announced by one `log` line.

    Args:
      total: the number of steps (calls `report(step)` with step = 1..total).
      what: what one step is, for the announcing line (e.g. "embedding: 60000 images in
        235 batches of 256; progress counts batches").
      every_secs: seconds between reports (the last step always reports).
      writer: a clu MetricWriter; if given, `steps_per_sec` and `uptime` go to it.
    Returns:
      clu's ReportProgress, started at step 0; call it with the 1-based step after each step.
    """
    # clu imports TensorFlow: only when a loop runs, after the tools have set TF's log level.
    from clu import periodic_actions

    log(f"{what} ({total} steps; progress every {every_secs:g} s)")
    report = periodic_actions.ReportProgress(
        num_train_steps=int(total), every_secs=float(every_secs), writer=writer
    )
    report(0)  # starts the clock, so that even a one-step loop reports its end
    return report
