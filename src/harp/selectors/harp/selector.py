"""The HARP selectors (HARP-C and HARP-E): measure a few leaves, infer the rest, select.

Pipeline of one fit: features of the pool (sentence embeddings, or projected LoRA
gradients) → a three-level k-means tree → the oracle finetunes the base model on the
representative leaf of every parent, then on the leaves the posterior says matter most
(active search) → empirical-Bayes posteriors for every leaf → greedy over leaves on the
envelope, best prefix, point-budget cap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harp.core.amount import resolve_evals
from harp.core.context import RunContext
from harp.core.records import ExampleSet
from harp.features.components import (
    FeatureComponent,
    GradientFeatures,
    TextFeatures,
    unit_rows,
)
from harp.selectors.base import (
    BaseSelector,
    Interval,
    Options,
    SelectResult,
    check_is_fitted,
)
from harp.selectors.diagnostics import HARPDiagnostics, LeafDiagnostics
from harp.selectors.harp.bayes import Posterior, empirical_bayes
from harp.selectors.harp.envelopes import (
    GreedyPath,
    cap_to_budget,
    greedy_envelope,
    lcb_effects,
)
from harp.selectors.harp.hierarchy import Hierarchy, build_hierarchy
from harp.selectors.harp.oracle import LeafEffect, LeafOracle, training_variance
from harp.selectors.registry import register
from harp.training.config import (
    EVAL_METRICS,
    OPTION_METRICS,
    EvalConfig,
    TrainConfig,
    config_from_mapping,
)

__all__ = ["HARPCSelector", "HARPESelector"]

log = logging.getLogger(__name__)

#: z of a one-sided 95% bound: the "upper bound" of active search and pruning.
_UCB_Z = 1.645

#: HARP's gradient features: unit-length, 1024-dimensional, at the end of a
#: one-checkpoint warm-up on 5% of the pool (the warm-up SPICE uses, cached).
_GRADIENT_DEFAULTS: dict[str, Any] = {"dim": 1024, "n_checkpoints": 1}


class _HARPSelector(BaseSelector):
    """Shared HARP machinery; the subclasses fix the envelope."""

    needs_target = True
    uses_model = True
    fills_budget = False
    envelope: str = ""
    _components = ("features",)

    _parameter_constraints = {
        "budget": ["budget"],
        "seed": ["seed"],
        "model": [None, str, Path],
        "evals": [Interval(int, 1, None), Interval(float, 0.0, 1.0, closed="right")],
        "metric": [Options("auto", *EVAL_METRICS)],
        "features": [None, Options("text", "gradient"), TextFeatures, GradientFeatures],
        "target_fit_weight": [Interval(float, 0.0, None), Interval(int, 0, None)],
        "leaf_size": [None, Interval(int, 1, None)],
        "leaves_per_parent": [None, Interval(int, 1, None)],
        "parents_per_node": [None, Interval(int, 1, None)],
        "hierarchy": [Options("tree", "flat")],
        "pooling": [Options("hierarchical", "none")],
        "variances": [Options("bayes", "reml")],
        "search": [Options("ucb", "random", "none")],
        "round_size": [Interval(int, 1, None)],
        "prior": [Options("none", "alignment")],
        "kappa": [None, Interval(float, 0.0, None)],
        "train": [None, dict],
        "train_steps": [None, Interval(int, 1, None)],
        "bootstrap": [Interval(int, 2, None)],
        "replicates": [Interval(int, 0, None)],
        "context": [None, RunContext],
    }

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        model: str | Path | None = None,
        evals: int | float = 0.2,
        metric: str = "auto",
        features: FeatureComponent | str | None = None,
        target_fit_weight: float = 0.5,
        leaf_size: int | None = None,
        leaves_per_parent: int | None = None,
        parents_per_node: int | None = None,
        hierarchy: str = "tree",
        pooling: str = "hierarchical",
        variances: str = "bayes",
        search: str = "ucb",
        round_size: int = 4,
        prior: str = "alignment",
        kappa: float | None = None,
        train: dict[str, Any] | None = None,
        train_steps: int | None = None,
        bootstrap: int = 200,
        replicates: int = 2,
        context: RunContext | None = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.model = model
        self.evals = evals
        self.metric = metric
        self.features = features
        self.target_fit_weight = target_fit_weight
        self.leaf_size = leaf_size
        self.leaves_per_parent = leaves_per_parent
        self.parents_per_node = parents_per_node
        self.hierarchy = hierarchy
        self.pooling = pooling
        self.variances = variances
        self.search = search
        self.round_size = round_size
        self.prior = prior
        self.kappa = kappa
        self.train = train
        self.train_steps = train_steps
        self.bootstrap = bootstrap
        self.replicates = replicates
        self.context = context

    def _default_component(
        self, name: str, kind: str | None = None
    ) -> FeatureComponent:
        if kind == "gradient":
            return GradientFeatures(**_GRADIENT_DEFAULTS)
        return TextFeatures()

    # -- features --------------------------------------------------------------

    def _target_fit(
        self, oracle: LeafOracle, pool: ExampleSet
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The target-fit losses and their standardized log (None, None when off).

        Text features tell tasks apart but not a right answer from a wrong one of
        the same task, so a leaf would mix both and its measured effect would
        average them. The target-fit loss does tell them apart; as one extra
        coordinate of the tree's features (log scale: losses are heavy-tailed) it
        splits a task's region into rows that follow the target's rule and rows
        that contradict it, at every level: a parent is then a region of similar
        content *and* similar fit, whose leaves share an effect.
        """
        if not self.target_fit_weight:
            return None, None
        losses = oracle.target_fit_losses(pool)
        z = np.log(losses + 1e-6)
        spread = z.std()
        z = (z - z.mean()) / spread if spread > 0 else np.zeros_like(z)
        return losses, z

    def _tree_features(self, x: np.ndarray, fit_z: np.ndarray | None) -> np.ndarray:
        """What the tree clusters: the features, plus the weighted target fit."""
        if fit_z is None:
            return x
        return np.column_stack([unit_rows(x), self.target_fit_weight * fit_z])

    def _tree(self, x: np.ndarray, context: RunContext) -> Hierarchy:
        # Eight leaves a parent by default: the representatives then cost 1/8 of the
        # leaves, which leaves room for active search inside the default 20% of calls.
        per_parent = 8 if self.leaves_per_parent is None else self.leaves_per_parent
        tree = build_hierarchy(
            x,
            leaf_size=self.leaf_size,
            leaves_per_parent=per_parent,
            parents_per_node=self.parents_per_node,
            seed=context.int_seed("tree", bits=32),
        )
        return tree

    # -- active search ---------------------------------------------------------

    def _parents(self, tree: Hierarchy) -> np.ndarray:
        # The flat ablation: every leaf its own region, nothing shared between leaves.
        if self.hierarchy == "flat":
            return np.arange(tree.n_leaves)
        return tree.parent_of_leaf

    def _initial_leaves(self, tree: Hierarchy, n_evals: int, rng) -> list[int]:
        sizes = np.bincount(tree.leaf_of_row, minlength=tree.n_leaves)
        if self.hierarchy == "flat":
            first = rng.permutation(tree.n_leaves)[: min(n_evals, tree.n_parents)]
            return [int(g) for g in first]
        reps = np.asarray(tree.representatives)
        # Biggest regions first, so that a budget smaller than the number of parents
        # still measures where most of the pool is.
        parent_sizes = np.bincount(
            tree.parent_of_leaf, weights=sizes, minlength=tree.n_parents
        )
        order = np.lexsort((np.arange(len(reps)), -parent_sizes[: len(reps)]))
        return [int(reps[p]) for p in order[:n_evals]]

    def _posterior(
        self,
        tree: Hierarchy,
        observed: dict[int, tuple[np.ndarray, np.ndarray]],
        n_domains: int,
        covariate: np.ndarray | None,
    ) -> Posterior:
        effects = np.full((tree.n_leaves, n_domains), np.nan)
        noise = np.full((tree.n_leaves, n_domains), np.nan)
        for g, (effect, variance) in observed.items():
            effects[g] = effect
            noise[g] = variance
        return empirical_bayes(
            effects,
            noise,
            self._parents(tree),
            covariate=covariate,
            pooling=self.pooling,
            method=self.variances,
        )

    def _next_leaves(
        self,
        tree: Hierarchy,
        post: Posterior,
        measured: dict,
        k: int,
        rng,
    ) -> list[int]:
        open_leaves = np.array(
            [g for g in range(tree.n_leaves) if g not in measured], dtype=np.int64
        )
        if len(open_leaves) == 0 or k <= 0:
            return []
        if self.search == "random":
            return [int(g) for g in rng.permutation(open_leaves)[:k]]
        upper = post.mean + _UCB_Z * np.sqrt(np.maximum(post.var, 0.0))
        active = (upper > 0).any(axis=0)
        if not active.any():
            return []  # nothing anywhere can help: stop spending calls
        ucb = upper[open_leaves][:, active].sum(axis=1)
        # Prune: a leaf whose upper bound is below zero on every active domain
        # cannot help; measuring it would only spend a call.
        alive = (upper[open_leaves][:, active] > 0).any(axis=1)
        candidates = open_leaves[alive]
        ucb = ucb[alive]
        if len(candidates) == 0:
            return []
        # Leaves a posterior cannot tell apart (no covariate: every unmeasured leaf
        # of a parent) go to the one least like the parent's measured leaves, so the
        # calls explore a region's variety instead of its lowest leaf ids.
        novelty = _novelty(
            tree.leaf_centroids, self._parents(tree), list(measured), candidates
        )
        order = candidates[np.lexsort((candidates, -novelty, -np.round(ucb, 9)))]
        # Spread a round over regions: one leaf per parent first, then the rest.
        parents = self._parents(tree)
        picked: list[int] = []
        seen: set[int] = set()
        for g in order:
            if parents[g] not in seen:
                picked.append(int(g))
                seen.add(int(parents[g]))
            if len(picked) == k:
                return picked
        for g in order:
            if int(g) not in picked:
                picked.append(int(g))
            if len(picked) == k:
                break
        return picked

    # -- the fit ---------------------------------------------------------------

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        from harp.execution import make_executor

        assert target is not None  # checked by BaseSelector.fit (needs_target)
        # A name makes an executor owned by this fit (a Ray cluster it starts is
        # stopped at the end); an instance belongs to the caller.
        given = context.executor
        executor = None if given is None else make_executor(given)
        try:
            return self._select_with(
                pool, target, budget, context.replace(executor=executor)
            )
        finally:
            if executor is not None and executor is not given:
                executor.shutdown()

    def leaf_recipe(self, seed: int = 0) -> TrainConfig:
        """The finetuning recipe of every leaf evaluation (``train``, ``train_steps``).

        Raises
        ------
        ParameterError
            For an unknown field of ``train`` or a bad value.
        """
        values = dict(self.train or {})
        if self.train_steps is not None:
            values.update(steps=self.train_steps, epochs=None)
        recipe = config_from_mapping(
            TrainConfig, values, where=type(self).__name__, section="train"
        )
        return TrainConfig(**{**recipe.to_dict(), "seed": seed})

    def oracle_metric(self, target: ExampleSet) -> str:
        """The metric the leaf calls measure on ``target``: ``metric``, or for
        ``"auto"`` the gold option's log-probability on a multiple-choice target
        and the loss on any other."""
        if self.metric != "auto":
            return self.metric
        return OPTION_METRICS[0] if target.has_options else "loss"

    def _oracle(
        self, model_dir: Path, target: ExampleSet, context: RunContext, metric: str
    ) -> LeafOracle:
        """The leaf oracle: one training recipe and one metric for every call."""
        from harp.training.utility import TrainEvalUtility

        train = self.leaf_recipe(context.int_seed("oracle"))
        utility = TrainEvalUtility(
            model_dir,
            target,
            train,
            EvalConfig(metrics=(metric,)),
            context=context,
        )
        return LeafOracle(
            utility,
            metric=metric,
            bootstrap=self.bootstrap,
            seed=context.int_seed("bootstrap"),
        )

    def _select_with(
        self,
        pool: ExampleSet,
        target: ExampleSet,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        started = time.perf_counter()
        self.leaf_recipe()  # a bad recipe fails before any feature is computed
        rng = context.rng("search")
        model_dir = self.model_dir(pool, context)
        features = self.resolved_component("features")
        features.check()
        x, t = features.pool_and_target(pool, target, context, model_dir=model_dir)
        metric = self.oracle_metric(target)
        oracle = self._oracle(model_dir, target, context, metric)
        target_loss, fit_z = self._target_fit(oracle, pool)
        x_tree = self._tree_features(x, fit_z)
        tree = self._tree(x_tree, context)
        domains = oracle.domains
        leaf_rows = [tree.leaf_rows(g) for g in range(tree.n_leaves)]
        covariate = None
        if self.prior == "alignment":
            by_domain = target.by_domain()
            centres = unit_rows(
                np.stack([t[i].mean(axis=0) for i in by_domain.values()])
            )
            # A leaf's alignment: its mean feature's cosine to the nearest domain.
            # (Of the features alone: the target has no target-fit coordinate.)
            leaf_means = np.stack([x[rows].mean(axis=0) for rows in leaf_rows])
            covariate = (unit_rows(leaf_means) @ centres.T).max(axis=1)

        n_evals = resolve_evals(self.evals, tree.n_leaves)
        measured: dict[int, LeafEffect] = {}
        rounds: list[list[int]] = []

        def measure(
            leaves: list[int], replicated: Sequence[int] = ()
        ) -> list[LeafEffect]:
            """Measure ``leaves``, and ``replicated`` again with the replicate seed,
            in one map (so the replicates fill a stack or an idle worker)."""
            subsets = [pool.subset(leaf_rows[g]) for g in [*leaves, *replicated]]
            seeds = [None] * len(leaves) + [replicate_seed] * len(replicated)
            results = oracle.measure(subsets, context.executor, seeds=seeds)
            for g, result in zip(leaves, results):
                measured[g] = result
            rounds.append(list(leaves))
            return results[len(leaves) :]

        initial = self._initial_leaves(tree, n_evals, rng)
        # The biggest regions' representatives once more, with another recipe seed:
        # how much of an effect is the training run's luck. On top of `evals`: taken
        # from it, they would cost distinct leaves, and the within-parent variance
        # is estimated from those (on the demo's suite, 2 fewer leaves measured
        # moved 90% coverage from 0.69 to 0.55).
        replicated = initial[: self.replicates]
        replicate_seed = context.int_seed("replicate")
        repeats = measure(initial, replicated)
        again: dict[int, LeafEffect] = {}
        training_var = np.zeros(len(domains))
        if replicated:
            again = dict(zip(replicated, repeats))
            training_var = training_variance([measured[g] for g in replicated], repeats)
            log.info(
                "%s: training noise sd per domain %s (%d leaves measured twice); "
                "median bootstrap sd %s",
                self.name,
                np.array2string(np.sqrt(training_var), precision=4),
                len(replicated),
                np.array2string(
                    np.sqrt(np.median([r.var for r in measured.values()], axis=0)),
                    precision=4,
                ),
            )

        def observed() -> dict[int, tuple[np.ndarray, np.ndarray]]:
            return {
                g: _observation(result, again.get(g), training_var)
                for g, result in measured.items()
            }

        post = self._posterior(tree, observed(), len(domains), covariate)
        while self.search != "none" and len(measured) < n_evals:
            k = min(self.round_size, n_evals - len(measured))
            nxt = self._next_leaves(tree, post, measured, k, rng)
            if not nxt:
                break
            measure(nxt)
            post = self._posterior(tree, observed(), len(domains), covariate)

        base = oracle.base_scores
        effects = (
            post.mean
            if self.kappa is None
            else lcb_effects(post.mean, post.var, self.kappa)
        )
        active = np.asarray((effects > 0).any(axis=0))
        path = greedy_envelope(
            effects, base, kind=self.envelope, bounded=oracle.bounded, active=active
        )
        chosen = [int(g) for g in path.chosen]
        if not chosen:
            log.warning(
                "%s: no leaf is expected to help the target (every posterior effect "
                "is <= 0 on the active domains); the selection is empty. Measure "
                "more leaves (--evals) or check the target and the base model",
                self.name,
            )
        # Inside a leaf (only the last chosen leaf is ever cut): the rows that fit
        # the target best first, or without the target fit those nearest the
        # leaf's centroid.
        chosen_set = set(chosen)

        def within_order(g: int, rows: np.ndarray) -> np.ndarray:
            if g not in chosen_set:
                return rows
            if target_loss is not None:
                return rows[np.argsort(target_loss[rows], kind="stable")]
            distance = np.linalg.norm(x_tree[rows] - tree.leaf_centroids[g], axis=1)
            return rows[np.argsort(distance, kind="stable")]

        within = [within_order(g, rows) for g, rows in enumerate(leaf_rows)]
        indices = cap_to_budget(chosen, leaf_rows, budget, within_leaf_order=within)

        leaf_value = effects[:, active].sum(axis=1) if active.any() else effects.sum(1)
        scores = leaf_value[tree.leaf_of_row]
        gain_of_leaf = dict(zip(path.order.tolist(), path.gains.tolist()))
        taken = np.bincount(tree.leaf_of_row[indices], minlength=tree.n_leaves)
        gains = np.array(
            [gain_of_leaf[int(g)] / taken[g] for g in tree.leaf_of_row[indices]]
        )

        self.metric_ = metric
        self.tree_ = tree
        self.target_fit_losses_ = target_loss
        self.covariate_ = covariate
        self.posterior_ = post
        self.domains_ = domains
        self.base_scores_ = base
        self.measured_ = observed()
        self.rounds_ = rounds
        self.path_: GreedyPath = path
        self.chosen_leaves_ = chosen
        self.active_domains_ = tuple(d for d, a in zip(domains, active) if a)
        self.oracle_ = {
            "metric": metric,
            "calls": oracle.calls,
            "cache_hits": oracle.hits,
            "seconds": round(oracle.seconds, 3),
            # One finetune on the target (not a leaf call): what the target fit cost.
            "target_fit_seconds": (
                None
                if oracle.target_fit_seconds is None
                else round(oracle.target_fit_seconds, 3)
            ),
            "measured_leaves": len(measured),
            "replicated_leaves": list(replicated),
            "training_sd": np.sqrt(training_var).tolist(),
            "n_leaves": tree.n_leaves,
            "total_seconds": round(time.perf_counter() - started, 3),
        }
        log.info(
            "%s: %d leaves (%d measured, %d calls run, %d cached), %d chosen, %d rows",
            self.name,
            tree.n_leaves,
            len(measured),
            oracle.calls,
            oracle.hits,
            len(chosen),
            len(indices),
        )
        # The calls the method used (a cache hit still counts: it is a call the
        # method needed, answered from an earlier run); oracle_ splits run vs cached.
        cost = {
            "train_eval_calls": len(measured) + len(replicated),
            "rows_scored": len(pool),
            "device": context.device_name,
        }
        return indices, scores, gains, cost

    def diagnostics(self) -> HARPDiagnostics:
        """The tree with every leaf's posterior, the measurements and the greedy path.

        ``harp inspect`` and ``harp report`` read it (its ``to_dict`` is the JSON
        written beside a selection).
        """
        check_is_fitted(self)
        tree, post = self.tree_, self.posterior_
        sizes = np.bincount(tree.leaf_of_row, minlength=tree.n_leaves)
        chosen = set(self.chosen_leaves_)
        sd = np.sqrt(np.maximum(post.var, 0.0))
        fit = self.target_fit_losses_
        leaves = [
            LeafDiagnostics(
                leaf=g,
                parent=int(tree.parent_of_leaf[g]),
                node=int(tree.node_of_parent[tree.parent_of_leaf[g]]),
                size=int(sizes[g]),
                measured=g in self.measured_,
                effect=(self.measured_[g][0].tolist() if g in self.measured_ else None),
                mean=post.mean[g].tolist(),
                sd=sd[g].tolist(),
                chosen=g in chosen,
                target_fit_loss=(
                    None if fit is None else float(np.median(fit[tree.leaf_rows(g)]))
                ),
            )
            for g in range(tree.n_leaves)
        ]
        return HARPDiagnostics(
            method=self.name,
            metric=self.metric_,
            domains=list(self.domains_),
            active_domains=list(self.active_domains_),
            base=self.base_scores_.tolist(),
            leaves=leaves,
            rounds=self.rounds_,
            greedy_order=self.path_.order.tolist(),
            greedy_gains=self.path_.gains.tolist(),
            prefix=int(self.path_.prefix),
            hyper=post.hyper,
            oracle=self.oracle_,
        )


def _observation(
    first: LeafEffect, second: LeafEffect | None, training_var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A measured leaf's effect and its noise variance, as the posterior sees it.

    The noise is the bootstrap's (which target items were drawn) plus the training
    recipe's own. A leaf measured twice counts as the mean of both runs: they share
    the target items (so the bootstrap part stays) and average two draws of the
    recipe's noise.
    """
    if second is None:
        return first.effect, first.var + training_var
    return (
        (first.effect + second.effect) / 2.0,
        (first.var + second.var) / 2.0 + training_var / 2.0,
    )


def _novelty(
    position: np.ndarray, parents: np.ndarray, measured: list[int], leaves: np.ndarray
) -> np.ndarray:
    """Distance of each leaf to the nearest measured leaf of its parent (inf: none)."""
    out = np.full(len(leaves), np.inf)
    done = np.asarray(measured, dtype=np.int64)
    for i, g in enumerate(leaves):
        same = done[parents[done] == parents[g]]
        if len(same):
            out[i] = np.min(np.linalg.norm(position[same] - position[g], axis=1))
    return out


@register
class HARPCSelector(_HARPSelector):
    """HARP-C: hierarchical active region pruning with the conservative envelope.

    Clusters the pool into large nodes → parents → leaves, finetunes the base model
    (LoRA) on a few representative leaves and measures each one's effect on every
    target domain, infers every other leaf's effect with empirical-Bayes posteriors,
    then greedily adds leaves to maximise
    :math:`\\sum_{d} \\mathrm{clip}_{01}(b_d + \\max_{g\\in S}\\phi^+_{g,d}
    - \\sum_{g\\in S}\\phi^-_{g,d})` over active domains — only the strongest helpful
    leaf per domain counts and every harm adds up — keeps the best prefix of the
    greedy order and caps the union of its rows at the budget. The selection is often
    much smaller than the budget.

    Parameters
    ----------
    budget : int, float or str, default="10%"
        Most rows to select (HARP usually selects fewer).
    seed : int or None, default=0
        Root of the seeds of the clustering, the finetuning, the bootstraps and the
        search (each a named stream of it).
    model : str, Path or None, default=None
        A local Hugging Face causal-LM folder, or ``"proxy"``/None for the built-in
        proxy pretrained on the pool (cached).
    evals : int or float, default=0.2
        Leaves measured by a train-evaluate call: a count, or a fraction of the
        number of leaves (``replicates`` adds its calls to these).
    metric : {"auto", "loss", "exact_match", "option_logprob", \
"option_accuracy"}, default="auto"
        The effect a call measures: the target loss reduction (unbounded, no clip),
        the exact-match gain (bounded, clipped to [0, 1]), or for multiple-choice
        targets the gain in the gold option's log-probability (unbounded; the
        sensitive choice) or in option accuracy (bounded). ``"auto"``: the option
        log-probability when every target row is multiple-choice (a loss would
        also reward a leaf of wrong answers in the target's format), else the loss
        (generation for exact match costs far more per call). The metric used is
        ``metric_`` after selection.
    features : TextFeatures, GradientFeatures, "text", "gradient" or None
        What the tree clusters. None or ``"text"``: ``TextFeatures()``, sentence
        embeddings (``features__encoder="tfidf"`` for hashed TF-IDF).
        ``"gradient"``: ``GradientFeatures(dim=1024, n_checkpoints=1)``,
        unit-length projected LoRA gradients at the end of a short warm-up on 5% of
        the pool (the warm-up SPICE uses, cached). Or pass a component.
    target_fit_weight : float, default=0.5
        Weight of the target-fit coordinate in the tree's features: each pool row's
        response loss under the base finetuned on the target (one extra finetune
        with the calls' recipe and one forward pass over the pool, cached),
        log-scaled and standardized, appended to the unit feature vectors. It lets a
        leaf separate rows that follow the target's rule from rows of the same task
        that contradict it (wrong answers, off-format outputs), which text features
        cannot, at every level of the tree; rows of a cut leaf are then taken best
        fit first. 0 clusters the features alone.
    leaf_size, leaves_per_parent, parents_per_node : int or None
        Shape of the tree; None scales the leaf size and the parents per node to the
        pool (:func:`harp.selectors.harp.default_shape`) and puts 8 leaves under a
        parent, so that the representatives (one per parent) use about 1/8 of the
        leaves and the default ``evals`` leaves room for active search.
    hierarchy : {"tree", "flat"}, default="tree"
        ``"flat"`` (an ablation) treats every leaf as its own region.
    pooling : {"hierarchical", "none"}, default="hierarchical"
        ``"none"`` (an ablation) gives unmeasured leaves their parent's raw mean.
    variances : {"bayes", "reml"}, default="bayes"
        How the posterior treats the prior's variances (between parents, between
        the leaves of a parent): integrated over their posterior given the measured
        leaves (``"bayes"``), or plugged in at their REML estimate (``"reml"``, the
        paper's empirical Bayes). Both carry the uncertainty of the estimated mean
        and covariate slope. With the few parents a search measures twice, the
        plug-in estimate of the within-parent spread runs low: on the skills suite
        (3 seeds) its 90% intervals held 60–76% of the unmeasured leaves' true
        effects, integrated 81–94% (see :func:`empirical_bayes`, ``method``).
    search : {"ucb", "random", "none"}, default="ucb"
        How calls after the representatives are spent: on the leaves with the
        highest upper confidence bound over active domains (pruning leaves whose
        bound is below zero everywhere), on random leaves, or not at all.
    round_size : int, default=4
        Leaves measured per round between posterior updates (at most one per parent
        first); the calls of a round are independent of each other.
    prior : {"alignment", "none"}, default="alignment"
        ``"alignment"`` adds each leaf's feature alignment with the target (cosine of
        its mean feature vector to the nearest domain centroid; gradient-guided with
        gradient features) as a covariate of the prior mean, one slope per
        domain estimated with the variances; it ranks the unmeasured leaves of a
        parent, which the parent mean alone cannot. ``"none"``: no covariate.
    kappa : float or None, default=None
        When set, select on the lower confidence bound ``mean − kappa·sd``.
    train : dict or None, default=None
        The finetuning recipe of a leaf evaluation, as
        :class:`harp.training.TrainConfig` fields (the seed excepted: it comes from
        the run's ``oracle`` stream). None:
        the ``TrainConfig`` defaults, sized for harp's tiny proxy (150 steps at
        ``lr=3e-3``); for a pretrained model give the recipe of the final finetune,
        e.g. ``{"epochs": 3, "batch_size": 8, "lr": 2e-4}``, so that a leaf is scored
        as the selection will be used.
    train_steps : int or None, default=None
        Finetuning steps of a call, overriding ``train``'s steps and epochs (None:
        as ``train`` says).
    bootstrap : int, default=200
        Bootstrap resamples of the target items for each effect's variance.
    replicates : int, default=2
        Leaves of the first round (the biggest regions' representatives) measured
        a second time with another recipe seed (the run's ``replicate`` stream):
        train-evaluate calls on top of ``evals`` (which counts distinct leaves)
        whose differences estimate, per domain, the
        variance a call's result owes to its training run (LoRA initialisation,
        batch order), which the bootstrap over target items does not see. It is
        added to every measurement's noise (a leaf measured twice counts as the
        mean of both, with half of it). 0: the bootstrap variance alone.
    context : RunContext or None, default=None
        Device, dtype, cache folder (the proxy, the features and every
        train-evaluate call are cached there), progress display and executor: where
        the train-evaluate calls of a round (and feature shards) run. None runs them
        one after another in this process; ``"ray"`` runs them as parallel Ray
        tasks on a local cluster started for the fit; or pass any
        :class:`harp.execution.Executor` (e.g. a ``RayExecutor`` joined to a
        cluster). The selection is the same whatever runs the calls; results go to
        the same cache (which must be on a filesystem every worker shares).

    Attributes
    ----------
    selection_ : Selection
        The rows of the chosen leaves in greedy order (inside a leaf the best
        target fit first, or without it the rows nearest the leaf's centroid);
        ``gains`` spreads each leaf's marginal gain over its rows.
    metric_ : str
        The metric the leaf calls measured (``metric``, with ``"auto"`` fixed for
        the target).
    tree_ : Hierarchy
        The node → parent → leaf tree.
    target_fit_losses_ : ndarray of shape (n_pool,) or None
        Each row's response loss under the base finetuned on the target (None with
        ``target_fit_weight=0``).
    covariate_ : ndarray of shape (n_leaves,) or None
        The prior-mean covariate of every leaf (None with ``prior="none"``).
    posterior_ : Posterior
        Posterior mean and variance of every leaf's effect per domain.
    measured_ : dict
        ``{leaf: (effect, variance)}`` of the measured leaves: the variance is the
        bootstrap's plus the estimated training noise (``oracle_["training_sd"]``);
        a replicated leaf's effect is the mean of its two calls.
    path_ : GreedyPath
        The greedy order over leaves, the gains and the best prefix.
    oracle_ : dict
        The metric, train-evaluate calls run, cache hits and their time, the time of the
        target fit, the replicated leaves and the training noise's standard
        deviation per domain (``training_sd``).

    References
    ----------
    HARP: Hierarchical Active Region Pruning, arXiv 2606.07690.

    Examples
    --------
    Not run here: it pretrains the proxy and finetunes it once per measured leaf.

    >>> from harp.data.synthetic import make_skills_suite
    >>> suite = make_skills_suite()
    >>> sel = HARPCSelector(evals=0.2).fit(suite.pool, suite.target)  # doctest: +SKIP
    """

    name = "harp-c"
    envelope = "c"


@register
class HARPESelector(_HARPSelector):
    """HARP-E: hierarchical active region pruning with the expansive envelope.

    As :class:`HARPCSelector`, but the greedy maximises
    :math:`\\sum_d \\mathrm{clip}_{01}(b_d + \\sum_{g\\in S}\\phi_{g,d})`: the effects
    of complementary leaves add up, so it keeps every leaf whose posterior effect
    helps on balance.

    Parameters
    ----------
    budget, seed, model, evals, metric, features, target_fit_weight
        As for :class:`HARPCSelector`.
    leaf_size, leaves_per_parent, parents_per_node, hierarchy, pooling, variances
        As for :class:`HARPCSelector`.
    search, round_size, prior, kappa, train, train_steps, bootstrap, replicates
        As for :class:`HARPCSelector`.
    context
        As for :class:`HARPCSelector`.

    Attributes
    ----------
    selection_, tree_, target_fit_losses_, covariate_, posterior_, measured_, path_,
    oracle_
        As for :class:`HARPCSelector`.

    Examples
    --------
    >>> from harp.data.synthetic import make_skills_suite
    >>> suite = make_skills_suite()
    >>> sel = HARPESelector(evals=0.2).fit(suite.pool, suite.target)  # doctest: +SKIP
    """

    name = "harp-e"
    envelope = "e"
