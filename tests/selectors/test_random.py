"""RandomSelector: uniform sampling without replacement."""

from __future__ import annotations

import numpy as np

from harp.selectors import RandomSelector


def pool(n: int) -> list[dict]:
    return [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(n)]


def test_golden_picks():
    # Pinned: numpy's PCG64 permutation for seed 0 (matches the class docstring).
    sel = RandomSelector(budget=3, seed=0).select(pool(10))
    assert sel.indices.tolist() == [4, 6, 2]
    expected = np.random.default_rng(5).permutation(50)[:7]
    got = RandomSelector(budget=7, seed=5).select(pool(50)).indices
    np.testing.assert_array_equal(got, expected)


def test_no_scores_or_gains():
    sel = RandomSelector(budget=4).select(pool(20))
    assert np.isnan(sel.scores).all() and np.isnan(sel.gains).all()
    assert sel.cost.rows_scored == 0


def test_target_is_ignored():
    a = RandomSelector(budget=5, seed=3).select(pool(30))
    b = RandomSelector(budget=5, seed=3).select(pool(30), target=pool(4))
    np.testing.assert_array_equal(a.indices, b.indices)


def test_seeds_differ_and_prefixes_nest():
    a = RandomSelector(budget=10, seed=1).select(pool(100)).indices
    b = RandomSelector(budget=10, seed=2).select(pool(100)).indices
    assert a.tolist() != b.tolist()
    # A larger budget with the same seed extends the same permutation.
    c = RandomSelector(budget=20, seed=1).select(pool(100)).indices
    np.testing.assert_array_equal(c[:10], a)


def test_seed_none_draws_a_seed_once_and_records_it():
    sel = RandomSelector(budget=5, seed=None).select(pool(12))
    assert len(set(sel.indices.tolist())) == 5
    assert isinstance(sel.seed, int) and sel.params["seed"] is None
    again = RandomSelector(budget=5, seed=sel.seed).select(pool(12))
    np.testing.assert_array_equal(again.indices, sel.indices)


def test_uniform_inclusion():
    n, k, trials = 20, 5, 400
    counts = np.zeros(n)
    for seed in range(trials):
        counts[RandomSelector(budget=k, seed=seed).select(pool(n)).indices] += 1
    p = k / n
    expected = trials * p
    sd = np.sqrt(trials * p * (1 - p))
    assert np.all(np.abs(counts - expected) < 5 * sd)


def test_full_budget_is_a_permutation():
    sel = RandomSelector(budget=1.0, seed=0).select(pool(15))
    assert sorted(sel.indices.tolist()) == list(range(15))
