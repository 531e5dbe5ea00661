"""HARP-C / HARP-E end to end on a tiny real model: calls, cache, budget, output."""

from __future__ import annotations

import numpy as np
import pytest

from harp.core.amount import resolve_evals
from harp.core.context import RunContext
from harp.data.synthetic import make_skills_suite
from harp.selectors import make_selector


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
        context=RunContext(cache_dir=cache),
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
    # Calls: the representatives first, two of them again (training noise), then
    # active search; never more than evals distinct leaves.
    replicated = sel.oracle_["replicated_leaves"]
    assert replicated == sel.rounds_[0][:2]
    assert len(sel.measured_) <= 6
    assert s.cost.train_eval_calls == len(sel.measured_) + 2
    assert sel.oracle_["calls"] == s.cost.train_eval_calls
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
    assert diag.kind == "harp" and len(diag.leaves) == tree.n_leaves
    assert len(diag.measured) == len(sel.measured_)
    assert diag.oracle["calls"] == len(sel.measured_) + 2
    assert s.cost.device == "cpu"
    # A target of free-form answers: the calls measure the loss ("auto").
    assert sel.metric == "auto" and sel.metric_ == diag.metric == "loss"


def test_rerun_repeats_no_call_and_gives_the_same_selection(tiny_dir, suite, tmp_path):
    params = _params(tiny_dir, tmp_path, evals=6)
    first = make_selector("harp-c", budget=50, **params).fit(suite.pool, suite.target)
    again = make_selector("harp-c", budget=50, **params).fit(suite.pool, suite.target)
    calls = len(first.measured_) + len(first.oracle_["replicated_leaves"])
    assert first.oracle_["calls"] == calls > len(first.measured_) > 0
    assert again.oracle_["calls"] == 0
    # The cost is the calls the method needed, whether run now or read from the cache.
    assert again.selection_.cost.train_eval_calls == calls
    assert again.oracle_["cache_hits"] == calls
    np.testing.assert_array_equal(again.selection_.indices, first.selection_.indices)
    np.testing.assert_array_equal(again.posterior_.mean, first.posterior_.mean)


def test_on_a_multiple_choice_target_the_calls_measure_the_gold_options_logprob(
    tiny_dir, suite, tmp_path
):
    """``metric="auto"`` on a target whose rows have options measures the gold
    option's log-probability: the same calls, cached under the same keys, as
    naming ``option_logprob``, and the same selection."""
    from harp.data import ExampleSet

    target = ExampleSet.from_records(
        [
            {
                "prompt": e.prompt,
                "response": e.response,
                "domain": e.domain,
                "options": [e.response, e.response + "?"],
            }
            for e in suite.target
        ]
    )
    params = _params(tiny_dir, tmp_path, evals=4)
    auto = make_selector("harp-e", budget=40, **params).fit(suite.pool, target)
    assert auto.metric_ == auto.oracle_["metric"] == "option_logprob"
    assert auto.diagnostics().metric == "option_logprob"
    assert auto.oracle_["calls"] > 0
    named = make_selector("harp-e", budget=40, metric="option_logprob", **params)
    named.fit(suite.pool, target)
    assert named.oracle_["calls"] == 0
    assert named.oracle_["cache_hits"] == auto.oracle_["calls"]
    np.testing.assert_array_equal(named.selection_.indices, auto.selection_.indices)
    # Named otherwise, the metric is kept: the loss calls are new ones.
    loss = make_selector("harp-e", budget=40, metric="loss", **params)
    assert loss.fit(suite.pool, target).metric_ == "loss"
    assert loss.oracle_["calls"] > 0


