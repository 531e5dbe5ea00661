"""The torch log-det engine picks what the numpy engine picks (on the CPU build too)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harp.core.errors import NumericalError, ParameterError
from harp.selectors.logdet import GreedyLogDet, default_alpha
from harp.selectors.logdet_torch import TorchGreedyLogDet

torch = pytest.importorskip("torch")


def _data(seed: int, n: int = 400, d: int = 24, dup: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # A decaying spectrum, as gradients have, and a few heavy rows.
    g = rng.normal(size=(n, d)) * (1.0 / np.arange(1, d + 1)) ** 0.5
    g *= rng.gamma(1.0, size=(n, 1))
    if dup:
        g[::9] = g[4]
    return g


@pytest.mark.parametrize("conflict", [0.0, 0.5])
@pytest.mark.parametrize("early_stop", [None, 0.3])
@pytest.mark.parametrize("dup", [False, True])
def test_same_picks_and_objective_as_numpy(conflict, early_stop, dup):
    g = _data(1, dup=dup)
    alpha = default_alpha(g)
    kw = dict(alpha=alpha, conflict_weight=conflict, early_stop=early_stop)
    ref = GreedyLogDet(g.shape[1], **kw).select(g, 60)
    out = TorchGreedyLogDet(g.shape[1], storage="fp64", refresh_every=7, **kw).select(
        g, 60
    )
    np.testing.assert_array_equal(out.indices, ref.indices)
    np.testing.assert_allclose(out.objective, ref.objective, rtol=1e-10)
    np.testing.assert_allclose(out.gains, ref.gains, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out.conflicts, ref.conflicts, atol=1e-9)
    np.testing.assert_allclose(out.initial_gains, ref.initial_gains, atol=1e-12)
    assert out.stopped_early == ref.stopped_early


@pytest.mark.parametrize("conflict", [0.0, 0.3])
def test_as_few_exact_evaluations_as_numpy(conflict):
    # The same lazy frontier: the work between refreshes is numpy's, not a fresh
    # widening search per pick (which cost 20x the evaluations at n = 30k).
    g = _data(2, n=3000, d=32)
    alpha = default_alpha(g)
    kw = dict(alpha=alpha, conflict_weight=conflict)
    ref = GreedyLogDet(32, **kw).select(g, 300)
    out = TorchGreedyLogDet(32, storage="fp64", **kw).select(g, 300)
    np.testing.assert_array_equal(out.indices, ref.indices)
    assert out.evaluations == ref.evaluations < 0.5 * 300 * 3000


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 40), refresh=st.integers(1, 50))
def test_property_same_picks_whatever_the_refresh(seed, k, refresh):
    g = _data(seed, n=120, d=10)
    alpha = default_alpha(g)
    ref = GreedyLogDet(10, alpha=alpha, conflict_weight=0.2).select(g, k)
    out = TorchGreedyLogDet(
        10, alpha=alpha, conflict_weight=0.2, storage="fp64", refresh_every=refresh
    ).select(g, k)
    np.testing.assert_array_equal(out.indices, ref.indices)


def test_successive_pools_are_conditioned_like_numpy():
    g1, g2 = _data(2, n=150), _data(3, n=150)
    a = GreedyLogDet(24, alpha=0.5, conflict_weight=0.3)
    b = TorchGreedyLogDet(24, alpha=0.5, conflict_weight=0.3, storage="fp64")
    for pool in (g1, g2):
        np.testing.assert_array_equal(
            b.select(pool, 15).indices, a.select(pool, 15).indices
        )
    assert b.n_selected == a.n_selected == 30
    assert b.objective == pytest.approx(a.objective, rel=1e-10)


def test_normalised_rows_and_streaming_from_the_host():
    g = _data(4).astype(np.float32)
    ref = GreedyLogDet(24, alpha=1.0).select(g, 30, normalize=True)
    streamed = TorchGreedyLogDet(
        24, alpha=1.0, max_device_bytes=0, block_rows=37
    ).select(g, 30, normalize=True)
    np.testing.assert_array_equal(streamed.indices, ref.indices)


def test_a_feature_stores_rows_are_read_in_blocks(tmp_path):
    from harp.features.store import FeatureStore, fill_store

    g = _data(5).astype(np.float32)
    store = FeatureStore.create(
        tmp_path / "s",
        ids=[str(i) for i in range(len(g))],
        dim=g.shape[1],
        spec={"kind": "test"},
        shard_rows=64,
    )
    fill_store(store, lambda k, start, stop: g[start:stop])
    rows = FeatureStore.open(store.directory).rows()
    alpha = default_alpha(g)
    ref = GreedyLogDet(24, alpha=alpha).select(g, 25)
    for budget in (None, 0):
        out = TorchGreedyLogDet(24, alpha=alpha, max_device_bytes=budget).select(
            rows, 25
        )
        np.testing.assert_array_equal(out.indices, ref.indices)


def test_bf16_storage_still_picks_informative_rows():
    g = _data(6)
    alpha = default_alpha(g)
    ref = GreedyLogDet(24, alpha=alpha).select(g, 20)
    low = TorchGreedyLogDet(24, alpha=alpha, storage="bf16").select(g, 20)
    # bf16 keeps three digits: the objective is within a percent of fp64's.
    assert low.objective[-1] == pytest.approx(ref.objective[-1], rel=1e-2)
    assert len(set(low.indices.tolist()) & set(ref.indices.tolist())) >= 15


def test_errors_are_clear():
    with pytest.raises(ParameterError, match="dim must be"):
        TorchGreedyLogDet(0, alpha=1.0)
    with pytest.raises(ParameterError, match="alpha must be"):
        TorchGreedyLogDet(3, alpha=-1.0)
    with pytest.raises(ParameterError, match="dtype 'fp8'"):
        TorchGreedyLogDet(3, alpha=1.0, storage="fp8")
    engine = TorchGreedyLogDet(3, alpha=1.0)
    with pytest.raises(ParameterError, match="3 columns|dim=3"):
        engine.select(np.ones((4, 5)), 2)
    bad = np.ones((4, 3))
    bad[2, 1] = np.nan
    with pytest.raises(NumericalError, match=r"\[2\]"):
        engine.select(bad, 2)
    assert len(engine.select(np.zeros((4, 3)), 2)) == 0  # nothing adds information


@pytest.mark.parametrize("conflict", [0.0, 0.3])
def test_few_device_reads_per_pick(conflict, monkeypatch):
    # On a GPU every value read back to the host waits for the device: the pick loop
    # reads one look per search step and one set of products per pick (it read about
    # 15 values one by one before). Counted on the CPU build: item/float/int/bool
    # conversions, boolean indexing (nonzero) and tolist.
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = [0]
    tolist = torch.Tensor.tolist

    def counted(self):
        reads[0] += 1
        return tolist(self)

    class CountReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("_local_scalar_dense", "nonzero"):
                reads[0] += 1
            return func(*args, **(kwargs or {}))

    g = _data(7, n=3000, d=32)
    kw = dict(alpha=default_alpha(g), conflict_weight=conflict)
    ref = GreedyLogDet(32, **kw).select(g, 200)
    engine = TorchGreedyLogDet(32, storage="fp64", **kw)
    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    with CountReads():
        out = engine.select(g, 200)
    np.testing.assert_array_equal(out.indices, ref.indices)
    assert reads[0] / len(out) < 4


def test_a_look_masks_rows_without_information_and_breaks_ties_by_row():
    # The search's one read back: the best live row (ties to the lowest row index,
    # as numpy), the next outside bound, how far to admit, and how many frontier
    # rows lost all information (q <= 0: masked, then dropped by compact()).
    from harp.selectors.logdet_torch import _Frontier

    frontier = _Frontier(2, torch.float64, torch.device("cpu"))
    rows = torch.eye(2, dtype=torch.float64).repeat(2, 1)
    q = torch.tensor([2.0, 0.0, 2.0, -1e-18], dtype=torch.float64)
    idx = torch.tensor([9, 4, 3, 1])
    frontier.add(idx, rows, q, torch.zeros(4, dtype=torch.float64), q.abs() + 1)
    engine = TorchGreedyLogDet(2, alpha=1.0)
    negq = torch.tensor([-3.0, -2.0, -1.0, -0.5], dtype=torch.float64)
    look = engine._look(frontier, negq, ptr=1)
    assert (look.x, look.pos, look.dead) == (3, 2, 2)
    assert look.best == pytest.approx(np.log1p(2.0)) and look.bound == -2.0
    # Outside bounds log1p(-α·negq) that reach the tie band of the best: -3, -2.
    assert look.reach == 2
    frontier.compact()
    assert frontier.idx[: frontier.size].tolist() == [9, 3]
