"""HARP's oracle: the effect of finetuning on one leaf, per target domain.

The finetuning and scoring are :class:`harp.training.TrainEvalUtility` calls (cached
on disk by what determines them, counted, mappable over an executor), so a rerun or a
run that crashed halfway never repeats a finished train-evaluate call. The oracle
turns each call's report into an *effect*: the paired difference to the base model
over target items, with a bootstrap variance. The bootstrap sees only which target
items were drawn; a call's result also depends on the training recipe's own
randomness (LoRA initialisation, batch order), which :func:`training_variance`
estimates from leaves measured twice with different recipe seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harp.core.errors import NumericalError, ParameterError
from harp.core.records import ExampleSet
from harp.training.config import EVAL_METRICS, METRIC_SPECS
from harp.training.evaluate import EvalReport
from harp.training.utility import CallResult, TrainEvalUtility

__all__ = ["LeafEffect", "LeafOracle", "ORACLE_METRICS", "training_variance"]

log = logging.getLogger(__name__)

#: Metrics the oracle can measure effects in: every metric the evaluation computes.
#: Bounded ones (exact match, option accuracy) live in [0, 1] and the envelopes clip
#: them; the loss effect is a loss *reduction* and the option log-probability's a
#: gain in nats (both unbounded, no clip).
ORACLE_METRICS = EVAL_METRICS


@dataclass(frozen=True)
class LeafEffect:
    """The measured effect of finetuning on one leaf.

    Attributes
    ----------
    effect : ndarray of shape (n_domains,)
        ``score_d(tuned) − b_d`` per target domain: an exact-match gain, or for the
        loss metric the reduction of the mean response loss (positive = helps).
    var : ndarray of shape (n_domains,)
        Variance of each effect: a paired bootstrap over target items of the
        per-item differences between the tuned and the base model.
    seconds : float
        Wall time of the train-evaluate call (of the original call for a cache hit).
    cached : bool
        Whether it came from the on-disk cache.
    key : str
        The cache key.
    """

    effect: np.ndarray
    var: np.ndarray
    seconds: float
    cached: bool
    key: str


def _paired_bootstrap(
    tuned: np.ndarray, base: np.ndarray, samples: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Mean and bootstrap variance of the per-item difference ``tuned − base``."""
    if len(tuned) == len(base) and len(tuned) > 0:
        diff = tuned - base
        mean = float(diff.mean())
        draws = rng.integers(0, len(diff), size=(samples, len(diff)))
        var = float(diff[draws].mean(axis=1).var(ddof=1))
        return mean, var
    # Items dropped on one side only (non-finite values): unpaired, analytic.
    mean = float(tuned.mean() - base.mean())
    var = float(tuned.var(ddof=1) / len(tuned) + base.var(ddof=1) / len(base))
    return mean, var


