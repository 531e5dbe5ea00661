"""The estimate line: measured from the first steps, said once, only when long."""

from __future__ import annotations

import logging

import pytest

from harp.core import progress
from harp.core.progress import ProgressBar, format_duration


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(progress, "time", fake)
    return fake


def _run(clock, seconds_per_step, total, caplog, first_extra=0.0, **kwargs):
    caplog.set_level(logging.INFO, logger="harp.core.progress")
    with ProgressBar(False, "pretraining", total, **kwargs) as bar:
        for i in range(total):
            clock.now += seconds_per_step + (first_extra if i == 0 else 0.0)
            bar.advance()
    return [r.getMessage() for r in caplog.records]


def test_a_long_step_says_how_long_once_from_the_measured_rate(clock, caplog):
    lines = _run(clock, 0.5, 200, caplog)
    assert len(lines) == 1
    # Announced after 2 s of measurement past the first step (5 steps done), 195
    # steps of 0.5 s left: 97.5 s.
    assert lines[0] == (
        "pretraining: about 1 min 38 s more (5 of 200 steps done, 2 steps/s on this "
        "machine)"
    )


def test_the_first_steps_one_off_cost_does_not_inflate_the_estimate(clock, caplog):
    lines = _run(clock, 0.5, 200, caplog, first_extra=5.0)
    # The first step took 5.5 s; the rate is measured past it (0.5 s a step).
    assert "about 1 min 38 s more (5 of 200" in lines[0]


def test_a_short_step_says_nothing(clock, caplog):
    assert _run(clock, 0.1, 250, caplog) == []  # 25 s in all


def test_slow_units_read_as_seconds_each(clock, caplog):
    lines = _run(clock, 9.0, 13, caplog, unit="call")
    assert lines == [
        "pretraining: about 1 min 39 s more (2 of 13 calls done, 9.0 s per call on "
        "this machine)"
    ]


def test_remaining_seconds_follows_the_pace(clock):
    bar = ProgressBar(False, "bench", 10, announce_over=float("inf"))
    assert bar.remaining_seconds() is None
    for _ in range(4):
        clock.now += 3.0
        bar.advance()
    assert bar.remaining_seconds() == pytest.approx(18.0)


@pytest.mark.parametrize(
    "seconds, text",
    [(0.4, "0 s"), (59.6, "1 min"), (61, "1 min 1 s"), (725, "12 min"), (7200, "2 h")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_fast_units_read_as_whole_numbers(clock, caplog):
    caplog.set_level(logging.INFO, logger="harp.core.progress")
    with ProgressBar(False, "encoding texts", 320_000, unit="token") as bar:
        for _ in range(200):
            clock.now += 0.26  # 1,600 tokens a batch: 6,154 tokens/s
            bar.advance(1600)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "6,150 tokens/s on this machine" in line and "e+" not in line
