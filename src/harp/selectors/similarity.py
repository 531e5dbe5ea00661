"""Embedding similarity to the target: the simplest target-aware baseline."""

from __future__ import annotations

import numpy as np

from harp.data._records import ExampleSet
from harp.features.text import ENCODERS, TextFeaturizer
from harp.selectors._base import BaseSelector, Interval, Options, ranked_order
from harp.selectors._registry import register

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
    encoder : {"auto", "minilm", "tfidf"}, default="auto"
        Text encoder: the offline all-MiniLM-L6-v2 sentence encoder, hashed TF-IDF +
        SVD, or MiniLM when installed else TF-IDF.
    aggregate : {"max", "mean"}, default="max"
        How similarities to the domain centroids combine: ``"max"`` serves every domain
        (a small domain is not drowned by a large one); ``"mean"`` favours rows close to
        all domains at once.
    batch_size : int, default=64
        Texts per forward pass of the sentence encoder.
    progress : bool, default=False
        Show a progress bar while encoding.

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
    >>> sel = SimilaritySelector(budget=2, encoder="tfidf").select(pool, target)
    >>> sorted(sel.indices.tolist())
    [0, 2]
    """

    name = "similarity"
    needs_target = True
    _parameter_constraints = {
        "budget": ["budget"],
        "seed": ["seed"],
        "encoder": [Options(*ENCODERS)],
        "aggregate": [Options("max", "mean")],
        "batch_size": [Interval(int, 1, None)],
        "progress": ["boolean"],
    }

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        encoder: str = "auto",
        aggregate: str = "max",
        batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.encoder = encoder
        self.aggregate = aggregate
        self.batch_size = batch_size
        self.progress = progress

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        rng: np.random.Generator,
    ):
        assert target is not None  # checked by BaseSelector.fit (needs_target)
        featurizer = TextFeaturizer(
            encoder=self.encoder, batch_size=self.batch_size, progress=self.progress
        )
        self.encoder_ = featurizer.resolved_encoder
        pool_emb, target_emb = featurizer.embed_sets(pool.texts, target.texts)
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
        cost = {"rows_scored": len(pool) + len(target), "device": "cpu"}
        return order, scores, None, cost
