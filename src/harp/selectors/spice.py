"""SPICE, Fisher (D-optimal) and DPP selection: one greedy log-det engine, three uses.

All three maximise :math:`\\log\\det(I + \\alpha G_S^\\top G_S)` over projected LoRA
gradients of the warm-up proxy (:mod:`harp.selectors.logdet`); SPICE subtracts a
gradient-conflict penalty, Fisher does not, DPP works on unit-length gradients (a
cosine kernel). The feature store's rows are handed to the engine as they are: it
streams them in blocks (normalising per block for DPP), never a float64 copy of the
whole store beyond its own cache limit.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from harp.core.context import RunContext
from harp.core.params import Interval, Options
from harp.core.records import ExampleSet
from harp.features.components import GradientFeatures
from harp.selectors.base import Diagnostics, SelectResult, check_is_fitted
from harp.selectors.diagnostics import LogDetDiagnostics
from harp.selectors.gradient import GRADIENT_CONSTRAINTS, GradientSelector
from harp.selectors.logdet import GreedyLogDet, GreedyTrace, default_alpha
from harp.selectors.logdet_torch import TorchGreedyLogDet
from harp.selectors.registry import register

__all__ = ["DPPSelector", "FisherSelector", "SPICESelector"]

log = logging.getLogger(__name__)

_ENGINE_CONSTRAINTS: dict[str, list[Any]] = {
    **GRADIENT_CONSTRAINTS,
    "alpha": [None, Interval(float, 0.0, None, closed="neither")],
    "early_stop": [None, Interval(float, 0.0, 1.0, closed="right")],
    "strategy": [Options("exact", "lazy", "stochastic")],
    "epsilon": [Interval(float, 0.0, 1.0, closed="neither")],
}


class _LogDetSelector(GradientSelector):
    """What the log-det selectors share: gradients, the engine, diagnostics."""

    # The greedy stops early by the ω rule, or when no row adds information (all
    # left are zero or exact repeats of picked rows).
    fills_budget = False
    #: Whether rows are L2-normalised first (DPP's cosine kernel).
    _normalize = False
    #: A projection to 1024 dims and the gradients at the end of a one-checkpoint
    #: warm-up: the model the selection serves.
    default_features = {"dim": 1024, "n_checkpoints": 1}

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        model: str | Path | None = None,
        features: GradientFeatures | None = None,
        alpha: float | None = None,
        early_stop: float | None = None,
        strategy: str = "exact",
        epsilon: float = 0.01,
        context: RunContext | None = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.model = model
        self.features = features
        self.alpha = alpha
        self.early_stop = early_stop
        self.strategy = strategy
        self.epsilon = epsilon
        self.context = context

    def _conflict_weight(self) -> float:
        return 0.0

    def _engine(
        self, dim: int, alpha: float, context: RunContext
    ) -> GreedyLogDet | TorchGreedyLogDet:
        """The numpy engine on the CPU; on a GPU the torch engine (same picks, ties
        aside), except for the stochastic strategy, which only numpy has."""
        device = context.torch_device()
        if device.type == "cuda" and self.strategy != "stochastic":
            return TorchGreedyLogDet(
                dim,
                alpha=alpha,
                conflict_weight=self._conflict_weight(),
                early_stop=self.early_stop,
                device=device,
                storage="bf16" if context.dtype_name == "bf16" else "fp32",
            )
        return GreedyLogDet(
            dim,
            alpha=alpha,
            conflict_weight=self._conflict_weight(),
            early_stop=self.early_stop,
            strategy=self.strategy,
            epsilon=self.epsilon,
            seed=context.int_seed("engine"),
        )

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        features = self.features_for()
        model_dir = self.model_dir(pool, context)
        last = features.warmup(model_dir, pool, context)[-1]
        store = features.extract(pool, context, model_dir=model_dir, checkpoint=last)
        rows = store.rows()
        alpha = (
            self.alpha
            if self.alpha is not None
            else default_alpha(rows, normalize=self._normalize)
        )
        engine = self._engine(store.dim, alpha, context)
        trace = engine.select(rows, budget, normalize=self._normalize)
        self._keep_trace(trace)
        cost = {
            "gradient_passes": len(pool),
            "rows_scored": len(pool),
            "device": context.device_name,
        }
        return trace.indices, trace.initial_gains, trace.gains, cost

    def _keep_trace(self, trace: GreedyTrace) -> None:
        self.trace_ = trace
        self.alpha_ = float(trace.alpha)
        self.stopped_early_ = bool(trace.stopped_early)

    def diagnostics(self) -> Diagnostics:
        """Per-pick gain, ε, conflict and objective of the greedy."""
        check_is_fitted(self)
        return LogDetDiagnostics.from_trace(self.name, self.trace_)


@register
class FisherSelector(_LogDetSelector):
    """Fisher / D-optimal design: greedy log-det of the gradient Fisher information.

    Picks rows one at a time to maximise
    :math:`U(S) = \\log\\det(I + \\alpha\\sum_{i\\in S} g_i g_i^\\top)` over projected
    LoRA gradients :math:`g_i` of the warm-up proxy: each pick brings the most new
    gradient information given those already chosen. SPICE with :math:`\\lambda = 0`.
    No target is used.

    Parameters
    ----------
    budget, seed, model, context
        As for :class:`harp.selectors.LESSSelector`.
    features : GradientFeatures or None, default=None
        How the gradients are taken; None means
        ``GradientFeatures(dim=1024, n_checkpoints=1)``: projected to 1024
        dimensions, at the end of a one-checkpoint warm-up.
    alpha : float or None, default=None
        Scale of the information; None sets :math:`\\alpha = 1/\\mathrm{median}
        \\lVert g\\rVert^2` so that a typical row's gain is about log 2.
    early_stop : float or None, default=None
        ω of the early stop: stop once a pick's gain falls below ω times the first
        pick's (the selection may then be smaller than the budget). Off by default
        for fixed budgets.
    strategy : {"exact", "lazy", "stochastic"}, default="exact"
        Greedy variant: exact and lazy give the same picks; stochastic greedy
        evaluates a random sample of rows per pick (very large pools).
    epsilon : float, default=0.01
        Stochastic greedy's ε (sample size :math:`(n/k)\\log(1/\\epsilon)`).

    Attributes
    ----------
    selection_ : Selection
        Rows in pick order; ``gains`` are the log-det gains, ``scores`` every row's
        gain as a first pick.
    trace_ : GreedyTrace
        Per-pick gain, ε, conflict, score and objective.
    alpha_ : float
        The α used.

    References
    ----------
    Chen, Zhang, Zhou. "Fast Greedy MAP Inference for Determinantal Point Process
    to Improve Recommendation Diversity", NeurIPS 2018.

    Examples
    --------
    >>> from harp.data.synthetic import make_skills_suite
    >>> suite = make_skills_suite()
    >>> sel = FisherSelector(budget=100).fit(suite.pool)  # doctest: +SKIP
    """

    name = "fisher"
    _parameter_constraints = dict(_ENGINE_CONSTRAINTS)


@register
class DPPSelector(_LogDetSelector):
    """DPP MAP selection with a cosine kernel on LoRA gradients.

    The same greedy as :class:`FisherSelector` on unit-length gradients, i.e. the
    kernel :math:`I + \\alpha\\cos(g_i, g_j)`: diversity of gradient *directions*,
    whatever their size.

    Parameters
    ----------
    budget, seed, model, features, context
        As for :class:`FisherSelector`.
    alpha, early_stop, strategy, epsilon
        As for :class:`FisherSelector` (the default α is 1 for unit rows).

    Attributes
    ----------
    selection_, trace_, alpha_
        As for :class:`FisherSelector`.

    Examples
    --------
    >>> from harp.data.synthetic import make_skills_suite
    >>> suite = make_skills_suite()
    >>> sel = DPPSelector(budget=100).fit(suite.pool)  # doctest: +SKIP
    """

    name = "dpp"
    _normalize = True
    _parameter_constraints = dict(_ENGINE_CONSTRAINTS)


@register
class SPICESelector(_LogDetSelector):
    """SPICE: log-det gradient information with a gradient-conflict penalty.

    Greedy on :math:`\\Delta_x - \\lambda\\,\\max(0, -\\cos(g_x, \\bar g_S))`, where
    :math:`\\Delta_x = \\log(1 + \\alpha g_x^\\top(I + \\alpha F_S)^{-1} g_x)` is the
    log-det gain of row :math:`x` (exact, by incremental Cholesky) and
    :math:`\\bar g_S` the mean gradient of the rows already chosen: informative rows
    whose gradient does not fight the selection's.

    Parameters
    ----------
    budget, seed, model, features, context
        As for :class:`FisherSelector`.
    alpha, early_stop, strategy, epsilon
        As for :class:`FisherSelector` (SPICE+ is ``early_stop=0.5``).
    conflict_weight : float, default=0.1
        λ, the weight of the conflict penalty (robust in 0.1–0.5; 0 is Fisher).
    schedule : {"global", "online"}, default="global"
        ``"global"``: one greedy over the whole pool. ``"online"``: the published
        schedule — candidate pools of ``pool_size`` rows, ``picks_per_pool`` picks
        from each (conditioned on every earlier pick), one proxy training step on
        the recent picks every ``train_every`` pools, gradients recomputed on the
        updated proxy.
    pool_size : int, default=120
        Candidates per pool (online schedule).
    picks_per_pool : int, default=12
        Picks per pool (online schedule).
    train_every : int, default=10
        Pools between proxy training steps (online schedule).
    lr : float, default=1e-4
        Learning rate of the online proxy steps (AdamW).

    Attributes
    ----------
    selection_, trace_, alpha_
        As for :class:`FisherSelector`; online, ``trace_`` concatenates the pools'.
    online_ : dict
        Online schedule only: pools visited and proxy steps taken.

    References
    ----------
    SPICE: Submodular Penalized Information–Conflict Selection, ICLR 2026,
    arXiv 2601.23155.

    Examples
    --------
    >>> from harp.data.synthetic import make_skills_suite
    >>> suite = make_skills_suite()
    >>> sel = SPICESelector(budget=100).fit(suite.pool)  # doctest: +SKIP
    """

    name = "spice"
    _parameter_constraints = {
        **_ENGINE_CONSTRAINTS,
        "conflict_weight": [Interval(float, 0.0, None)],
        "schedule": [Options("global", "online")],
        "pool_size": [Interval(int, 1, None)],
        "picks_per_pool": [Interval(int, 1, None)],
        "train_every": [Interval(int, 1, None)],
        "lr": [Interval(float, 0.0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        model: str | Path | None = None,
        features: GradientFeatures | None = None,
        alpha: float | None = None,
        early_stop: float | None = None,
        strategy: str = "exact",
        epsilon: float = 0.01,
        conflict_weight: float = 0.1,
        schedule: str = "global",
        pool_size: int = 120,
        picks_per_pool: int = 12,
        train_every: int = 10,
        lr: float = 1e-4,
        context: RunContext | None = None,
    ) -> None:
        super().__init__(
            budget=budget,
            seed=seed,
            model=model,
            features=features,
            alpha=alpha,
            early_stop=early_stop,
            strategy=strategy,
            epsilon=epsilon,
            context=context,
        )
        self.conflict_weight = conflict_weight
        self.schedule = schedule
        self.pool_size = pool_size
        self.picks_per_pool = picks_per_pool
        self.train_every = train_every
        self.lr = lr

    def _conflict_weight(self) -> float:
        return float(self.conflict_weight)

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        if self.schedule == "global":
            return super()._select(pool, target, budget, context)
        return self._select_online(pool, budget, context)

    def _select_online(
        self, pool: ExampleSet, budget: int, context: RunContext
    ) -> SelectResult:
        """The paper's schedule: pools of candidates, a proxy step every T pools."""
        import torch

        from harp.features.gradients import gradient_dim, per_sample_gradients
        from harp.models.loading import load_tokenizer
        from harp.nn.encode import encode_examples, pad_token_id
        from harp.nn.loop import Trainer

        features = self.features_for()
        model_dir = self.model_dir(pool, context)
        checkpoints = features.warmup(model_dir, pool, context)
        model = checkpoints[-1].load_model(model_dir, context=context)
        tokenizer = load_tokenizer(model_dir)
        projector = features.projector(model, context)
        width = gradient_dim(model) if projector is None else projector.out_dim
        # AdamW's defaults of the paper's code: weight decay 0.01, no clipping.
        trainer = Trainer(
            model,
            pad_id=pad_token_id(tokenizer),
            lr=self.lr,
            weight_decay=0.01,
            description="SPICE online proxy step",
        )

        order = context.rng("online").permutation(len(pool))
        n_pools = math.ceil(len(pool) / self.pool_size)
        engine: GreedyLogDet | TorchGreedyLogDet | None = None
        picked: list[int] = []
        traces: list[GreedyTrace] = []
        recent: list[int] = []
        generator = torch.Generator().manual_seed(context.int_seed("online"))
        for j in range(n_pools):
            if len(picked) >= budget or (engine is not None and engine.stopped):
                break
            chunk = order[j * self.pool_size : (j + 1) * self.pool_size]
            rows = pool.subset(chunk)
            g = np.zeros((len(chunk), width), dtype=np.float64)
            for idx, grads in per_sample_gradients(
                model,
                tokenizer,
                rows,
                batch_size=features.gradient_batch_rows(context),
                max_length=features.max_length,
                max_tokens=features.max_tokens,
                projector=projector,
            ):
                g[np.asarray(idx)] = grads
            if engine is None:
                # α from the first pool's scale: the data seen before any pick.
                alpha = self.alpha if self.alpha is not None else default_alpha(g)
                engine = self._engine(width, alpha, context)
            k = min(self.picks_per_pool, budget - len(picked))
            trace = engine.select(g, k)
            traces.append(trace)
            new = [int(chunk[i]) for i in trace.indices]
            picked.extend(new)
            recent.extend(new)
            if (j + 1) % self.train_every == 0 and recent:
                # One optimiser step on a batch of the picks since the last step:
                # the proxy follows the model the selection is training.
                take = torch.randperm(len(recent), generator=generator)[
                    : features.batch_size
                ].tolist()
                batch = pool.subset([recent[i] for i in take])
                enc = encode_examples(tokenizer, batch, max_length=features.max_length)
                if len(enc):
                    trainer.step(
                        list(zip(enc.input_ids, enc.labels)),
                        [batch[i].id for i in enc.indices],
                    )
                recent = []
        trace = _concat_traces(traces)
        self._keep_trace(trace)
        self.online_ = {"pools": len(traces), "proxy_steps": trainer.steps_done}
        scores = np.full(len(pool), np.nan)
        indices = np.asarray(picked, dtype=np.int64)
        cost = {
            "gradient_passes": int(sum(len(t.initial_gains) for t in traces)),
            "rows_scored": int(sum(len(t.initial_gains) for t in traces)),
            "device": context.device_name,
        }
        return indices, scores, trace.gains, cost


def _concat_traces(traces: list[GreedyTrace]) -> GreedyTrace:
    """One trace for the picks of successive pools (indices are per pool)."""
    if not traces:
        empty = np.zeros(0)
        return GreedyTrace(
            indices=np.zeros(0, dtype=np.int64),
            gains=empty,
            scores=empty,
            conflicts=empty,
            epsilons=empty,
            objective=empty,
            alpha=float("nan"),
            stopped_early=False,
            initial_gains=empty,
            evaluations=0,
        )
    cat = np.concatenate
    return GreedyTrace(
        indices=cat([t.indices for t in traces]),
        gains=cat([t.gains for t in traces]),
        scores=cat([t.scores for t in traces]),
        conflicts=cat([t.conflicts for t in traces]),
        epsilons=cat([t.epsilons for t in traces]),
        objective=cat([t.objective for t in traces]),
        alpha=traces[0].alpha,
        stopped_early=traces[-1].stopped_early,
        initial_gains=cat([t.initial_gains for t in traces]),
        evaluations=int(sum(t.evaluations for t in traces)),
    )
