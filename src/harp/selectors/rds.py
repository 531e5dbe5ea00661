"""RDS+ (Ivison et al., 2025): the model's hidden states, round-robin over targets."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from harp.core.context import RunContext
from harp.core.errors import ParameterError
from harp.core.records import ExampleSet
from harp.features.components import HiddenStateFeatures, unit_rows
from harp.selectors.base import BaseSelector, Options, SelectResult, ranked_order
from harp.selectors.registry import register

__all__ = ["RDSSelector", "round_robin"]

log = logging.getLogger(__name__)

#: Pool rows scored per block: memory stays bounded by a block, not by the pool.
_BLOCK_ROWS = 8192


def round_robin(
    domain_scores: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Picks by turns over the columns: each takes its best row not yet picked.

    Column 0 picks first, then column 1, ..., then column 0 again, until ``budget``
    rows are picked (or every row is). Within a column rows rank by score
    descending, ties by row index ascending, NaN last.

    Parameters
    ----------
    domain_scores : ndarray of shape (n_rows, n_columns)
        Score of each row for each column (target domain).
    budget : int
        Rows to pick.

    Returns
    -------
    indices : ndarray of int64, shape (k,)
        Picked rows in pick order, ``k = min(budget, n_rows)``, unique.
    owners : ndarray of int64, shape (k,)
        The column that picked each row.

    Examples
    --------
    >>> scores = np.array([[0.9, 0.8], [0.5, 0.1], [0.2, 0.7]])
    >>> idx, owners = round_robin(scores, 3)
    >>> idx.tolist(), owners.tolist()
    ([0, 2, 1], [0, 1, 0])
    """
    scores = np.asarray(domain_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ParameterError(
            f"domain_scores of shape {scores.shape} is not allowed; expected "
            "(n_rows, n_columns) with at least one column"
        )
    n, n_cols = scores.shape
    k = min(int(budget), n)
    orders = [ranked_order(scores[:, j]) for j in range(n_cols)]
    cursors = [0] * n_cols
    taken = np.zeros(n, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    owners = np.empty(k, dtype=np.int64)
    count = 0
    while count < k:
        for j in range(n_cols):
            if count == k:
                break
            order, cursor = orders[j], cursors[j]
            # Fewer than n rows are taken, so every column still has a free one.
            while taken[order[cursor]]:
                cursor += 1
            row = int(order[cursor])
            cursors[j] = cursor + 1
            taken[row] = True
            picks[count], owners[count] = row, j
            count += 1
    return picks, owners


@register
class RDSSelector(BaseSelector):
    r"""RDS+: rows nearest the target in the model's own hidden-state space.

    Every pool and target row is embedded by the model being finetuned: its
    last-layer hidden states (the LM head's input), averaged with weights proportional
    to the token position, scaled to unit length (:class:`HiddenStateFeatures`). Each
    target domain scores a pool row by its cosine similarity to the domain's rows,
    aggregated over them (the maximum by default, as RDS+ does); the domains then pick
    in turns (round-robin, domains in sorted order), each taking its best pool row
    not yet picked, until the budget is filled.

    Parameters
    ----------
    budget : int, float or str, default="10%"
        Rows to select: a count, a fraction of the pool, or a percentage string.
    seed : int or None, default=0
        Seeds the built-in proxy model only (``model=None``); the ranking of a given
        model does not depend on it.
    model : str, Path or None, default=None
        A local Hugging Face causal-LM folder (the model you will finetune), or
        ``"proxy"``/None for the built-in proxy model pretrained on the pool
        (cached).
    features : HiddenStateFeatures or None, default=None
        How rows are embedded; None means ``HiddenStateFeatures()`` (batches of 16,
        512 tokens per row). Set one part with e.g. ``features__max_length=1024``.
    aggregate : {"max", "mean"}, default="max"
        How a domain's score of a pool row combines the cosines to the domain's
        target rows: ``"max"`` (RDS+'s choice: a row close to any one target row
        counts) or ``"mean"``.
    context : RunContext or None, default=None
        Device, dtype, cache folder (proxy, feature stores), progress and executor
        (see :class:`harp.core.RunContext`).

    Attributes
    ----------
    selection_ : Selection
        The picks in round-robin order; ``scores`` holds each pool row's best domain
        score (``domain_scores_.max(axis=1)``), ``gains`` the score with which the
        picking domain took each row.
    domain_scores_ : ndarray of shape (n_pool, n_domains)
        Each domain's aggregated cosine similarity of each pool row.
    domains_ : tuple of str
        Target domains, sorted: the columns of ``domain_scores_`` and the turn order.
    picked_by_ : ndarray of int64 of shape (n_selected,)
        For each pick, the column of ``domains_`` that took it.

    Notes
    -----
    For a row with tokens :math:`1..T` and last-layer hidden states :math:`h_t`, the
    embedding is :math:`e = v / \lVert v \rVert`, :math:`v = \sum_t w_t h_t`,
    :math:`w_t = t / \sum_s s` (SGPT's weighted mean pooling). Domain :math:`d` with
    target rows :math:`D_d` scores pool row :math:`i` as
    :math:`s_d(i) = \max_{j \in D_d} e_i^\top e_j` (or the mean). Selection follows
    the RDS+ authors' multi-task code (``get_top_aggregated_influences.py``,
    ``--selection_method max``, ``--aggregation_method minmax``): per-task max over
    the task's query rows, then round-robin over tasks, so that score scales of
    different tasks never compete. One difference: there, a task whose next row was
    already taken by another task loses its turn; here it takes its next free row,
    so every turn adds a row and the domains share the budget evenly (the first
    domains get one more when the budget does not divide). Ties break by pool index.
    Cost: one forward pass per pool and target row (cached), then
    :math:`O(n\,m\,d)` for :math:`m` target rows of width :math:`d` and
    :math:`O(D\,n \log n)` for the turns of :math:`D` domains.

    References
    ----------
    .. [1] Ivison, Zhang, Wang, Groeneveld, Smith, Koh, Dasigi, "Large-Scale Data
       Selection for Instruction Tuning", arXiv:2503.01807 (2025).
    .. [2] Muennighoff, "SGPT: GPT Sentence Embeddings for Semantic Search",
       arXiv:2202.08904 (2022) -- the position-weighted mean pooling.

    Examples
    --------
    A tiny random model stands in for yours:

    >>> import tempfile
    >>> from harp.core import RunContext
    >>> from harp.models import ProxyConfig, build_proxy, save_model
    >>> model, tok = build_proxy(ProxyConfig(hidden_size=16, num_layers=1,
    ...                                      num_heads=2, intermediate_size=32))
    >>> folder = save_model(model, tok, tempfile.mkdtemp())
    >>> pool = [{"prompt": f"add {i} and {i}", "response": str(2 * i)}
    ...         for i in range(6)]
    >>> target = [{"prompt": "add 9 and 9", "response": "18", "domain": "math"}]
    >>> sel = RDSSelector(budget=3, model=folder,
    ...                   context=RunContext(cache_dir=tempfile.mkdtemp())
    ...                   ).select(pool, target)
    >>> len(sel), sel.method
    (3, 'rds')
    """

    name = "rds"
    needs_target = True
    uses_model = True
    _components = ("features",)
    _parameter_constraints = {
        "budget": ["budget"],
        "seed": ["seed"],
        "model": [None, str, Path],
        "features": [None, Options("hidden"), HiddenStateFeatures],
        "aggregate": [Options("max", "mean")],
        "context": [None, RunContext],
    }

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        model: str | Path | None = None,
        features: HiddenStateFeatures | None = None,
        aggregate: str = "max",
        context: RunContext | None = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.model = model
        self.features = features
        self.aggregate = aggregate
        self.context = context

    def _default_component(
        self, name: str, kind: str | None = None
    ) -> HiddenStateFeatures:
        return HiddenStateFeatures()

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        assert target is not None  # checked by BaseSelector.fit (needs_target)
        features: HiddenStateFeatures = self.resolved_component("features")
        features.check()
        model_dir = self.model_dir(pool, context)
        pool_store = features.extract(pool, context, model_dir=model_dir)
        target_emb = unit_rows(
            features.extract(target, context, model_dir=model_dir)
            .read()
            .astype(np.float64)
        )
        by_domain = target.by_domain()
        domains = tuple(by_domain)
        scores = np.empty((len(pool), len(domains)), dtype=np.float64)
        for start, block in pool_store.iter_blocks(_BLOCK_ROWS):
            sims = unit_rows(block.astype(np.float64)) @ target_emb.T
            for j, rows in enumerate(by_domain.values()):
                part = sims[:, rows]
                scores[start : start + len(block), j] = (
                    part.max(axis=1) if self.aggregate == "max" else part.mean(axis=1)
                )
        picks, owners = round_robin(scores, budget)
        self.domain_scores_ = scores
        self.domains_ = domains
        self.picked_by_ = owners
        gains = scores[picks, owners]
        cost = {
            "rows_scored": len(pool) + len(target),
            "device": context.device_name,
        }
        return picks, scores.max(axis=1), gains, cost