def test_posterior_is_the_measured_leaves_own_with_the_variances_chosen(
    tiny_dir, suite, tmp_path
):
    """The selector's posterior is ``empirical_bayes`` of what it measured, with the
    variances integrated over (default) or plugged in (``variances="reml"``)."""
    from harp.selectors.harp import empirical_bayes

    params = _params(tiny_dir, tmp_path, evals=6, search="none")
    fits = {}
    for variances in ("bayes", "reml"):
        sel = make_selector("harp-c", budget=40, variances=variances, **params)
        sel.fit(suite.pool, suite.target)
        effects = np.full((sel.tree_.n_leaves, len(sel.domains_)), np.nan)
        noise = effects.copy()
        for g, (effect, variance) in sel.measured_.items():
            effects[g], noise[g] = effect, variance
        post = empirical_bayes(
            effects,
            noise,
            sel.tree_.parent_of_leaf,
            covariate=sel.covariate_,
            method=variances,
        )
        np.testing.assert_array_equal(sel.posterior_.mean, post.mean)
        np.testing.assert_array_equal(sel.posterior_.var, post.var)
        fits[variances] = sel
    # The same calls (search="none"), read back from the cache the second time.
    assert fits["reml"].oracle_["calls"] == 0
    unmeasured = ~fits["bayes"].posterior_.measured
    assert np.all(
        fits["bayes"].posterior_.var[unmeasured]
        > fits["reml"].posterior_.var[unmeasured]
    )


def test_training_noise_from_a_replicated_leaf_enters_every_variance(
    tiny_dir, suite, tmp_path
):
    """Two leaves measured twice: the mean of their half squared differences is
    the training variance, added to each measured leaf's bootstrap variance (half
    of it, and the mean of both runs, for a replicated leaf)."""
    from harp.selectors.harp.oracle import LeafOracle

    params = _params(tiny_dir, tmp_path, evals=6, round_size=2)
    sel = make_selector("harp-c", budget=40, **params).fit(suite.pool, suite.target)
    replicated = sel.oracle_["replicated_leaves"]
    assert len(replicated) == 2
    # The calls again, from the cache, through an oracle built by hand.
    context = RunContext(cache_dir=tmp_path)
    oracle = LeafOracle(
        sel._oracle(tiny_dir, suite.target, context, sel.metric_).utility,
        bootstrap=20,
        seed=context.int_seed("bootstrap"),
    )
    subsets = [suite.pool.subset(sel.tree_.leaf_rows(g)) for g in replicated]
    first = oracle.measure(subsets)
    second = oracle.measure(
        subsets, seeds=[context.int_seed("replicate")] * len(subsets)
    )
    assert oracle.calls == 0  # all were the fit's calls
    training = np.mean(
        [(a.effect - b.effect) ** 2 / 2 for a, b in zip(first, second)], axis=0
    )
    np.testing.assert_allclose(sel.oracle_["training_sd"], np.sqrt(training))
    assert np.all(training > 0)
    for g, a, b in zip(replicated, first, second):
        effect, variance = sel.measured_[g]
        np.testing.assert_allclose(effect, (a.effect + b.effect) / 2)
        np.testing.assert_allclose(variance, (a.var + b.var) / 2 + training / 2)
    for g, (effect, variance) in sel.measured_.items():
        if g not in replicated:
            alone = oracle(suite.pool.subset(sel.tree_.leaf_rows(g)))
            np.testing.assert_allclose(effect, alone.effect)
            np.testing.assert_allclose(variance, alone.var + training)
    assert oracle.calls == 0

    # replicates=0: the bootstrap variance alone, every call a distinct leaf.
    off = make_selector("harp-c", budget=40, replicates=0, **params)
    off.fit(suite.pool, suite.target)
    assert off.oracle_["replicated_leaves"] == []
    assert off.oracle_["training_sd"] == [0.0] * len(sel.domains_)
    assert len(off.measured_) == 6
    for g, (effect, variance) in off.measured_.items():
        alone = oracle(suite.pool.subset(off.tree_.leaf_rows(g)))
        np.testing.assert_array_equal(variance, alone.var)


def test_replicates_come_on_top_of_evals(tiny_dir, suite, tmp_path):
    """``evals`` counts distinct leaves; replicates add calls, at most one per
    first-round leaf."""
    params = _params(tiny_dir, tmp_path, evals=5, search="none")
    sel = make_selector("harp-c", budget=40, replicates=50, **params)
    sel.fit(suite.pool, suite.target)
    first_round = sel.rounds_[0]
    assert sel.oracle_["replicated_leaves"] == first_round
    assert len(sel.measured_) == len(first_round)
    assert sel.selection_.cost.train_eval_calls == 2 * len(first_round)


