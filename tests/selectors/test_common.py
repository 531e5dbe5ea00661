"""Checks every registered selector must pass (the selector contract).

Written against the registry, so a newly registered method is checked automatically.
Methods with text features run with ``encoder="tfidf"`` for speed; methods with
``needs_target`` get a target; model-based methods run the tiny model with a small
projection and a short warm-up, cached in one folder for the session.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harp.core.context import RunContext
from harp.core.errors import NotFittedError, ParameterError
from harp.data import ExampleSet
from harp.execution import LocalExecutor
from harp.selectors import (
    BaseSelector,
    Selection,
    available_methods,
    get_selector_class,
    make_selector,
    resolve_budget,
)

METHODS = available_methods()

#: Parameters that make a method fast and offline in these checks (given bare, as
#: the command line does; each goes to the method or to its features component).
FAST_PARAMS = {"encoder": "tfidf"}
#: For methods that run a model: the tiny random Llama of tests/conftest.py, a small
#: projection and a one-epoch warm-up, all cached in one folder for the session.
MODEL_PARAMS: dict = {}


@pytest.fixture(scope="session", autouse=True)
def _model_params(tiny_dir, tmp_path_factory):
    MODEL_PARAMS.update(
        model=str(tiny_dir),
        dim=64,
        warmup_epochs=1.0,
        n_checkpoints=2,
        batch_size=8,
        max_length=64,
        context=RunContext(cache_dir=tmp_path_factory.mktemp("harp-cache")),
        # HARP: a few short train-evaluate calls.
        evals=3,
        train_steps=2,
        bootstrap=10,
    )


def accepted(cls: type) -> set[str]:
    """The method's parameters and its default components' parameters."""
    probe = cls()
    names = set(cls.param_names())
    for name in cls._components:
        names |= set(probe.resolved_component(name).param_names())
    return names


def fast_params(cls: type) -> dict:
    names = accepted(cls)
    params = {**FAST_PARAMS, **(MODEL_PARAMS if cls.uses_model else {})}
    return {k: v for k, v in params.items() if k in names}


def build(method: str, **params) -> BaseSelector:
    cls = get_selector_class(method)
    return make_selector(method, **{**fast_params(cls), **params})


def target_for(method: str, target):
    return target if get_selector_class(method).needs_target else None


@pytest.fixture(scope="module")
def rows(make_pool):
    pool, _ = make_pool({"math": 12, "cooking": 12, "code": 6}, seed=3)
    return [dict(r) for r in pool.rows]


@pytest.fixture(scope="module")
def target_rows(make_rows):
    return make_rows("math", 4, seed=99) + make_rows("code", 3, seed=98)


def test_registry_is_populated():
    assert {"random", "similarity", "cluster", "dsir"} <= set(METHODS)
    assert METHODS == sorted(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_class_contract(method):
    cls = get_selector_class(method)
    assert issubclass(cls, BaseSelector)
    assert cls.name == method
    sig = inspect.signature(cls.__init__)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    assert params and all(p.kind is p.KEYWORD_ONLY for p in params), "keyword-only init"
    assert all(p.default is not p.empty for p in params), "every param has a default"
    assert {"budget", "seed"} <= {p.name for p in params}
    assert set(cls._parameter_constraints) == {p.name for p in params}, (
        "the constraints table covers exactly the constructor parameters"
    )
    doc = inspect.getdoc(cls) or ""
    for section in ("Parameters", "Attributes", "Examples"):
        assert section in doc, f"{method} docstring lacks {section}"


@pytest.mark.parametrize("method", METHODS)
def test_init_only_stores(method):
    cls = get_selector_class(method)
    # Values that fit would reject must still be stored silently by __init__.
    sel = cls(budget="abc", seed=-1)
    assert sel.budget == "abc" and sel.seed == -1
    assert not hasattr(sel, "selection_")
    sig = inspect.signature(cls.__init__)
    defaults = {n: p.default for n, p in sig.parameters.items() if n != "self"}
    assert cls().get_params() == defaults


@pytest.mark.parametrize("method", METHODS)
def test_fit_returns_self_and_selection(method, rows, target_rows):
    sel = build(method, budget=5)
    assert sel.fit(rows, target_for(method, target_rows)) is sel
    assert isinstance(sel.selection_, Selection)
    assert sel.selection_.method == method
    # Every hyper-parameter is recorded (components flattened as features__x),
    # except how the work ran (the run context).
    expected = sel.computation_params()
    assert "context" not in expected
    assert sel.selection_.params == expected
    assert sel.selection_.seed == 0 and sel.selection_.cost.device == "cpu"
    np.testing.assert_array_equal(sel.ranking, sel.selection_.indices)
    assert len(sel.gains) == len(sel.ranking)


@pytest.mark.parametrize("method", METHODS)
def test_select_is_fit_then_selection(method, rows, target_rows):
    t = target_for(method, target_rows)
    assert (
        build(method, budget=4).select(rows, t)
        == build(method, budget=4).fit(rows, t).selection_
    )


@pytest.mark.parametrize("method", METHODS)
def test_not_fitted(method):
    sel = build(method)
    with pytest.raises(NotFittedError, match="not fitted"):
        sel.ranking
    with pytest.raises(NotFittedError):
        sel.gains
    with pytest.raises(AttributeError):
        sel.selection_


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [1, 7, 30, 0.25, 1.0, "10%", "50%", "3"])
def test_budget_respected(method, budget, rows, target_rows):
    sel = build(method, budget=budget).select(rows, target_for(method, target_rows))
    expected = resolve_budget(budget, len(rows))
    assert sel.budget == expected
    if get_selector_class(method).fills_budget:
        assert len(sel) == expected
    else:  # HARP's best prefix may stop short of the budget, never beyond it
        assert len(sel) <= expected


@pytest.mark.parametrize("method", METHODS)
def test_budget_larger_than_pool_is_an_error(method, rows, target_rows):
    with pytest.raises(ParameterError, match="larger than the pool"):
        build(method, budget=len(rows) + 1).fit(rows, target_for(method, target_rows))


@pytest.mark.parametrize("method", METHODS)
def test_indices_valid(method, rows, target_rows):
    pool = ExampleSet.from_records(rows)
    sel = build(method, budget=11).select(pool, target_for(method, target_rows))
    idx = sel.indices
    assert idx.dtype == np.int64
    assert len(np.unique(idx)) == len(idx) == 11
    assert idx.min() >= 0 and idx.max() < len(pool)
    assert sel.ids == tuple(pool.ids[i] for i in idx)
    assert sel.n_pool == len(pool)
    assert sel.scores.shape == (len(pool),)
    assert sel.gains.shape == idx.shape
    assert sel.mask.sum() == 11


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_identical_selection(method, rows, target_rows):
    t = target_for(method, target_rows)
    a = build(method, budget=9, seed=7).select(rows, t)
    b = build(method, budget=9, seed=7).select(copy.deepcopy(rows), copy.deepcopy(t))
    assert a == b
    assert a.digest() == b.digest()
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.scores, b.scores)  # NaN-aware, bit for bit
    np.testing.assert_array_equal(a.gains, b.gains)


@pytest.mark.parametrize("method", METHODS)
def test_refit_same_object_identical(method, rows, target_rows):
    t = target_for(method, target_rows)
    sel = build(method, budget=6, seed=1)
    first = sel.fit(rows, t).selection_
    assert sel.fit(rows, t).selection_ == first


@pytest.mark.parametrize("method", METHODS)
def test_inputs_untouched(method, rows, target_rows):
    t = target_for(method, target_rows)
    rows_before = copy.deepcopy(rows)
    target_before = copy.deepcopy(t)
    build(method, budget=5).fit(rows, t)
    assert rows == rows_before
    assert t == target_before
    pool = ExampleSet.from_records(rows)
    examples_before = copy.deepcopy(pool.examples)
    build(method, budget=5).fit(pool, None if t is None else ExampleSet.from_records(t))
    assert pool.examples == examples_before
    assert [dict(r) for r in pool.rows] == rows_before


@pytest.mark.parametrize("method", METHODS)
def test_params_round_trip(method):
    sel = build(method, budget=3, seed=5)
    params = sel.get_params(deep=False)
    clone = type(sel)(**params)
    assert clone.get_params() == sel.get_params()
    assert make_selector(method, **params).get_params() == sel.get_params()
    assert sel.set_params(seed=11) is sel
    assert sel.get_params()["seed"] == 11
    assert "seed=11" in repr(sel)
    # Nested parameters reach the components (scikit-learn's "a__b").
    for name in type(sel)._components:
        sub = sorted(sel.resolved_component(name).param_names())[0]
        value = sel.get_params()[f"{name}__{sub}"]
        assert sel.set_params(**{f"{name}__{sub}": value}) is sel
        assert sel.get_params()[f"{name}__{sub}"] == value


@pytest.mark.parametrize("method", METHODS)
def test_unknown_param_is_an_error(method):
    with pytest.raises(ParameterError, match="no parameter 'bogus'"):
        build(method).set_params(bogus=1)
    with pytest.raises(ParameterError, match="'bogus'"):
        make_selector(method, bogus=1)
    with pytest.raises(TypeError):
        get_selector_class(method)(bogus=1)
    with pytest.raises(TypeError):  # keyword-only
        get_selector_class(method)(5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("budget", "abc"),
        ("budget", 0),
        ("budget", -3),
        ("budget", True),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", "0"),
    ],
)
def test_bad_budget_or_seed_names_the_parameter(
    method, param, value, rows, target_rows
):
    sel = build(method, **{param: value})
    with pytest.raises(ParameterError, match=f"{param}="):
        sel.fit(rows, target_for(method, target_rows))
    assert not hasattr(sel, "selection_")


@pytest.mark.parametrize(
    ("method", "param"),
    [(m, p) for m in METHODS for p in get_selector_class(m)._parameter_constraints],
)
def test_every_constraint_is_checked(method, param, rows, target_rows):
    sentinel = object()  # no constraint accepts an arbitrary object
    cls = get_selector_class(method)
    top = {k: v for k, v in fast_params(cls).items() if k in cls.param_names()}
    sel = cls(**{**top, param: sentinel})
    with pytest.raises(ParameterError, match=f"{param}=") as info:
        sel.fit(rows, target_for(method, target_rows))
    # The message also says what is allowed.
    assert "expected" in str(info.value) or '"10%"' in str(info.value)


@pytest.mark.parametrize(
    "method", [m for m in METHODS if get_selector_class(m).needs_target]
)
def test_missing_target_is_an_error(method, rows):
    with pytest.raises(ParameterError, match="needs a target"):
        build(method, budget=3).fit(rows)
    with pytest.raises(ParameterError, match="needs a target"):
        build(method, budget=3).fit(rows, [])


@pytest.mark.parametrize("method", METHODS)
def test_fingerprint_tracks_params_and_data(method, rows, target_rows):
    t = target_for(method, target_rows)
    base = build(method, budget=5).select(rows, t)
    other_rows = rows[:-1]
    assert build(method, budget=5).select(other_rows, t).fingerprint != base.fingerprint
    reseeded = build(method, budget=5, seed=2).select(rows, t)
    assert reseeded.fingerprint != base.fingerprint


@pytest.mark.parametrize("method", METHODS)
def test_seed_none_is_resolved_once_and_recorded(method, rows, target_rows):
    """seed=None draws fresh entropy in fit; the Selection records it, and that
    seed reproduces the selection."""
    t = target_for(method, target_rows)
    first = build(method, budget=6, seed=None).select(rows, t)
    second = build(method, budget=6, seed=None).select(rows, t)
    assert isinstance(first.seed, int) and first.seed >= 2**64
    assert first.seed != second.seed
    assert first.params["seed"] is None  # the parameter as given
    again = build(method, budget=6, seed=first.seed).select(rows, t)
    np.testing.assert_array_equal(again.indices, first.indices)
    assert again.fingerprint == first.fingerprint


@pytest.mark.parametrize("method", METHODS)
def test_run_settings_never_enter_the_result(method, rows, target_rows, tmp_path):
    """Cache folder, progress display and executor say how the work runs: two runs
    that differ only in them give the same digest and fingerprint."""
    t = target_for(method, target_rows)
    shared = MODEL_PARAMS["context"]
    a = build(method, budget=6, seed=3).select(rows, t)
    other = RunContext(
        cache_dir=tmp_path / "elsewhere",
        progress=True,
        executor=LocalExecutor(workers=1),
        device="cpu",
    )
    b = build(method, budget=6, seed=3, context=other).select(rows, t)
    assert a.digest() == b.digest() and a.fingerprint == b.fingerprint
    assert shared.cache_dir != other.cache_dir


@pytest.mark.parametrize("method", METHODS)
def test_selection_survives_save_load(method, rows, target_rows, tmp_path):
    sel = build(method, budget=6).select(rows, target_for(method, target_rows))
    path = tmp_path / "sel.json"
    sel.save(path)
    again = Selection.load(path)
    assert again == sel and again.digest() == sel.digest()


# -- properties on small random pools --------------------------------------------------

WORDS = ["alpha", "beta", "gamma", "delta", "sum", "bake", "code", "trip", "x", "7", ""]

texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=6).map(" ".join)
records = st.lists(
    st.fixed_dictionaries(
        {"prompt": texts, "response": texts, "domain": st.sampled_from(["a", "b"])}
    ),
    min_size=1,
    max_size=25,
)
budgets = st.one_of(
    st.integers(min_value=1, max_value=25),
    st.floats(min_value=0.01, max_value=1.0),
    st.integers(min_value=1, max_value=100).map(lambda p: f"{p}%"),
)


# Methods that train and differentiate a model are checked by the tests above; twenty
# random pools each would mean twenty warm-ups.
@pytest.mark.parametrize(
    "method", [m for m in METHODS if not get_selector_class(m).uses_model]
)
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pool_rows=records, target=records, budget=budgets, seed=st.integers(0, 2**32))
def test_property_budget_unique_subset(method, pool_rows, target, budget, seed):
    n = len(pool_rows)
    if isinstance(budget, int) and budget > n:
        budget = n
    t = target_for(method, target)
    sel = build(method, budget=budget, seed=seed).select(pool_rows, t)
    k = resolve_budget(budget, n)
    assert len(sel) == k
    assert len(set(sel.indices.tolist())) == k
    assert set(sel.indices.tolist()) <= set(range(n))
    assert sel.scores.shape == (n,)
    again = build(method, budget=budget, seed=seed).select(pool_rows, t)
    assert again == sel


@pytest.mark.parametrize("method", available_methods())
def test_failed_refit_leaves_no_stale_result(method):
    """After a refit that fails on its parameters, no fitted attribute survives."""
    from harp.core.errors import NotFittedError

    rows = [
        {"prompt": f"question {i} about topic {i % 3}", "response": f"answer {i}"}
        for i in range(30)
    ]
    target = rows[:5]
    cls = get_selector_class(method)
    params = {"budget": 5, **fast_params(cls)}
    selector = make_selector(method, **params).fit(rows, target)
    assert hasattr(selector, "selection_")
    selector.set_params(budget="abc")
    with pytest.raises(ParameterError):
        selector.fit(rows, target)
    assert not [k for k in vars(selector) if k.endswith("_") and not k.startswith("_")]
    with pytest.raises(NotFittedError):
        selector.ranking
