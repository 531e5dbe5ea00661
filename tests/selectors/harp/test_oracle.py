"""The HARP oracle: real finetune-and-evaluate calls on a tiny model, cached on disk."""

from __future__ import annotations

import numpy as np
import pytest

from harp.core.context import RunContext
from harp.core.errors import ParameterError
from harp.data.synthetic import make_skills_suite
from harp.selectors.harp.oracle import (
    LeafEffect,
    LeafOracle,
    _paired_bootstrap,
    training_variance,
)
from harp.training import EvalConfig, TrainConfig, TrainEvalUtility


@pytest.fixture(scope="module")
def suite():
    return make_skills_suite(n_pool=120, n_target_per_domain=8, n_pretrain=10)


def _oracle(tiny_dir, suite, cache, metric="loss", steps=4, **kw):
    utility = TrainEvalUtility(
        tiny_dir,
        suite.target,
        TrainConfig(steps=steps, batch_size=4, seed=0),
        EvalConfig(metrics=("loss", "exact_match")),
        context=RunContext(cache_dir=cache),
    )
    return LeafOracle(utility, metric=metric, bootstrap=50, **kw)


def test_calls_are_cached_and_counted(tiny_dir, suite, tmp_path):
    oracle = _oracle(tiny_dir, suite, tmp_path)
    leaf = suite.pool.subset(range(10))
    first = oracle(leaf)
    assert (oracle.calls, oracle.hits) == (1, 0)
    assert first.effect.shape == (len(suite.target.domains),)
    assert np.all(first.var > 0) and not first.cached
    again = oracle(leaf)
    assert (oracle.calls, oracle.hits) == (1, 1)
    np.testing.assert_array_equal(again.effect, first.effect)
    assert again.cached and again.key == first.key
    # A new process (a new oracle) finds the finished call on disk: no rerun.
    fresh = _oracle(tiny_dir, suite, tmp_path)
    assert fresh.is_cached(leaf)
    np.testing.assert_array_equal(fresh(leaf).effect, first.effect)
    assert (fresh.calls, fresh.hits) == (0, 1)
    # Other rows, or another recipe, are another call.
    oracle(suite.pool.subset(range(10, 20)))
    assert oracle.calls == 2
    other = _oracle(tiny_dir, suite, tmp_path, steps=5)
    assert not other.is_cached(leaf)


def test_loss_effect_is_the_loss_reduction(tiny_dir, suite, tmp_path):
    """The effect equals base loss minus tuned loss, per domain, computed directly."""
    from harp.models import load_model
    from harp.training import EvalConfig, evaluate, finetune

    oracle = _oracle(tiny_dir, suite, tmp_path)
    leaf = suite.pool.subset(range(12))
    result = oracle(leaf)
    model, tok = load_model(tiny_dir)
    cfg = EvalConfig(metrics=("loss",))
    base = evaluate(model, tok, suite.target, cfg)
    tuned = evaluate(
        finetune(model, tok, leaf, oracle.utility.train_config), tok, suite.target, cfg
    )
    for k, d in enumerate(oracle.domains):
        expect = base.estimate(d, "loss").mean - tuned.estimate(d, "loss").mean
        assert result.effect[k] == pytest.approx(expect, abs=1e-9)
    np.testing.assert_allclose(
        oracle.base_scores, [-base.estimate(d, "loss").mean for d in oracle.domains]
    )
    assert not oracle.bounded


def test_paired_bootstrap_variance_matches_analytic():
    rng = np.random.default_rng(0)
    base = rng.normal(size=400)
    tuned = base + 0.3 + rng.normal(scale=0.5, size=400)
    mean, var = _paired_bootstrap(tuned, base, 2000, np.random.default_rng(1))
    diff = tuned - base
    assert mean == pytest.approx(diff.mean())
    assert var == pytest.approx(diff.var(ddof=1) / len(diff), rel=0.15)
    # Pairing removes the shared item difficulty: far smaller than unpaired.
    assert var < 0.5 * (tuned.var() + base.var()) / len(diff)


