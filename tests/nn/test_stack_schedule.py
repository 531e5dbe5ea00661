"""Runs of a stack wait for a free slot: the schedule's invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harp.core.errors import ParameterError
from harp.nn import stack_schedule


@given(
    steps=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    slots=st.integers(1, 10),
)
def test_a_schedule_never_runs_more_than_its_slots_and_leaves_no_gap(steps, slots):
    starts = stack_schedule(steps, slots)
    ends = [s + n for s, n in zip(starts, steps)]
    length = max(ends)
    running = [sum(s <= t < e for s, e in zip(starts, ends)) for t in range(length)]
    assert max(running) <= slots
    # Every slot is busy until its last run ends: a free slot never waits.
    assert all(running[t] >= running[t + 1] for t in range(length - 1))
    assert running[0] == min(slots, len(steps))
    # List scheduling's bound, and nothing shorter than the longest run.
    assert max(steps) <= length <= sum(steps) / slots + max(steps)
    # Longest first: a run starts no later than any shorter one.
    for i in range(len(steps)):
        for j in range(len(steps)):
            if steps[i] > steps[j]:
                assert starts[i] <= starts[j]


def test_enough_slots_start_every_run_at_once():
    assert stack_schedule([5, 2, 9]) == [0, 0, 0]
    assert stack_schedule([5, 2, 9], 3) == [0, 0, 0]
    # The realtext bench's finetunes of two seeds, eight at a time: two full-data
    # references (750 steps) and two without the wrong answers (684) set the length;
    # the 40 selections (38 or 75 steps) fit beside them.
    steps = [750, 750, 684, 684] + [38] * 20 + [75] * 20
    starts = stack_schedule(steps, 8)
    assert max(s + n for s, n in zip(starts, steps)) == 750


@pytest.mark.parametrize("slots", [0, -1, 1.5, True])
def test_slots_must_be_a_positive_int(slots):
    with pytest.raises(ParameterError, match="slots"):
        stack_schedule([1, 2], slots)
