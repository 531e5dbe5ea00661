"""Fuzz `harp.select`: well-formed input always selects; anything else, a clean error.

An input is well-formed when every row has a string prompt and response, the pool
is not empty, the budget is a row count within the pool, a fraction in (0, 1] or a
percentage in (0%, 100%], the method is registered, the seed is None or a
non-negative int, and a method that needs a target gets one. Such input must give a
Selection that respects the budget; any other input may instead raise a HarpError,
and nothing else.
"""

from __future__ import annotations

import math
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import harp
from harp.core.errors import HarpError
from harp.selectors import get_selector_class

METHODS = ["random", "similarity", "cluster", "dsir"]
TEXT_METHODS = [*METHODS, "magic"]

texts = st.text(min_size=0, max_size=30)
valid_rows = st.lists(
    st.fixed_dictionaries(
        {"prompt": texts, "response": texts, "domain": st.sampled_from(["a", "b"])}
    ),
    min_size=1,
    max_size=12,
)
mixed_rows = st.lists(
    st.one_of(
        st.fixed_dictionaries({"prompt": texts, "response": texts}),
        st.fixed_dictionaries({"prompt": texts, "response": st.integers()}),
        st.fixed_dictionaries({"prompt": texts}),
        st.fixed_dictionaries(
            {"prompt": texts, "response": texts, "domain": st.sampled_from(["a", "b"])}
        ),
    ),
    min_size=0,
    max_size=12,
)
# Mostly well-formed pools, so the success path is fuzzed as much as the error paths.
rows = st.one_of(valid_rows, valid_rows, mixed_rows)
budgets = st.one_of(
    st.integers(1, 12),
    st.integers(-3, 20),
    st.floats(-1, 2),
    st.sampled_from([float("nan"), float("inf")]),
    st.sampled_from(["10%", "10%%", "abc", "0%", "150%", "", "3", " 50 % ", None]),
)
valid_budgets = st.one_of(
    st.integers(1, 12),
    st.floats(0.01, 1.0),
    st.integers(1, 100).map(lambda p: f"{p}%"),
)


def _rows_ok(data: list[dict] | None) -> bool:
    return bool(data) and all(
        isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str)
        for r in data
    )


def _budget_ok(budget: object, n: int) -> bool:
    if isinstance(budget, bool):
        return False
    if isinstance(budget, int):
        return 1 <= budget <= n
    if isinstance(budget, float):
        return math.isfinite(budget) and 0 < budget <= 1
    if isinstance(budget, str):
        if m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", budget):
            return 0 < float(m.group(1)) <= 100
        if re.fullmatch(r"\s*\d+\s*", budget):
            return 1 <= int(budget) <= n
    return False


def _well_formed(pool, target, budget, method, seed) -> bool:
    if method not in METHODS or not _rows_ok(pool):
        return False
    if not _budget_ok(budget, len(pool)):
        return False
    if seed is not None and seed < 0:
        return False
    if target is not None and not _rows_ok(target):
        return False
    return target is not None or not get_selector_class(method).needs_target


def _check(sel, pool, budget):
    n = len(pool)
    assert 0 < len(sel) <= n
    assert len(set(sel.indices.tolist())) == len(sel)
    assert all(0 <= i < n for i in sel.indices.tolist())
    assert isinstance(sel.seed, int)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pool=valid_rows,
    target=valid_rows,
    budget=valid_budgets,
    method=st.sampled_from(METHODS),
    seed=st.one_of(st.none(), st.integers(0, 5)),
)
def test_well_formed_input_always_selects(pool, target, budget, method, seed):
    if isinstance(budget, int):
        budget = min(budget, len(pool))
    params = {"encoder": "tfidf"} if method in ("similarity", "cluster") else {}
    sel = harp.select(pool, target, method=method, budget=budget, seed=seed, **params)
    _check(sel, pool, budget)
    # The seed recorded (drawn here when None) reproduces the selection.
    again = harp.select(
        pool, target, method=method, budget=budget, seed=sel.seed, **params
    )
    assert again.indices.tolist() == sel.indices.tolist()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pool=rows,
    target=st.one_of(st.none(), rows),
    budget=budgets,
    method=st.sampled_from(TEXT_METHODS),
    seed=st.one_of(st.none(), st.integers(-2, 5)),
)
def test_any_input_selects_or_raises_a_harp_error(pool, target, budget, method, seed):
    params = {"encoder": "tfidf"} if method in ("similarity", "cluster") else {}
    expected = _well_formed(pool, target, budget, method, seed)
    try:
        sel = harp.select(
            pool, target, method=method, budget=budget, seed=seed, **params
        )
    except HarpError as exc:
        assert not expected, f"well-formed input was refused: {exc}"
        return
    _check(sel, pool, budget)
