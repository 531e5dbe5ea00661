"""HARP's oracle: finetune the base model on one leaf, measure its effect per domain.

Every measurement is cached on disk by what determines it (the model's content, the
leaf's rows, the training and evaluation settings and the target), so a rerun or a
run that crashed halfway never repeats a finished train-evaluate call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harp._utils.cache import JsonCache
from harp._utils.hashing import fingerprint, stable_json
from harp.data._records import ExampleSet
from harp.errors import NumericalError, ParameterError

__all__ = ["LeafEffect", "LeafOracle", "ORACLE_METRICS"]

log = logging.getLogger(__name__)

#: Metrics the oracle can measure effects in. Exact match is bounded in [0, 1] (the
#: envelopes clip); the loss effect is a loss *reduction* (unbounded, no clip).
ORACLE_METRICS = ("exact_match", "loss")


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
    tuned: np.ndarray, base: np.ndarray, samples: int, seed: int
) -> tuple[float, float]:
    """Mean and bootstrap variance of the per-item difference ``tuned − base``."""
    if len(tuned) == len(base) and len(tuned) > 0:
        diff = tuned - base
        mean = float(diff.mean())
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(diff), size=(samples, len(diff)))
        var = float(diff[draws].mean(axis=1).var(ddof=1))
        return mean, var
    # Items dropped on one side only (non-finite values): unpaired, analytic.
    mean = float(tuned.mean() - base.mean())
    var = float(tuned.var(ddof=1) / len(tuned) + base.var(ddof=1) / len(base))
    return mean, var


@dataclass
class LeafOracle:
    """Train-evaluate calls on leaves of a pool, each cached and counted.

    Parameters
    ----------
    model_dir : str or Path
        The base model folder (LoRA is trained on a fresh copy per call).
    target : ExampleSet
        Target rows; their ``domain`` defines the effect's columns.
    metric : {"loss", "exact_match"}, default "loss"
        What an effect measures: the reduction of the mean response loss (sensitive
        even for leaves of a few dozen rows) or the exact-match gain.
    train_config : TrainConfig or None
        Finetuning settings of every call (one recipe for all leaves).
    eval_config : EvalConfig or None
        Evaluation settings; its ``metrics`` are set to the one metric needed.
    cache_dir : str or Path, default ".harp-cache"
        Cache root; results go to ``cache_dir/harp-oracle``.
    bootstrap : int, default 200
        Bootstrap resamples of the target items for each effect's variance.
    seed : int, default 0
        Seed of the bootstraps.
    trust_remote_code : bool, default False
        Allow the model folder's own Python code.
    progress : bool, default False
        Show progress bars.

    Attributes
    ----------
    calls : int
        Train-evaluate calls actually run (cache hits not counted).
    hits : int
        Calls answered from the cache.
    seconds : float
        Wall time spent in calls actually run.
    target_fit_seconds : float or None
        Wall time of the target fit (:meth:`target_fit_losses`; when read from the
        cache, the time it took when it ran), None before it is asked for.
    """

    model_dir: str | Path
    target: ExampleSet
    metric: str = "loss"
    train_config: Any = None
    eval_config: Any = None
    cache_dir: str | Path = ".harp-cache"
    bootstrap: int = 200
    seed: int = 0
    trust_remote_code: bool = False
    progress: bool = False
    calls: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)
    seconds: float = field(default=0.0, init=False)
    target_fit_seconds: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        from harp.models.loading import model_fingerprint
        from harp.training import EvalConfig, TrainConfig

        if self.metric not in ORACLE_METRICS:
            raise ParameterError(
                f"metric={self.metric!r} is not allowed; expected one of "
                + ", ".join(ORACLE_METRICS)
            )
        if self.bootstrap < 2:
            raise ParameterError(f"bootstrap={self.bootstrap!r}: expected at least 2")
        self.train_config = self.train_config or TrainConfig(seed=self.seed)
        base_eval = self.eval_config or EvalConfig(seed=self.seed)
        self.eval_config = EvalConfig(
            **{**base_eval.to_dict(), "metrics": (self.metric,)}
        )
        self.domains: tuple[str, ...] = tuple(self.target.by_domain())
        self._cache = JsonCache(Path(self.cache_dir) / "harp-oracle")
        self._common = {
            "model": model_fingerprint(self.model_dir),
            "target": self.target.content_hash(),
            "train": self.train_config.to_dict(),
            "eval": self.eval_config.to_dict(),
            "metric": self.metric,
            "bootstrap": self.bootstrap,
        }
        self._base_report = None

    @property
    def bounded(self) -> bool:
        """Whether scores live in [0, 1] (the envelopes clip them)."""
        return self.metric == "exact_match"

    def _score_sign(self) -> float:
        # Effects are "higher is better": a loss is negated.
        return -1.0 if self.metric == "loss" else 1.0

    def _base(self):
        from harp.training import EvalReport, evaluate

        if self._base_report is not None:
            return self._base_report
        key = fingerprint(
            "harp-oracle-base", content=stable_json(self._common), params={}
        )
        hit = self._cache.get(key)
        if hit is not None:
            self._base_report = EvalReport.from_dict(hit)
        else:
            from harp.models.loading import load_model

            model, tokenizer = load_model(
                self.model_dir, trust_remote_code=self.trust_remote_code
            )
            report = evaluate(
                model, tokenizer, self.target, self.eval_config, progress=self.progress
            )
            self._cache.put(key, report.to_dict(include_items=True))
            self._base_report = report
        return self._base_report

    @property
    def base_scores(self) -> np.ndarray:
        """``b_d`` per domain, higher is better (the negated loss for ``loss``)."""
        base = self._base()
        return np.array(
            [
                self._score_sign() * base.estimate(d, self.metric).mean
                for d in self.domains
            ]
        )

    def key(self, rows: ExampleSet) -> str:
        """The cache key of a call on ``rows``."""
        return fingerprint(
            "harp-oracle",
            content=stable_json({**self._common, "rows": rows.content_hash()}),
            params={},
        )

    def is_cached(self, rows: ExampleSet) -> bool:
        """Whether a call on ``rows`` would be answered from the cache."""
        return self.key(rows) in self._cache

    def __call__(self, rows: ExampleSet) -> LeafEffect:
        """Finetune on ``rows`` (or read the cached result) and return the effect."""
        from harp.training import finetune_and_evaluate

        key = self.key(rows)
        hit = self._cache.get(key)
        if hit is not None:
            self.hits += 1
            return LeafEffect(
                np.asarray(hit["effect"], dtype=np.float64),
                np.asarray(hit["var"], dtype=np.float64),
                float(hit["seconds"]),
                True,
                key,
            )
        base = self._base()
        start = time.perf_counter()
        tuned, _ = finetune_and_evaluate(
            self.model_dir,
            rows,
            self.target,
            self.train_config,
            self.eval_config,
            base_report=base,
            trust_remote_code=self.trust_remote_code,
            progress=self.progress,
        )
        seconds = time.perf_counter() - start
        sign = self._score_sign()
        effects, variances = [], []
        for k, domain in enumerate(self.domains):
            mean, var = _paired_bootstrap(
                sign * tuned.item_values(domain, self.metric),
                sign * base.item_values(domain, self.metric),
                self.bootstrap,
                self.seed + k,
            )
            effects.append(mean)
            variances.append(var)
        effect = np.asarray(effects)
        var = np.asarray(variances)
        if not (np.isfinite(effect).all() and np.isfinite(var).all()):
            raise NumericalError(
                f"the effect of finetuning on {len(rows)} rows (first ids: "
                f"{', '.join(rows.ids[:3])}) is not finite: {effect.tolist()}; "
                "check those rows for empty responses after truncation"
            )
        self.calls += 1
        self.seconds += seconds
        self._cache.put(
            key,
            {
                "effect": effect.tolist(),
                "var": var.tolist(),
                "seconds": seconds,
                "rows": len(rows),
                "domains": list(self.domains),
            },
        )
        log.info(
            "oracle call %d: %d rows, effect %s (%.1fs)",
            self.calls,
            len(rows),
            np.array2string(effect, precision=4),
            seconds,
        )
        return LeafEffect(effect, var, seconds, False, key)

    def target_fit_losses(self, pool: ExampleSet) -> np.ndarray:
        """Each pool row's response loss under the base finetuned on the target.

        One finetune of the base on the target rows with the oracle's own training
        recipe, then one forward pass over the pool. A row that follows the
        target's input→output rule gets a low loss; one that contradicts it (a
        wrong answer, an off-format output) a high one, whatever its text looks
        like. HARP appends this to the tree's features so that leaves separate the
        two. Cached by (model, target, training recipe, pool), so the metric and the
        evaluation settings do not redo it; not counted as a call.

        Returns
        -------
        ndarray of shape (len(pool),)
            Mean negative log-likelihood of each row's response tokens.
        """
        from harp.models.loading import load_model
        from harp.training.evaluate import response_losses
        from harp.training.finetune import finetune

        # Only what the fit depends on: another metric, evaluation or bootstrap
        # count reuses it.
        content = {k: self._common[k] for k in ("model", "target", "train")}
        key = fingerprint(
            "harp-target-fit",
            content=stable_json({**content, "pool": pool.content_hash()}),
            params={},
        )
        hit = self._cache.get(key)
        if hit is not None and len(hit.get("losses", ())) == len(pool):
            self.target_fit_seconds = float(hit.get("seconds", 0.0))
            return np.asarray(hit["losses"], dtype=np.float64)
        start = time.perf_counter()
        model, tokenizer = load_model(
            self.model_dir, trust_remote_code=self.trust_remote_code
        )
        tuned = finetune(
            model,
            tokenizer,
            self.target,
            self.train_config,
            progress=self.progress,
            description="HARP target fit",
        )
        losses = response_losses(tuned, tokenizer, pool, progress=self.progress)
        losses = np.asarray(losses, dtype=np.float64)
        if not np.isfinite(losses).all():
            bad = np.flatnonzero(~np.isfinite(losses))[:5]
            raise NumericalError(
                "the target-fit loss is not finite for pool rows "
                f"{', '.join(pool.ids[i] for i in bad)}; check those rows for empty "
                "responses after truncation"
            )
        seconds = time.perf_counter() - start
        self.target_fit_seconds = seconds
        self._cache.put(key, {"losses": losses.tolist(), "seconds": seconds})
        log.info("HARP target fit: %d pool rows scored (%.1fs)", len(pool), seconds)
        return losses
