"""HARP-C / HARP-E end to end on a tiny real model: calls, cache, budget, output."""

from __future__ import annotations

import numpy as np
import pytest

from harp.data.synthetic import make_skills_suite
from harp.selectors import make_selector
from harp.selectors.harp.selector import resolve_evals


@pytest.fixture(scope="module")
def suite():
    return make_skills_suite(n_pool=160, n_target_per_domain=6, n_pretrain=10)


def _params(tiny_dir, cache, **kw):
    return dict(
        model=str(tiny_dir),
        encoder="tfidf",
        leaf_size=10,
        leaves_per_parent=4,
        parents_per_node=2,
        train_steps=3,
        bootstrap=20,
        cache_dir=str(cache),
        **kw,
    )


@pytest.mark.parametrize("method", ["harp-c", "harp-e"])
def test_fit_measures_evals_leaves_and_caps_the_budget(
    method, tiny_dir, suite, tmp_path
):
    sel = make_selector(
        method, budget=40, **_params(tiny_dir, tmp_path, evals=6, round_size=2)
    )
    sel.fit(suite.pool, suite.target)
    s = sel.selection_
    tree = sel.tree_
    # Calls: the representatives first, then active search, never more than evals.
    assert len(sel.measured_) <= 6
    assert s.cost.train_eval_calls == len(sel.measured_)
    assert set(sel.rounds_[0]) <= set(tree.representatives.tolist())
    # Budget respected, no duplicates, every row from a chosen leaf.
    assert len(s) <= 40 and len(set(s.indices.tolist())) == len(s)
    chosen = set(sel.chosen_leaves_)
    assert {int(tree.leaf_of_row[i]) for i in s.indices} <= chosen
    assert list(sel.path_.order[: sel.path_.prefix]) == sel.chosen_leaves_
    # Gains: each leaf's marginal gain is spread over the rows taken from it.
    taken = {}
    for i, g in zip(s.indices, s.gains):
        taken.setdefault(int(tree.leaf_of_row[i]), []).append(g)
    gain_of = dict(zip(sel.path_.order.tolist(), sel.path_.gains.tolist()))
    for leaf, gs in taken.items():
        assert sum(gs) == pytest.approx(gain_of[leaf])
    diag = sel.diagnostics()
    assert diag["kind"] == "harp" and len(diag["leaves"]) == tree.n_leaves
    assert sum(x["measured"] for x in diag["leaves"]) == len(sel.measured_)
    assert diag["oracle"]["calls"] == len(sel.measured_)


def test_rerun_repeats_no_call_and_gives_the_same_selection(tiny_dir, suite, tmp_path):
    params = _params(tiny_dir, tmp_path, evals=5)
    first = make_selector("harp-c", budget=50, **params).fit(suite.pool, suite.target)
    again = make_selector("harp-c", budget=50, **params).fit(suite.pool, suite.target)
    assert first.oracle_["calls"] == len(first.measured_) > 0
    assert again.oracle_["calls"] == 0
    # The cost is the calls the method needed, whether run now or read from the cache.
    assert again.selection_.cost.train_eval_calls == len(first.measured_)
    assert again.oracle_["cache_hits"] == len(first.measured_)
    np.testing.assert_array_equal(again.selection_.indices, first.selection_.indices)
    np.testing.assert_array_equal(again.posterior_.mean, first.posterior_.mean)


def test_search_none_measures_only_representatives(tiny_dir, suite, tmp_path):
    sel = make_selector(
        "harp-e", budget=50, **_params(tiny_dir, tmp_path, evals=50, search="none")
    ).fit(suite.pool, suite.target)
    reps = set(sel.tree_.representatives.tolist())
    assert set(sel.measured_) == reps


def test_resolve_evals():
    assert resolve_evals(0.2, 64) == 13
    assert resolve_evals(1.0, 7) == 7
    assert resolve_evals(3, 2) == 2
    assert resolve_evals(0.001, 10) == 1


def test_gradient_features_cluster_unit_warmup_gradients(tiny_dir, suite, tmp_path):
    params = _params(tiny_dir, tmp_path, evals=3, features="gradient")
    sel = make_selector("harp-c", budget=30, **params).fit(suite.pool, suite.target)
    centroids = sel.tree_.leaf_centroids
    # Leaf centroids are means of unit vectors: inside the unit ball, not on the scale
    # of raw gradients.
    assert np.all(np.linalg.norm(centroids, axis=1) <= 1 + 1e-9)
    assert (tmp_path / "warmup").is_dir()
    assert len(sel.measured_) == 3
