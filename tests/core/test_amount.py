"""Budget parsing and resolution: counts, fractions, percentage strings, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harp.core.errors import ParameterError
from harp.selectors import parse_budget, resolve_budget


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (1, 1),
        (500, 500),
        (np.int64(7), 7),
        (0.5, 0.5),
        (1.0, 1.0),
        (np.float64(0.25), 0.25),
        ("10%", 0.10),
        ("12.5%", 0.125),
        (" 100 % ", 1.0),
        ("7", 7),
        (" 42 ", 42),
        ("0.5", 0.5),
        (".25", 0.25),
        ("1.0", 1.0),
    ],
)
def test_parse_accepts(budget, expected):
    got = parse_budget(budget)
    assert got == pytest.approx(expected)
    assert type(got) is type(expected if not isinstance(expected, np.generic) else 0)


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (0, "must be at least 1 row"),
        (-5, "must be at least 1 row"),
        ("0", "must be at least 1 row"),
        (0.0, "fraction of the pool in (0, 1]"),
        (-0.5, "fraction of the pool in (0, 1]"),
        (1.5, "fraction of the pool in (0, 1]"),
        (math.nan, "fraction of the pool in (0, 1]"),
        (math.inf, "fraction of the pool in (0, 1]"),
        ("0%", "a percentage must be in (0%, 100%]"),
        ("150%", "a percentage must be in (0%, 100%]"),
        ("10%%", "cannot be read"),
        ("abc", "cannot be read"),
        ("", "cannot be read"),
        ("1.5", "fraction of the pool in (0, 1]"),
        ("-0.5", "fraction of the pool in (0, 1]"),
        ("-3", "must be at least 1 row"),
        ("1.2.3", "cannot be read"),
        ("10 rows", "cannot be read"),
        (True, "is not a budget"),
        (False, "is not a budget"),
        (None, "has type NoneType"),
        ([10], "has type list"),
    ],
)
def test_parse_rejects_with_a_helpful_message(budget, message):
    with pytest.raises(ParameterError) as info:
        parse_budget(budget)
    text = str(info.value)
    assert message in text
    assert text.startswith("budget=")  # names the parameter
    if "cannot be read" in message or "at least 1 row" in message:
        assert '"10%"' in text  # says how to write a budget


@pytest.mark.parametrize(
    ("budget", "n_pool", "expected"),
    [
        ("10%", 1000, 100),
        (0.25, 10, 3),  # 2.5 rows round half up
        (0.24, 10, 2),
        (0.001, 10, 1),  # at least one row
        (0.04, 10, 1),
        (1.0, 10, 10),
        ("100%", 7, 7),
        (7, 10, 7),
        (10, 10, 10),
        ("3", 3, 3),
        (1, 1, 1),
        ("50%", 1, 1),
    ],
)
def test_resolve(budget, n_pool, expected):
    assert resolve_budget(budget, n_pool) == expected


def test_resolve_larger_than_pool():
    with pytest.raises(ParameterError, match=r"larger than the pool \(10 rows\)"):
        resolve_budget(11, 10)
    with pytest.raises(ParameterError, match="use at most 10"):
        resolve_budget("11", 10)


def test_resolve_empty_pool():
    with pytest.raises(ParameterError, match="the pool is empty"):
        resolve_budget(5, 0)
    with pytest.raises(ParameterError, match="the pool is empty"):
        resolve_budget("10%", 0)


def test_resolve_propagates_parse_errors():
    with pytest.raises(ParameterError, match="cannot be read"):
        resolve_budget("10%%", 100)


@settings(max_examples=50, deadline=None)
@given(fraction=st.floats(min_value=1e-6, max_value=1.0), n_pool=st.integers(1, 10**6))
def test_resolve_fraction_in_range(fraction, n_pool):
    k = resolve_budget(fraction, n_pool)
    assert 1 <= k <= n_pool
    assert abs(k - fraction * n_pool) <= 0.5 or k == 1


@settings(max_examples=50, deadline=None)
@given(pct=st.integers(1, 100), n_pool=st.integers(1, 10**5))
def test_percent_string_equals_fraction(pct, n_pool):
    assert resolve_budget(f"{pct}%", n_pool) == resolve_budget(pct / 100, n_pool)
