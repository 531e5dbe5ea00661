"""Amounts: budgets (rows of a pool) and evaluation budgets (calls over leaves).

A budget is a row count, a fraction of the pool, or a percentage string; HARP's
``evals`` is a call count or a fraction of the leaves.
"""

from __future__ import annotations

import math
import numbers
import re

from harp.core.errors import ParameterError

__all__ = ["Budget", "parse_budget", "resolve_budget", "resolve_evals"]

Budget = int | float | str

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_FRACTION = re.compile(r"^\s*[+-]?(?:\d*\.\d+|\d+\.)\s*$")

_HOW = (
    "give a row count (e.g. 500), a fraction in (0, 1] (e.g. 0.1) "
    'or a percentage ("10%")'
)


def parse_budget(budget: Budget) -> int | float:
    """Turn the user's budget into an int (rows) or a float fraction in (0, 1].

    Raises
    ------
    ParameterError
        For booleans, non-positive numbers, fractions above 1, and malformed strings
        such as ``"10%%"`` or ``"abc"``.
    """
    if isinstance(budget, bool):
        raise ParameterError(f"budget={budget!r} is not a budget; {_HOW}")
    if isinstance(budget, str):
        text = budget
        if m := _PERCENT.match(text):
            pct = float(m.group(1))
            if not 0 < pct <= 100:
                raise ParameterError(
                    f"budget={budget!r}: a percentage must be in (0%, 100%]"
                )
            return pct / 100.0
        if _INTEGER.match(text):
            budget = int(text)
        elif _FRACTION.match(text):
            budget = float(text)
        else:
            raise ParameterError(f"budget={budget!r} cannot be read; {_HOW}")
    if isinstance(budget, numbers.Integral):
        if budget <= 0:
            raise ParameterError(f"budget={budget!r} must be at least 1 row; {_HOW}")
        return int(budget)
    if isinstance(budget, numbers.Real):
        value = float(budget)
        if not math.isfinite(value) or not 0 < value <= 1:
            raise ParameterError(
                f"budget={budget!r}: a float budget is a fraction of the pool "
                "in (0, 1]; "
                f"{_HOW}"
            )
        return value
    raise ParameterError(f"budget={budget!r} has type {type(budget).__name__}; {_HOW}")


def resolve_budget(budget: Budget, n_pool: int) -> int:
    """Number of rows a budget allows on a pool of ``n_pool`` rows.

    A fraction rounds to the nearest row, and at least one row. A row count larger than
    the pool is an error: it is almost always a mistaken unit.

    Examples
    --------
    >>> resolve_budget("10%", 1000)
    100
    >>> resolve_budget(0.25, 10)  # half a row rounds up
    3
    >>> resolve_budget(7, 10)
    7
    """
    if n_pool <= 0:
        raise ParameterError("the pool is empty: there is nothing to select from")
    parsed = parse_budget(budget)
    if isinstance(parsed, float):
        return max(1, min(n_pool, int(math.floor(parsed * n_pool + 0.5))))
    if parsed > n_pool:
        raise ParameterError(
            f"budget={budget!r} is larger than the pool ({n_pool} rows); "
            f"use at most {n_pool} or a percentage such as '10%'"
        )
    return parsed


def resolve_evals(evals: int | float, n_leaves: int) -> int:
    """Train-evaluate calls for ``n_leaves`` leaves: a count or a fraction of them.

    A fraction rounds up; the result is at least 1 and at most ``n_leaves``.

    Examples
    --------
    >>> resolve_evals(0.2, 64), resolve_evals(10, 64), resolve_evals(100, 64)
    (13, 10, 64)
    """
    if isinstance(evals, float):
        return max(1, min(n_leaves, math.ceil(evals * n_leaves)))
    return max(1, min(n_leaves, int(evals)))
