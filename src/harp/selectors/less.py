"""LESS (Xia et al., 2024) and a gradient-norm baseline, on projected LoRA gradients."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from harp.core.context import RunContext
from harp.core.records import ExampleSet
from harp.features.components import GradientFeatures, unit_rows
from harp.selectors.base import SelectResult, ranked_order
from harp.selectors.gradient import GRADIENT_CONSTRAINTS, GradientSelector
from harp.selectors.registry import register

__all__ = ["GradNormSelector", "LESSSelector"]

log = logging.getLogger(__name__)


@register
class LESSSelector(GradientSelector):
    """LESS: rows whose Adam-preconditioned gradient points where the target's does.

    Parameters
    ----------
    budget : int, float or str, default="10%"
        Rows to select.
    seed : int or None, default=0
        Root of the warm-up subset, the warm-up training and the projection seeds.
    model : str, Path or None, default=None
        A local Hugging Face causal-LM folder, or ``"proxy"``/None for the built-in
        proxy model pretrained on the pool (cached).
    features : GradientFeatures or None, default=None
        How the gradients are taken; None means ``GradientFeatures()``: projection
        to 8192 dimensions on a GPU and 1024 on a CPU (``dim="auto"``), a 4-epoch
        LoRA warm-up (attention projections) on 5% of the pool, 4 checkpoints (LESS:
        one per epoch). Set one part with e.g. ``features__dim=4096``.
    context : RunContext or None, default=None
        Device, dtype, cache folder (proxy, warm-ups, feature stores), progress and
        executor (see :class:`harp.core.RunContext`).

    Attributes
    ----------
    selection_ : Selection
        Top rows by score; ``scores`` holds every row's score and ``cost`` the
        number of per-example gradients computed.
    domain_scores_ : ndarray of shape (n_pool, n_domains)
        Per target domain, the learning-rate-weighted sum over checkpoints of the
        cosine between the row's preconditioned gradient and the domain's mean target
        gradient.
    domains_ : tuple of str
        Target domains, in the column order of ``domain_scores_``.

    Notes
    -----
    For checkpoint :math:`i` with learning rate :math:`\\eta_i`, pool row :math:`z`
    with Adam-preconditioned projected gradient :math:`\\Gamma_i(z)` and target
    domain :math:`d` with plain projected gradients :math:`g_i(z')`:
    :math:`s_d(z) = \\sum_i \\eta_i \\cos(\\Gamma_i(z), \\bar g_{i,d})`, where
    :math:`\\bar g_{i,d}` is the mean of the unit target gradients of :math:`d`; the
    score is :math:`\\max_d s_d(z)` so that a small domain is not drowned by a large
    one. Cost: one per-example gradient of every pool and target row per checkpoint.

    References
    ----------
    Xia, Malladi, Gururangan, Arora, Chen. "LESS: Selecting Influential Data for
    Targeted Instruction Tuning", ICML 2024, arXiv 2402.04333.

    Examples
    --------
    Not run here: it pretrains the proxy model first (about 80 s on 2 CPU cores).

    >>> from harp.data.synthetic import make_skills_suite
    >>> suite = make_skills_suite()
    >>> sel = LESSSelector(features__dim=1024)  # doctest: +SKIP
    """

    name = "less"
    needs_target = True
    default_features = {}
    _parameter_constraints = dict(GRADIENT_CONSTRAINTS)

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        model: str | Path | None = None,
        features: GradientFeatures | None = None,
        context: RunContext | None = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.model = model
        self.features = features
        self.context = context

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        assert target is not None  # checked by BaseSelector.fit (needs_target)
        features = self.features_for()
        features.announce("LESS", len(pool), len(pool) + len(target), context)
        model_dir = self.model_dir(pool, context)
        checkpoints = features.warmup(model_dir, pool, context)
        by_domain = target.by_domain()
        domains = tuple(by_domain)
        scores = np.zeros((len(pool), len(domains)), dtype=np.float64)
        for ckpt in checkpoints:
            pool_store = features.extract(
                pool, context, model_dir=model_dir, checkpoint=ckpt, optimizer="adam"
            )
            target_store = features.extract(
                target, context, model_dir=model_dir, checkpoint=ckpt
            )
            t = unit_rows(target_store.read().astype(np.float64))
            means = unit_rows(
                np.stack([t[idx].mean(axis=0) for idx in by_domain.values()])
            )
            # Stream the pool: memory stays bounded by the block, not the pool.
            for start, block in pool_store.iter_blocks(8192):
                g = unit_rows(block.astype(np.float64))
                scores[start : start + len(g)] += float(ckpt.mean_lr) * (g @ means.T)
        self.domain_scores_ = scores
        self.domains_ = domains
        final = scores.max(axis=1)
        order = ranked_order(final)[:budget]
        passes = (len(pool) + len(target)) * len(checkpoints)
        cost = {
            "gradient_passes": passes,
            "rows_scored": len(pool),
            "device": context.device_name,
        }
        return order, final, None, cost


@register
class GradNormSelector(GradientSelector):
    """Gradient-norm baseline: the rows with the largest gradient at the warm-up model.

    The score of a row is the learning-rate-weighted sum over warm-up checkpoints of
    the norm of its projected plain (SGD) LoRA gradient: large-gradient rows are the
    ones the model finds hardest, a common "informativeness" heuristic. No target is
    used.

    Parameters
    ----------
    budget, seed, model, features, context
        As for :class:`LESSSelector`.

    Attributes
    ----------
    selection_ : Selection
        The rows with the largest scores; ``scores`` holds every row's score.

    See Also
    --------
    LESSSelector : the same gradients, scored against a target.

    Examples
    --------
    >>> from harp.data.synthetic import make_skills_suite
    >>> suite = make_skills_suite()
    >>> sel = GradNormSelector(budget=100, features__dim=1024)  # doctest: +SKIP
    """

    name = "grad-norm"
    default_features = {}
    _parameter_constraints = dict(GRADIENT_CONSTRAINTS)

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        model: str | Path | None = None,
        features: GradientFeatures | None = None,
        context: RunContext | None = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.model = model
        self.features = features
        self.context = context

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        features = self.features_for()
        features.announce("grad-norm", len(pool), len(pool), context)
        model_dir = self.model_dir(pool, context)
        checkpoints = features.warmup(model_dir, pool, context)
        scores = np.zeros(len(pool), dtype=np.float64)
        for ckpt in checkpoints:
            store = features.extract(
                pool, context, model_dir=model_dir, checkpoint=ckpt
            )
            for start, block in store.iter_blocks(8192):
                norms = np.linalg.norm(block.astype(np.float64), axis=1)
                scores[start : start + len(block)] += float(ckpt.mean_lr) * norms
        order = ranked_order(scores)[:budget]
        cost = {
            "gradient_passes": len(pool) * len(checkpoints),
            "rows_scored": len(pool),
            "device": context.device_name,
        }
        return order, scores, None, cost
