"""utils/progress.py: clu's ReportProgress as the one progress mechanism of library loops."""

import logging

from semantica_jax.utils import progress


def _notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "work unit notes" in r.getMessage()]


def test_loop_announces_and_reports_the_last_step(caplog):
    lines = []
    with caplog.at_level(logging.INFO):
        report = progress.loop(3, "counting things", every_secs=3600, log=lines.append)
        for step in (1, 2, 3):
            report(step)
    assert lines == ["counting things (3 steps; progress every 3600 s)"]
    notes = _notes(caplog)
    # every_secs is an hour: only the last step reports, with rate, percentage and ETA.
    assert len(notes) == 1 and "100.0% (3/3)" in notes[0] and "steps/s" in notes[0]
    assert "ETA: 0m" in notes[0]


def test_a_one_step_loop_reports_its_end(caplog):
    with caplog.at_level(logging.INFO):
        progress.loop(1, "one", log=lambda _: None)(1)
    assert any("100.0% (1/1)" in n for n in _notes(caplog))


def test_every_secs_zero_reports_every_step(caplog):
    with caplog.at_level(logging.INFO):
        report = progress.loop(4, "all", every_secs=0, log=lambda _: None)
        for step in range(1, 5):
            report(step)
    notes = _notes(caplog)
    assert [n.split("% (")[1].split(")")[0] for n in notes] == ["1/4", "2/4", "3/4", "4/4"]
