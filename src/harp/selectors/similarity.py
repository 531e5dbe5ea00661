"""Embedding similarity to the target: the simplest target-aware baseline."""

from __future__ import annotations

import numpy as np

from harp.core.context import RunContext
from harp.core.records import ExampleSet
from harp.features.components import TextFeatures
from harp.selectors.base import BaseSelector, Options, SelectResult, ranked_order
from harp.selectors.registry import register

__all__ = ["SimilaritySelector"]


@register
class SimilaritySelector(BaseSelector):
    r"""Pick the pool rows whose text embedding is closest to the target's domains.

    Pool and target texts (prompt and response) are embedded in one space. Each
    target domain is summarised by the normalised mean of its rows' embeddings, and
    each pool row is scored by its cosine similarity to these domain centroids,
    aggregated over domains.
    The ``budget`` best-scored rows are selected, best first.

    Parameters
    ----------
    budget : int, float or str, default="10%"
        Rows to select: a count, a fraction of the pool, or a percentage string.
    seed : int or None, default=0
        Accepted for a uniform interface; the ranking does not depend on it.
    features : TextFeatures or None, default=None
        The text embedding (None: ``TextFeatures()``, the offline all-MiniLM-L6-v2
        sentence encoder when installed, else hashed TF-IDF + SVD); e.g.
        ``features=TextFeatures(encoder="tfidf")`` or ``features__encoder="tfidf"``.
    aggregate : {"max", "mean"}, default="max"
        How similarities to the domain centroids combine: ``"max"`` serves every domain
        (a small domain is not drowned by a large one); ``"mean"`` favours rows close to
        all domains at once.
    context : RunContext or None, default=None
        Where the encoder runs, progress display (see :class:`harp.core.RunContext`).

    Attributes
    ----------
    selection_ : Selection
        The picks in score order; ``scores`` holds every pool row's aggregated cosine
        similarity, ``gains`` are NaN.
    encoder_ : str
        The encoder used (``"minilm"`` or ``"tfidf"``).
    domains_ : list of str
        Target domains, sorted; the columns of ``domain_similarity_``.
    domain_similarity_ : ndarray of shape (n_pool, n_domains)
        Cosine similarity of each pool row to each domain centroid.

    Notes
    -----
    With unit embeddings :math:`e_i` and domain centroids
    :math:`c_d = \bar e_d / \lVert \bar e_d \rVert`, the score is
    :math:`s_i = \max_d e_i^\top c_d` (or the mean over :math:`d`). Ties break by pool
    index. Cost: one encoder pass over pool and target, then :math:`O(n\,D\,d)` for
    :math:`D` domains of :math:`d`-dimensional embeddings.

    References
    ----------
    .. [1] Reimers and Gurevych, "Sentence-BERT", arXiv:1908.10084 (2019).
    .. [2] Xia et al., "LESS: Selecting Influential Data for Targeted Instruction
       Tuning", arXiv:2402.04333 (2024) -- uses this baseline (representation-based
       selection).

    Examples
    --------
    >>> from harp.selectors import SimilaritySelector
    >>> pool = [{"prompt": "add 2 and 3", "response": "5"},
    ...         {"prompt": "write a poem about rain", "response": "drops fall"},
    ...         {"prompt": "add 7 and 1", "response": "8"}]
    >>> target = [{"prompt": "add 4 and 4", "response": "8"}]
    >>> from harp.features import TextFeatures
    >>> sel = SimilaritySelector(budget=2, features=TextFeatures(encoder="tfidf")
    ...                          ).select(pool, target)
    >>> sorted(sel.indices.tolist())
    [0, 2]
    """

    name = "similarity"
    needs_target = True
    _components = ("features",)
    _parameter_constraints = {
        "budget": ["budget"],
        "seed": ["seed"],
        "features": [None, Options("text"), TextFeatures],
        "aggregate": [Options("max", "mean")],
        "context": [None, RunContext],
    }

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        features: TextFeatures | None = None,
        aggregate: str = "max",
        context: RunContext | None = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.features = features
        self.aggregate = aggregate
        self.context = context

    def _default_component(self, name: str, kind: str | None = None) -> TextFeatures:
        return TextFeatures()

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        assert target is not None  # checked by BaseSelector.fit (needs_target)
        features = self.resolved_component("features")
        self.encoder_ = features.resolved_encoder()
        pool_emb, target_emb = features.embed_sets([pool, target], context)
        by_domain = target.by_domain()
        self.domains_ = list(by_domain)
        centroids = np.stack(
            [target_emb[i].astype(np.float64).mean(axis=0) for i in by_domain.values()]
        )
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        centroids = np.divide(
            centroids, norms, out=np.zeros_like(centroids), where=norms > 0
        )
        sims = pool_emb.astype(np.float64) @ centroids.T
        self.domain_similarity_ = sims
        scores = sims.max(axis=1) if self.aggregate == "max" else sims.mean(axis=1)
        order = ranked_order(scores)[:budget]
        cost = {
            "rows_scored": len(pool) + len(target),
            "device": features.device_for(context),
        }
        return order, scores, None, cost
