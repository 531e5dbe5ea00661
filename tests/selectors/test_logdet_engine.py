"""The greedy log-det engine against a brute-force greedy on ``np.linalg.slogdet``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harp.core.errors import NumericalError, ParameterError
from harp.selectors import logdet as _logdet
from harp.selectors.logdet import (
    GreedyLogDet,
    GreedyTrace,
    default_alpha,
    greedy_logdet,
)

TIE = 1e-10


def logdet(rows: np.ndarray, alpha: float, dim: int) -> float:
    """f(S) = log det(I + α G_Sᵀ G_S) straight from slogdet."""
    sign, val = np.linalg.slogdet(np.eye(dim) + alpha * rows.T @ rows)
    assert sign > 0
    return float(val)


def brute_greedy(G, k, alpha, *, lam=0.0, omega=None, prior=None, first_gain=None):
    """Naive greedy recomputing every candidate's gain (slogdet) and conflict each step.

    ``prior`` rows are an already selected set to condition on. Returns picks, gains and
    objectives, and whether the ω rule fired.
    """
    n, dim = G.shape
    sel = np.zeros((0, dim)) if prior is None else np.asarray(prior, float)
    picks, gains, objs = [], [], []
    fired = False
    for _ in range(k):
        base = logdet(sel, alpha, dim)
        scores = np.full(n, -np.inf)
        gain = np.zeros(n)
        for i in range(n):
            if i in picks or not np.any(G[i]):
                continue  # zero rows have zero gain and are never picked
            gain[i] = logdet(np.vstack([sel, G[i]]), alpha, dim) - base
            conflict = 0.0
            if len(sel):
                mean = sel.mean(axis=0)
                denom = np.linalg.norm(G[i]) * np.linalg.norm(mean)
                if denom > 0:
                    conflict = max(0.0, -float(G[i] @ mean) / denom)
            scores[i] = gain[i] - lam * conflict
        if not np.isfinite(scores).any():
            break
        best = scores.max()
        x = int(np.flatnonzero(scores >= best - TIE * max(1, abs(best)))[0])
        if (
            omega is not None
            and first_gain is not None
            and gain[x] < omega * first_gain
        ):
            fired = True
            break
        if first_gain is None:
            first_gain = gain[x]
        picks.append(x)
        gains.append(gain[x])
        sel = np.vstack([sel, G[x]])
        objs.append(logdet(sel, alpha, dim))
    return picks, np.array(gains), np.array(objs), fired


def make(seed, n, d, *, dup=0, zero=0):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d)) * rng.uniform(0.3, 2.0, size=(n, 1))
    for j in range(dup):  # exact duplicates (and a sign flip) create exact ties
        G[n - 1 - j] = G[j] if j % 2 == 0 else -G[j]
    for j in range(zero):
        G[n // 2 + j] = 0.0
    return G


CASES = [  # seed, n, d, k, dup, zero
    (0, 30, 6, 8, 0, 0),
    (1, 40, 8, 10, 3, 2),
    (2, 5, 8, 5, 0, 0),  # n < D, take everything
    (3, 25, 3, 10, 2, 1),  # k > D
    (4, 12, 4, 10, 4, 3),  # duplicates and zeros, runs out of rows
    (5, 40, 2, 10, 0, 0),  # k ≫ D: gains get tiny
]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # Refresh after 3 picks and admit 2 rows at a time, so the small cases exercise the
    # GEMM refresh, the pending columns and the frontier expansion, not just one window.
    monkeypatch.setattr(_logdet, "_REFRESH_EVERY", 3)
    monkeypatch.setattr(_logdet, "_ADMIT_CHUNK", 2)
    monkeypatch.setattr(_logdet, "_FOLD_EVERY", 2)


@pytest.mark.parametrize("strategy", ["exact", "lazy"])
@pytest.mark.parametrize("lam", [0.0, 0.7])
@pytest.mark.parametrize("case", CASES)
def test_matches_brute_force(case, lam, strategy):
    seed, n, d, k, dup, zero = case
    G = make(seed, n, d, dup=dup, zero=zero)
    alpha = default_alpha(G)
    picks, gains, objs, _ = brute_greedy(G, k, alpha, lam=lam)
    tr = greedy_logdet(
        G, k, alpha=alpha, conflict_weight=lam, strategy=strategy, block_rows=7
    )
    assert tr.indices.tolist() == picks
    np.testing.assert_allclose(tr.gains, gains, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tr.objective, objs, rtol=1e-9, atol=1e-12)
    assert tr.indices.dtype == np.int64
    assert not tr.stopped_early


def test_zero_rows_never_picked_and_stop_when_exhausted():
    G = np.zeros((6, 3))
    G[2] = [1.0, 0, 0]
    G[4] = [0, 2.0, 0]
    tr = greedy_logdet(G, 5, alpha=1.0)
    assert tr.indices.tolist() == [4, 2]
    assert not tr.stopped_early
    assert greedy_logdet(np.zeros((4, 3)), 2).indices.size == 0


def test_diagnostics_match_direct_computation():
    G = make(7, 30, 5)
    alpha, lam = 0.8, 0.5
    tr = greedy_logdet(G, 8, alpha=alpha, conflict_weight=lam)
    s = np.zeros(5)
    for j, x in enumerate(tr.indices):
        g = G[x]
        expect = 0.0
        if j > 0 and np.linalg.norm(s) > 0:
            expect = max(0.0, -g @ s / (np.linalg.norm(g) * np.linalg.norm(s)))
        assert tr.conflicts[j] == pytest.approx(expect, abs=1e-12)
        assert tr.scores[j] == pytest.approx(tr.gains[j] - lam * expect, abs=1e-12)
        solo = math.log1p(alpha * g @ g)
        assert tr.epsilons[j] == pytest.approx(tr.gains[j] - solo, abs=1e-12)
        assert tr.epsilons[j] <= 1e-12
        s += g
    np.testing.assert_allclose(tr.initial_gains, np.log1p(alpha * (G**2).sum(1)))
    assert tr.conflicts[0] == 0.0
    assert (tr.conflicts > 0).any()  # the case does exercise the conflict term


def test_conflict_weight_zero_is_fisher():
    G = make(8, 40, 6)
    plain = greedy_logdet(G, 10, alpha=1.0)
    spice0 = greedy_logdet(G, 10, alpha=1.0, conflict_weight=0.0)
    assert plain.indices.tolist() == spice0.indices.tolist()
    np.testing.assert_array_equal(plain.scores, plain.gains)
    assert brute_greedy(G, 10, 1.0)[0] == plain.indices.tolist()


def test_conflict_term_changes_the_pick():
    # Row 1 has a slightly larger gain than row 2 after row 0, but points against it.
    G = np.array([[2.0, 0.0, 0.0], [-0.3, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert greedy_logdet(G, 2, alpha=1.0).indices.tolist() == [0, 1]
    assert greedy_logdet(G, 2, alpha=1.0, conflict_weight=0.5).indices.tolist() == [
        0,
        2,
    ]


def test_early_stop_fires_exactly_where_the_rule_says():
    # Gains: log(1+4)=1.609, log(1+1)=0.693, log(1+0.25)=0.223 (orthogonal rows).
    G = np.diag([2.0, 1.0, 0.5])
    first = math.log(5.0)
    omega = 0.3  # threshold 0.483: second pick (0.693) passes, third (0.223) stops
    tr = greedy_logdet(G, 3, alpha=1.0, early_stop=omega)
    assert tr.indices.tolist() == [0, 1]
    assert tr.stopped_early
    assert tr.gains[1] >= omega * first > math.log(1.25)
    # Right at the boundary: ω = Δ₂/Δ₁ keeps the second pick (rule is strict "<").
    tr = greedy_logdet(G, 3, alpha=1.0, early_stop=math.log(2.0) / first)
    assert tr.indices.tolist() == [0, 1]
    tr = greedy_logdet(G, 3, alpha=1.0, early_stop=math.log(2.0) / first + 1e-9)
    assert tr.indices.tolist() == [0]
    assert greedy_logdet(G, 3, alpha=1.0, early_stop=0.1).indices.tolist() == [0, 1, 2]


@pytest.mark.parametrize("strategy", ["exact", "lazy", "stochastic"])
def test_early_stop_random_matches_brute_and_persists(strategy):
    G = make(9, 40, 4)
    picks, _, _, fired = brute_greedy(G, 20, 1.0, lam=0.2, omega=0.5)
    assert fired
    eng = GreedyLogDet(
        4,
        alpha=1.0,
        conflict_weight=0.2,
        early_stop=0.5,
        strategy="exact" if strategy == "stochastic" else strategy,
    )
    tr = eng.select(G, 20)
    assert tr.indices.tolist() == picks and tr.stopped_early and eng.stopped
    again = eng.select(G, 5)
    assert again.indices.size == 0 and again.initial_gains.shape == (40,)


@pytest.mark.parametrize("strategy", ["exact", "lazy"])
@pytest.mark.parametrize("lam", [0.0, 0.4])
def test_successive_pools_equal_conditioned_brute_force(strategy, lam):
    rng = np.random.default_rng(10)
    A, B = rng.standard_normal((25, 5)), rng.standard_normal((30, 5))
    eng = GreedyLogDet(5, alpha=0.7, conflict_weight=lam, strategy=strategy)
    t1 = eng.select(A, 4)
    t2 = eng.select(B, 6)
    p1, g1, _, _ = brute_greedy(A, 4, 0.7, lam=lam)
    assert t1.indices.tolist() == p1
    p2, _, objs, _ = brute_greedy(B, 6, 0.7, lam=lam, prior=A[p1], first_gain=g1[0])
    assert t2.indices.tolist() == p2
    np.testing.assert_allclose(t2.objective, objs, rtol=1e-9)
    assert eng.n_selected == 10
    assert eng.objective == pytest.approx(logdet(np.vstack([A[p1], B[p2]]), 0.7, 5))
    # initial gains of the second call are conditioned on the first call's picks
    sel = A[p1]
    cond = [logdet(np.vstack([sel, b]), 0.7, 5) - logdet(sel, 0.7, 5) for b in B]
    np.testing.assert_allclose(t2.initial_gains, cond, rtol=1e-9)


@pytest.mark.parametrize("cache", [True, False])
def test_memmap_and_float32(tmp_path, monkeypatch, cache):
    if not cache:  # force the streaming path (no float64 copy of the rows)
        monkeypatch.setattr(_logdet, "_CACHE_BYTES", 0)
    G = make(11, 40, 8).astype(np.float32)
    path = tmp_path / "g.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=G.shape)
    mm[:] = G
    mm.flush()
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=G.shape)
    a = greedy_logdet(G, 10, block_rows=6)
    b = greedy_logdet(mm, 10, block_rows=6)
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_array_equal(a.objective, b.objective)
    c = greedy_logdet(G.astype(np.float64), 10, block_rows=6)
    np.testing.assert_allclose(a.objective, c.objective, rtol=1e-6)
    assert brute_greedy(G.astype(np.float64), 10, a.alpha)[0] == a.indices.tolist()


def test_normalize_is_cosine_variant():
    G = make(12, 30, 5, zero=2)
    tr = greedy_logdet(G, 6, normalize=True)
    assert tr.alpha == 1.0
    norms = np.linalg.norm(G, axis=1, keepdims=True)
    U = np.divide(G, norms, out=np.zeros_like(G), where=norms > 0)
    assert tr.indices.tolist() == brute_greedy(U, 6, 1.0)[0]
    np.testing.assert_allclose(tr.initial_gains[norms[:, 0] > 0], math.log(2))


def test_stochastic_quality_distinct_and_seeded():
    G = make(13, 40, 6)
    k, eps = 10, 0.1
    exact = greedy_logdet(G, k, alpha=1.0)
    runs = [
        greedy_logdet(G, k, alpha=1.0, strategy="stochastic", epsilon=eps, seed=s)
        for s in range(5)
    ]
    for tr in runs:
        assert len(set(tr.indices.tolist())) == len(tr.indices) == k
        assert tr.objective[-1] == pytest.approx(logdet(G[tr.indices], 1.0, 6))
        # the bound holds in expectation; on this easy instance every run is close
        assert tr.objective[-1] >= (1 - 1 / math.e - eps) * exact.objective[-1]
        assert tr.evaluations < 40 * k
    again = greedy_logdet(G, k, alpha=1.0, strategy="stochastic", epsilon=eps, seed=0)
    assert again.indices.tolist() == runs[0].indices.tolist()
    assert len({tuple(t.indices) for t in runs}) > 1
    assert np.mean([t.objective[-1] for t in runs]) > 0.9 * exact.objective[-1]


def test_default_constants_medium_problem_agree(monkeypatch):
    # Production refresh / admission / fold sizes on a bigger problem.
    monkeypatch.setattr(_logdet, "_REFRESH_EVERY", 256)
    monkeypatch.setattr(_logdet, "_ADMIT_CHUNK", 32)
    monkeypatch.setattr(_logdet, "_FOLD_EVERY", 128)
    G = make(18, 1500, 24, dup=5).astype(np.float32)
    a = greedy_logdet(G, 120, conflict_weight=0.1)
    b = greedy_logdet(G, 120, conflict_weight=0.1, strategy="lazy")
    assert a.indices.tolist() == b.indices.tolist()
    assert a.objective[-1] == pytest.approx(
        logdet(G[a.indices].astype(float), a.alpha, 24), rel=1e-9
    )


def test_lazy_evaluates_less_than_naive():
    G = make(14, 400, 16)
    tr = greedy_logdet(G, 30, alpha=1.0)
    lazy = greedy_logdet(G, 30, alpha=1.0, strategy="lazy")
    assert tr.indices.tolist() == lazy.indices.tolist()
    assert tr.evaluations < 400 * 30 / 4


def test_default_alpha():
    G = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    assert default_alpha(G) == pytest.approx(1 / 4)  # median of 25, 1, 4
    assert default_alpha(np.zeros((3, 2))) == 1.0
    assert greedy_logdet(G, 1).alpha == pytest.approx(0.25)


def test_trace_to_dict_is_json():
    tr = greedy_logdet(make(15, 20, 4), 3, alpha=1.0)
    d = json.loads(json.dumps(tr.to_dict()))
    assert d["indices"] == tr.indices.tolist() and len(d["initial_gains"]) == 20
    assert isinstance(tr, GreedyTrace) and len(tr) == 3


def test_nan_rows_named():
    G = make(16, 20, 4)
    G[3, 1] = np.nan
    G[17, 0] = np.inf
    with pytest.raises(NumericalError, match=r"rows \[3, 17\].*(drop|Recompute)"):
        greedy_logdet(G, 3, alpha=1.0, block_rows=4)
    with pytest.raises(NumericalError, match=r"\[3, 17\]"):
        default_alpha(G)
    eng = GreedyLogDet(4, alpha=1.0)
    with pytest.raises(NumericalError, match="candidates rows"):
        eng.select(G, 3)
    assert eng.n_selected == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": 1.0, "early_stop": 0.0}, "early_stop"),
        ({"alpha": 1.0, "early_stop": 1.5}, "early_stop"),
        ({"alpha": 1.0, "strategy": "fast"}, "strategy"),
        ({"alpha": 1.0, "conflict_weight": -0.1}, "conflict_weight"),
        ({"alpha": 1.0, "epsilon": 1.0}, "epsilon"),
        ({"alpha": 1.0, "block_rows": 0}, "block_rows"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        GreedyLogDet(3, **kwargs)


def test_bad_inputs():
    G = make(17, 10, 3)
    with pytest.raises(ParameterError, match="k must"):
        greedy_logdet(G, -1)
    with pytest.raises(ParameterError, match="k must"):
        greedy_logdet(G, 2.5)
    with pytest.raises(ParameterError, match="2-D"):
        greedy_logdet(G[0], 2)
    with pytest.raises(ParameterError, match="dim=4"):
        GreedyLogDet(4, alpha=1.0).select(G, 2)
    assert greedy_logdet(G, 0).indices.size == 0


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 25),
    d=st.integers(1, 6),
    k=st.integers(0, 12),
    lam=st.sampled_from([0.0, 0.3]),
    strategy=st.sampled_from(["exact", "lazy", "stochastic"]),
    seed=st.integers(0, 2**16),
)
def test_property_budget_unique_in_range_deterministic(n, d, k, lam, strategy, seed):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d))
    G[rng.random(n) < 0.2] = 0.0
    kw = dict(alpha=1.0, conflict_weight=lam, strategy=strategy, seed=seed)
    tr = greedy_logdet(G, k, **kw)
    idx = tr.indices.tolist()
    assert len(idx) <= k and len(set(idx)) == len(idx)
    assert all(0 <= i < n and np.any(G[i]) for i in idx)
    assert len(idx) == min(k, int(np.any(G, axis=1).sum()))
    assert greedy_logdet(G, k, **kw).indices.tolist() == idx
    if idx:
        assert tr.objective[-1] == pytest.approx(logdet(G[idx], 1.0, d), rel=1e-9)