def test_leaf_evaluations_use_the_recipe_given(tiny_dir, suite, tmp_path):
    from harp.core.errors import ParameterError

    base = _params(tiny_dir, tmp_path, evals=3)
    base.pop("train_steps")
    recipe = {"epochs": 1, "batch_size": 4, "lr": 2e-4}
    sel = make_selector("harp-c", budget=40, train=recipe, **base)
    leaf = sel.leaf_recipe(seed=7)
    assert (leaf.epochs, leaf.batch_size, leaf.lr, leaf.seed) == (1, 4, 2e-4, 7)
    assert make_selector("harp-c", train=recipe, train_steps=5).leaf_recipe().steps == 5
    first = sel.fit(suite.pool, suite.target)
    assert first.oracle_["calls"] == 3 + 2  # 3 leaves, 2 of them again
    # Another recipe is another utility: nothing of the first is reused ...
    other = make_selector(
        "harp-c", budget=40, train={**recipe, "lr": 1e-3}, **base
    ).fit(suite.pool, suite.target)
    assert other.oracle_["cache_hits"] == 0
    # ... and the same recipe again reuses every call.
    again = make_selector("harp-c", budget=40, train=recipe, **base)
    assert again.fit(suite.pool, suite.target).oracle_["calls"] == 0
    with pytest.raises(ParameterError, match=r"unknown key 'train\.lrx'"):
        make_selector("harp-c", train={"lrx": 1}, **base).fit(suite.pool, suite.target)


def test_a_damaged_cached_call_is_run_again_not_believed(tiny_dir, suite, tmp_path):
    from harp.training.utility import CACHE_FOLDER

    params = _params(tiny_dir, tmp_path, evals=4)
    first = make_selector("harp-c", budget=50, **params).fit(suite.pool, suite.target)
    calls = [
        path
        for path in sorted((tmp_path / CACHE_FOLDER).glob("*.json"))
        if '"report"' in path.read_text()
    ]
    victim = calls[0]
    text = victim.read_text()
    digit = next(i for i, ch in enumerate(text) if ch in "123456789" and i > 200)
    victim.write_text(text[:digit] + str(int(text[digit]) % 9 + 1) + text[digit + 1 :])
    again = make_selector("harp-c", budget=50, **params).fit(suite.pool, suite.target)
    # The edited result is not used: its call runs again, and the selection is the
    # one the true results give.
    assert again.oracle_["calls"] == 1
    np.testing.assert_array_equal(again.selection_.indices, first.selection_.indices)


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
    del params["encoder"]  # a text-features parameter
    sel = make_selector("harp-c", budget=30, **params).fit(suite.pool, suite.target)
    assert sel.selection_.params["features"] == "GradientFeatures"
    assert sel.selection_.params["features__dim"] == 1024
    # The tree's features: unit gradients plus the target-fit coordinate. Their part
    # of a leaf centroid is a mean of unit vectors: inside the unit ball, not on the
    # scale of raw gradients.
    centroids = sel.tree_.leaf_centroids[:, :-1]
    assert np.all(np.linalg.norm(centroids, axis=1) <= 1 + 1e-9)
    assert (tmp_path / "warmup").is_dir()
    assert len(sel.measured_) == 3


def test_target_fit_coordinate_shapes_the_tree(tiny_dir, suite, tmp_path):
    """The tree clusters [unit features, w · standardized log target-fit loss]."""
    from harp.selectors.harp.oracle import LeafOracle
    from harp.training import EvalConfig, TrainConfig, TrainEvalUtility

    # (No prior covariate: this fit chooses two leaves and cuts the second.)
    params = _params(tiny_dir, tmp_path, evals=3, prior="none")
    sel = make_selector("harp-c", budget=20, target_fit_weight=2.0, **params)
    sel.fit(suite.pool, suite.target)
    off = make_selector("harp-c", budget=20, target_fit_weight=0, **params)
    off.fit(suite.pool, suite.target)
    assert off.target_fit_losses_ is None

    # The oracle's recipe: the "oracle" stream of the selector's seed, its steps.
    context = RunContext(cache_dir=tmp_path)
    utility = TrainEvalUtility(
        tiny_dir,
        suite.target,
        TrainConfig(seed=context.int_seed("oracle"), steps=3),
        EvalConfig(metrics=("loss",)),
        context=context,
    )
    losses = LeafOracle(utility).target_fit_losses(suite.pool)
    assert utility.calls == 0 and utility.hits == 0  # read from the fit's cache
    np.testing.assert_array_equal(sel.target_fit_losses_, losses)
    z = np.log(losses + 1e-6)
    z = (z - z.mean()) / z.std()
    tree = sel.tree_
    dim = off.tree_.leaf_centroids.shape[1]
    assert tree.leaf_centroids.shape[1] == dim + 1
    for g in range(tree.n_leaves):
        rows = tree.leaf_rows(g)
        assert tree.leaf_centroids[g, -1] == pytest.approx(2.0 * z[rows].mean())

    # A heavy weight sorts the leaves by fit: each leaf spans a narrower range of z
    # than the leaves clustered without it.
    def spread(t):
        return np.mean([np.ptp(z[t.leaf_rows(g)]) for g in range(t.n_leaves)])

    assert spread(tree) < spread(off.tree_)
    # Only the last chosen leaf is cut, and it gives up its worst-fitting rows.
    s = sel.selection_
    assert len(s) == 20
    last = tree.leaf_of_row[s.indices[-1]]
    taken = s.indices[tree.leaf_of_row[s.indices] == last]
    left = np.setdiff1d(tree.leaf_rows(last), taken)
    assert len(left) > 0 and len(taken) > 0
    assert losses[taken].max() <= losses[left].min()
    diag = sel.diagnostics()
    leaf0 = tree.leaf_rows(0)
    assert diag.leaves[0].target_fit_loss == pytest.approx(
        float(np.median(losses[leaf0]))
    )