class LeafOracle:
    """Train-evaluate calls on leaves of a pool, as effects on every target domain.

    Parameters
    ----------
    utility : TrainEvalUtility
        Finetunes the base on a leaf and scores the target (one recipe for all
        leaves); its evaluation must compute ``metric``.
    metric : str, default "loss"
        What an effect measures (:data:`ORACLE_METRICS`): the reduction of the mean
        response loss (sensitive even for leaves of a few dozen rows), the
        exact-match gain, or for multiple-choice targets the gain in option
        accuracy or in the gold option's log-probability.
    bootstrap : int, default 200
        Bootstrap resamples of the target items for each effect's variance.
    seed : int, default 0
        Seed of the bootstraps (each domain draws from its own child stream).

    Attributes
    ----------
    domains : tuple of str
        The target's domains: the columns of every effect.
    target_fit_seconds : float or None
        Wall time of the target fit (:meth:`target_fit_losses`; when read from the
        cache, the time it took when it ran), None before it is asked for.
    """

    def __init__(
        self,
        utility: TrainEvalUtility,
        *,
        metric: str = "loss",
        bootstrap: int = 200,
        seed: int = 0,
    ) -> None:
        if metric not in ORACLE_METRICS:
            raise ParameterError(
                f"metric={metric!r} is not allowed; expected one of "
                + ", ".join(ORACLE_METRICS)
            )
        if metric not in utility.eval_config.fixed_metrics:
            raise ParameterError(
                f"metric={metric!r}: the utility's evaluation does not compute it "
                f"(metrics={utility.eval_config.fixed_metrics!r})"
            )
        if bootstrap < 2:
            raise ParameterError(f"bootstrap={bootstrap!r}: expected at least 2")
        self.utility = utility
        self.metric = metric
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.domains: tuple[str, ...] = tuple(utility.target.by_domain())
        self.target_fit_seconds: float | None = None

    # -- counters (the utility's) -----------------------------------------------------
    @property
    def calls(self) -> int:
        """Train-evaluate calls run (cache hits not counted)."""
        return self.utility.calls

    @property
    def hits(self) -> int:
        """Calls answered from the cache."""
        return self.utility.hits

    @property
    def seconds(self) -> float:
        """Wall time of the calls run."""
        return self.utility.seconds

    @property
    def bounded(self) -> bool:
        """Whether scores live in [0, 1] (the envelopes clip them)."""
        return METRIC_SPECS[self.metric].bounded

    def _sign(self) -> float:
        # Effects are "higher is better": a loss is negated.
        return 1.0 if METRIC_SPECS[self.metric].higher_is_better else -1.0

    @property
    def base_scores(self) -> np.ndarray:
        """``b_d`` per domain, higher is better (the negated loss for ``loss``)."""
        base = self.utility.base_report
        return np.array(
            [self._sign() * base.estimate(d, self.metric).mean for d in self.domains]
        )

    def is_cached(self, rows: ExampleSet) -> bool:
        """Whether a call on ``rows`` would be answered from the cache."""
        return self.utility.is_cached(rows)

    # -- effects ---------------------------------------------------------------------
    def _effect(self, rows: ExampleSet, result: CallResult) -> LeafEffect:
        base: EvalReport = self.utility.base_report
        tuned = result.report
        sign = self._sign()
        effects, variances = [], []
        streams = np.random.SeedSequence(self.seed).spawn(len(self.domains))
        for domain, stream in zip(self.domains, streams):
            mean, var = _paired_bootstrap(
                sign * tuned.item_values(domain, self.metric),
                sign * base.item_values(domain, self.metric),
                self.bootstrap,
                np.random.default_rng(stream),
            )
            effects.append(mean)
            variances.append(var)
        effect = np.asarray(effects)
        variance = np.asarray(variances)
        if not (np.isfinite(effect).all() and np.isfinite(variance).all()):
            raise NumericalError(
                f"the effect of finetuning on {len(rows)} rows (first ids: "
                f"{', '.join(rows.ids[:3])}) is not finite: {effect.tolist()}; "
                "check those rows for empty responses after truncation"
            )
        if not result.cached:
            log.info(
                "oracle call %d: %d rows, effect %s (%.1fs)",
                self.calls,
                len(rows),
                np.array2string(effect, precision=4),
                result.seconds,
            )
        return LeafEffect(effect, variance, result.seconds, result.cached, result.key)

    def __call__(self, rows: ExampleSet) -> LeafEffect:
        """Finetune on ``rows`` (or read the cached result) and return the effect."""
        return self._effect(rows, self.utility.call(rows))

    def measure(
        self,
        subsets: Sequence[ExampleSet],
        executor: Any = None,
        *,
        seeds: Sequence[int | None] | None = None,
    ) -> list[LeafEffect]:
        """The effects of one round's leaves; uncached calls run on ``executor``.

        Results are in input order, so the selection equals a sequential run's.
        ``seeds`` gives each leaf's recipe seed (None: the recipe's own; another
        seed is a replicate measurement of the leaf: :func:`training_variance`).
        """
        results = self.utility.map(
            subsets, executor, seeds=seeds, desc="HARP leaf evaluations"
        )
        return [self._effect(rows, r) for rows, r in zip(subsets, results)]

    def target_fit_losses(self, pool: ExampleSet) -> np.ndarray:
        """Each pool row's response loss under the base finetuned on the target.

        One finetune of the base on the target rows with the oracle's own training
        recipe, then one forward pass over the pool. A row that follows the
        target's input→output rule gets a low loss; one that contradicts it (a
        wrong answer, an off-format output) a high one, whatever its text looks
        like. HARP appends this to the tree's features so that leaves separate the
        two. Cached by (model, target, training recipe, dtype, pool), so the metric
        and the evaluation settings do not redo it; not counted as a call.

        Returns
        -------
        ndarray of shape (len(pool),)
            Mean negative log-likelihood of each row's response tokens.
        """
        losses, seconds = self.utility.finetuned_losses(
            self.utility.target, pool, description="HARP target fit"
        )
        self.target_fit_seconds = seconds
        log.info("HARP target fit: %d pool rows scored (%.1fs)", len(pool), seconds)
        return losses


def training_variance(
    first: Sequence[LeafEffect], second: Sequence[LeafEffect]
) -> np.ndarray:
    """Per-domain variance of an effect that the training recipe's own noise adds.

    ``first[i]`` and ``second[i]`` measure the same leaf on the same target items
    with two recipe seeds (LoRA initialisation, batch order), so the target items'
    sampling noise is shared and mostly cancels in their difference: what is left
    is the recipe's noise, twice. For each domain the estimate is
    ``mean_i (first[i] − second[i])² / 2`` (unbiased, with ``len(first)`` degrees of
    freedom). The bootstrap variance of a single effect does not contain it: on
    harp's tiny proxy the recipe's noise is about three times the bootstrap's
    standard deviation.

    Parameters
    ----------
    first, second : sequence of LeafEffect
        The two measurements of each replicated leaf, in the same order.

    Returns
    -------
    ndarray of shape (n_domains,)

    Raises
    ------
    ParameterError
        When no pair is given or the two sequences differ in length.

    Examples
    --------
    >>> import numpy as np
    >>> a = LeafEffect(np.array([1.0, 0.2]), np.zeros(2), 0.0, False, "a")
    >>> b = LeafEffect(np.array([0.8, 0.2]), np.zeros(2), 0.0, False, "b")
    >>> training_variance([a], [b]).round(6).tolist()
    [0.02, 0.0]
    """
    if len(first) != len(second) or not first:
        raise ParameterError(
            f"training_variance needs pairs of measurements of the same leaves; got "
            f"{len(first)} and {len(second)}"
        )
    differences = np.stack([a.effect - b.effect for a, b in zip(first, second)])
    return np.asarray((differences**2).mean(axis=0) / 2.0)