def test_bad_metric_is_refused(tiny_dir, suite, tmp_path):
    with pytest.raises(ParameterError, match="metric='accuracy'"):
        _oracle(tiny_dir, suite, tmp_path, metric="accuracy")
    loss_only = TrainEvalUtility(
        tiny_dir,
        suite.target,
        TrainConfig(steps=1),
        EvalConfig(metrics=("loss",)),
        context=RunContext(cache_dir=tmp_path),
    )
    with pytest.raises(ParameterError, match="does not compute it"):
        LeafOracle(loss_only, metric="exact_match")


def test_target_fit_losses_are_the_pool_loss_of_a_target_finetune(
    tiny_dir, suite, tmp_path
):
    """One finetune on the target with the oracle's recipe, then each row's loss."""
    from harp.models import load_model
    from harp.training.evaluate import response_losses
    from harp.training.finetune import finetune

    oracle = _oracle(tiny_dir, suite, tmp_path)
    pool = suite.pool.subset(range(30))
    losses = oracle.target_fit_losses(pool)

    model, tok = load_model(tiny_dir)
    tuned = finetune(
        model, tok, suite.target, TrainConfig(steps=4, batch_size=4, seed=0)
    )
    np.testing.assert_allclose(
        losses, response_losses(tuned, tok, pool), rtol=1e-6, atol=1e-7
    )
    # The base's own losses differ: the finetune happened.
    base_model, _ = load_model(tiny_dir)
    assert not np.allclose(losses, response_losses(base_model, tok, pool))
    # Cached on disk and not counted as a leaf call (its time is kept apart); a new
    # oracle reads it back.
    assert (oracle.calls, oracle.hits) == (0, 0)
    assert oracle.target_fit_seconds > 0 and oracle.seconds == 0
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "train-eval").glob("*")}
    assert len(files) == 1
    again = _oracle(tiny_dir, suite, tmp_path).target_fit_losses(pool)
    np.testing.assert_array_equal(again, losses)
    assert {p: p.stat().st_mtime_ns for p in files} == files
    # Another metric or bootstrap count changes the calls, not the target fit.
    other_metric = _oracle(tiny_dir, suite, tmp_path, metric="exact_match")
    np.testing.assert_array_equal(other_metric.target_fit_losses(pool), losses)
    assert {p: p.stat().st_mtime_ns for p in files} == files
    # Another pool is another entry.
    other = oracle.target_fit_losses(suite.pool.subset(range(30, 40)))
    assert other.shape == (10,)
    assert len(list((tmp_path / "train-eval").glob("*"))) == 2


def _effect(values):
    return LeafEffect(np.asarray(values, float), np.zeros(len(values)), 0.0, False, "")


def test_training_variance_is_half_the_mean_squared_difference():
    first = [_effect([1.0, 0.0]), _effect([2.0, 1.0]), _effect([0.5, -1.0])]
    second = [_effect([0.6, 0.0]), _effect([2.2, 0.7]), _effect([0.5, -1.3])]
    expected = [
        np.mean([0.4**2, 0.2**2, 0.0]) / 2,
        np.mean([0.0, 0.3**2, 0.3**2]) / 2,
    ]
    np.testing.assert_allclose(training_variance(first, second), expected)
    # Symmetric in the two runs.
    np.testing.assert_allclose(training_variance(second, first), expected)
    with pytest.raises(ParameterError, match="pairs"):
        training_variance(first, second[:2])
    with pytest.raises(ParameterError, match="pairs"):
        training_variance([], [])


def test_a_reseeded_measurement_is_another_training_run(tiny_dir, suite, tmp_path):
    """The recipe's seed moves a leaf's effect by more than the bootstrap says."""
    oracle = _oracle(tiny_dir, suite, tmp_path, steps=8)
    leaves = [suite.pool.subset(range(i, i + 12)) for i in (0, 12)]
    first = oracle.measure(leaves)
    second = oracle.measure(leaves, seeds=[99, 99])
    assert oracle.calls == 4
    assert all(a.key != b.key for a, b in zip(first, second))
    variance = training_variance(first, second)
    assert np.all(variance > 0)
    # Asked again, the replicates come from the cache.
    again = oracle.measure(leaves, seeds=[99, 99])
    assert oracle.calls == 4 and all(r.cached for r in again)
    np.testing.assert_array_equal(again[0].effect, second[0].effect)