def test_search_breaks_ties_toward_the_least_explored_leaf():
    """Leaves the posterior cannot tell apart: the one least like those measured."""
    from harp.selectors.harp import Hierarchy
    from harp.selectors.harp.bayes import Posterior
    from harp.selectors.harp.selector import HARPCSelector, _novelty

    # One parent, five leaves on a line; leaf 0 measured.
    centroids = np.array([[0.0], [1.0], [2.0], [9.0], [3.0]])
    tree = Hierarchy(
        leaf_of_row=np.arange(5),
        parent_of_leaf=np.zeros(5, dtype=np.int64),
        node_of_parent=np.array([0]),
        leaf_centroids=centroids,
        parent_centroids=centroids.mean(axis=0, keepdims=True),
        representatives=np.array([0]),
    )
    np.testing.assert_allclose(
        _novelty(centroids, tree.parent_of_leaf, [0], np.arange(1, 5)), [1, 2, 9, 3]
    )
    # Nothing measured in a parent: every leaf is maximally new.
    assert np.all(np.isinf(_novelty(centroids, tree.parent_of_leaf, [], np.arange(5))))
    post = Posterior(
        mean=np.array([[2.0], [1.0], [1.0], [1.0], [1.0]]),
        var=np.array([[0.01], [1.0], [1.0], [1.0], [1.0]]),
        measured=np.array([True, False, False, False, False]),
        hyper={},
    )
    sel = HARPCSelector()
    rng = np.random.default_rng(0)
    picks = sel._next_leaves(tree, post, {0: None}, 2, rng)
    assert picks == [3, 4]
    # A higher upper bound still wins over novelty.
    better = Posterior(
        mean=np.array([[2.0], [1.5], [1.0], [1.0], [1.0]]),
        var=post.var,
        measured=post.measured,
        hyper={},
    )
    assert sel._next_leaves(tree, better, {0: None}, 1, rng) == [1]


def test_auto_encoder_falling_back_to_tfidf_embeds_pool_and_target_together(
    tiny_dir, suite, tmp_path, monkeypatch
):
    """Without MiniLM, "auto" is TF-IDF: pool and target must share one space."""
    import harp.features.text as text

    monkeypatch.setattr(text, "minilm_available", lambda: False)
    params = {**_params(tiny_dir, tmp_path, evals=3), "encoder": "auto"}
    sel = make_selector("harp-c", budget=30, **params)
    context = RunContext(cache_dir=tmp_path)
    features = sel.resolved_component("features")
    x, t = features.pool_and_target(suite.pool, suite.target, context)
    assert x.shape[1] == t.shape[1]
    sel.fit(suite.pool, suite.target)  # the alignment prior multiplies the two
    assert sel.covariate_ is not None and np.isfinite(sel.covariate_).all()
    joint = make_selector("harp-c", budget=30, **{**params, "encoder": "tfidf"})
    tfidf = joint.resolved_component("features")
    np.testing.assert_array_equal(
        tfidf.pool_and_target(suite.pool, suite.target, context)[0], x
    )
