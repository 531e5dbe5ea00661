"""Fuzz `harp.select`: whatever rows, budget, method and seed, only clean errors."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import harp
from harp.errors import HarpError

TEXT_METHODS = ["random", "similarity", "cluster", "dsir", "magic"]

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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pool=rows,
    target=st.one_of(st.none(), rows),
    budget=budgets,
    method=st.sampled_from(TEXT_METHODS),
    seed=st.one_of(st.none(), st.integers(-2, 5)),
)
def test_select_returns_a_selection_or_raises_a_harp_error(
    pool, target, budget, method, seed
):
    params = {"encoder": "tfidf"} if method in ("similarity", "cluster") else {}
    try:
        sel = harp.select(
            pool, target, method=method, budget=budget, seed=seed, **params
        )
    except HarpError:
        return
    n = len(pool)
    assert 0 < len(sel) <= n
    assert len(set(sel.indices.tolist())) == len(sel)
    assert all(0 <= i < n for i in sel.indices.tolist())
