"""SPICE, Fisher and DPP on real LoRA gradients of a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from harp.core.context import RunContext
from harp.data.synthetic import make_skills_suite
from harp.selectors import make_selector
from harp.selectors.logdet import greedy_logdet


@pytest.fixture(scope="module")
def pool():
    return make_skills_suite(n_pool=120, n_target_per_domain=4, n_pretrain=10).pool


@pytest.fixture(scope="module")
def params(tiny_dir, tmp_path_factory):
    return dict(
        model=str(tiny_dir),
        dim=48,
        warmup_epochs=1.0,
        batch_size=8,
        max_length=64,
        context=RunContext(cache_dir=tmp_path_factory.mktemp("spice-cache")),
    )


def _gradients(selector, pool) -> np.ndarray:
    """The gradients the selector fed its engine (read back from the cache)."""
    context = selector.context.with_seed(selector.seed)
    features = selector.features_for()
    model_dir = selector.model_dir(pool, context)
    last = features.warmup(model_dir, pool, context)[-1]
    store = features.extract(pool, context, model_dir=model_dir, checkpoint=last)
    return store.read().astype(np.float64)


def test_fisher_is_the_engine_on_the_warmup_gradients(pool, params):
    sel = make_selector("fisher", budget=30, **params).fit(pool)
    g = _gradients(sel, pool)
    trace = greedy_logdet(g, 30)
    np.testing.assert_array_equal(sel.selection_.indices, trace.indices)
    np.testing.assert_allclose(sel.selection_.gains, trace.gains)
    assert sel.alpha_ == pytest.approx(1.0 / np.median((g**2).sum(axis=1)))
    # The gains of a submodular greedy never increase.
    assert np.all(np.diff(sel.selection_.gains) <= 1e-12)
    diag = sel.diagnostics()
    assert diag.kind == "logdet" and len(diag.gains) == 30
    sign, logdet = np.linalg.slogdet(
        np.eye(g.shape[1]) + sel.alpha_ * g[trace.indices].T @ g[trace.indices]
    )
    assert diag.objective[-1] == pytest.approx(logdet, rel=1e-9)


def test_spice_without_conflict_is_fisher_and_with_it_differs(pool, params):
    fisher = make_selector("fisher", budget=40, **params).fit(pool)
    spice0 = make_selector("spice", budget=40, conflict_weight=0.0, **params).fit(pool)
    np.testing.assert_array_equal(fisher.selection_.indices, spice0.selection_.indices)
    spice = make_selector("spice", budget=40, conflict_weight=5.0, **params).fit(pool)
    assert not np.array_equal(spice.selection_.indices, fisher.selection_.indices)
    g = _gradients(spice, pool)
    # The conflict of each pick is max(0, -cos(g_x, sum of earlier picks)).
    picks = spice.selection_.indices
    for t in range(1, len(picks)):
        s = g[picks[:t]].sum(axis=0)
        cos = g[picks[t]] @ s / (np.linalg.norm(g[picks[t]]) * np.linalg.norm(s))
        assert spice.trace_.conflicts[t] == pytest.approx(max(0.0, -cos), abs=1e-9)
    # A heavy penalty leaves less conflict in the picks than Fisher's.
    fisher_conflicts = []
    for t in range(1, len(picks)):
        s = g[fisher.selection_.indices[:t]].sum(axis=0)
        x = g[fisher.selection_.indices[t]]
        fisher_conflicts.append(
            max(0.0, -(x @ s) / np.linalg.norm(x) / np.linalg.norm(s))
        )
    assert spice.trace_.conflicts.sum() <= sum(fisher_conflicts)


def test_dpp_is_the_engine_on_unit_gradients(pool, params):
    sel = make_selector("dpp", budget=25, **params).fit(pool)
    g = _gradients(sel, pool)
    trace = greedy_logdet(g, 25, normalize=True)
    np.testing.assert_array_equal(sel.selection_.indices, trace.indices)
    assert sel.alpha_ == pytest.approx(1.0)


def test_early_stop_follows_the_rule(pool, params):
    sel = make_selector("spice", budget=100, early_stop=0.9, **params).fit(pool)
    gains = sel.selection_.gains
    assert sel.stopped_early_ and len(gains) < 100
    assert np.all(gains >= 0.9 * gains[0])


def test_online_schedule_runs_end_to_end_and_is_deterministic(pool, params):
    kw = dict(
        budget=30,
        schedule="online",
        pool_size=12,
        picks_per_pool=3,
        train_every=2,
        lr=1e-3,
        **params,
    )
    a = make_selector("spice", **kw).fit(pool)
    b = make_selector("spice", **kw).fit(pool)
    idx = a.selection_.indices
    assert len(idx) == 30 and len(set(idx.tolist())) == 30
    assert a.online_ == {"pools": 10, "proxy_steps": 5}
    np.testing.assert_array_equal(idx, b.selection_.indices)
    # Pools are consecutive chunks of one seeded permutation (the "online" stream
    # of the run's seed), 3 picks from each.
    perm = RunContext(seed=0).rng("online").permutation(len(pool))
    for j in range(10):
        assert set(idx[3 * j : 3 * j + 3].tolist()) <= set(perm[12 * j : 12 * j + 12])
