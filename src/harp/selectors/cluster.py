"""k-means cluster-balanced sampling: a diversity baseline that needs no target."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np

from harp.core.context import RunContext
from harp.core.errors import ParameterError
from harp.core.records import ExampleSet
from harp.features.components import TextFeatures
from harp.selectors.base import BaseSelector, Interval, Options, SelectResult
from harp.selectors.registry import register

__all__ = ["ClusterSelector"]

log = logging.getLogger(__name__)

#: Pools larger than this are clustered with MiniBatchKMeans.
MINIBATCH_THRESHOLD = 20_000


def allocate(budget: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Split ``budget`` picks over groups in proportion to ``weights``, up to ``caps``.

    Largest-remainder rounding, ties to the lower group index; what a full group
    cannot take is shared again among the others with weight. Groups of zero weight
    get nothing, so the total may fall short of ``budget`` (the caller decides what to
    do then).
    """
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.int64)
    alloc = np.zeros(len(caps), dtype=np.int64)
    remaining = int(budget)
    active = (weights > 0) & (caps > 0)
    while remaining > 0 and active.any():
        w = np.where(active, weights, 0.0)
        share = remaining * w / w.sum()
        base = np.floor(share).astype(np.int64)
        extra = remaining - int(base.sum())
        if extra > 0:
            frac = np.where(active, share - base, -np.inf)
            top = np.lexsort((np.arange(len(frac)), -frac))[:extra]
            base[top] += 1
        take = np.minimum(base, caps - alloc)
        alloc += take
        remaining -= int(take.sum())
        active &= alloc < caps
    return alloc


@register
class ClusterSelector(BaseSelector):
    r"""Cluster the pool with k-means and pick evenly across the clusters.

    Pool texts are embedded, clustered by k-means, and picked round-robin over the
    clusters (largest cluster first in each round), so every prefix of the ranking
    covers the clusters as evenly as their sizes allow. Within a cluster rows are taken
    nearest-to-centroid first (the most typical rows) or in random order.

    Parameters
    ----------
    budget : int, float or str, default="10%"
        Rows to select: a count, a fraction of the pool, or a percentage string.
    seed : int or None, default=0
        Seeds k-means and, with ``within="random"``, the order inside clusters.
    features : TextFeatures or None, default=None
        The text embedding (None: ``TextFeatures()``; see
        :class:`~harp.features.TextFeatures`).
    n_clusters : int or None, default=None
        Number of clusters; ``None`` means ``min(budget, max(2, round(sqrt(n_pool))))``.
        Never more than the pool has rows.
    within : {"nearest", "random"}, default="nearest"
        Order of picks inside a cluster.
    target_weighted : bool, default=False
        Give each cluster a share of the budget proportional to the number of target
        rows nearest its centroid (needs a target); clusters no target row falls in
        are used only when the others run out of rows.
    n_init : int, default=3
        k-means restarts (the best inertia is kept).
    context : RunContext or None, default=None
        Where the encoder runs, progress display (see :class:`harp.core.RunContext`).

    Attributes
    ----------
    selection_ : Selection
        The picks in round-robin order; ``scores`` is minus each row's distance to its
        cluster centroid (higher = more typical), ``gains`` are NaN.
    encoder_ : str
        The encoder used (``"minilm"`` or ``"tfidf"``).
    n_clusters_ : int
        Number of clusters used.
    labels_ : ndarray of int, shape (n_pool,)
        Cluster of each pool row; clusters are numbered by size, largest first (ties by
        lowest row index), which is also the order within a round.
    cluster_sizes_ : ndarray of int, shape (n_clusters_,)
        Rows per cluster.
    quotas_ : ndarray of int, shape (n_clusters_,)
        Picks per cluster.

    Notes
    -----
    With quota :math:`q_c` for cluster :math:`c`, the :math:`j`-th pick of cluster
    :math:`c` is ordered by :math:`j` (balanced) or by :math:`(j + 1/2) / q_c`
    (``target_weighted``), ties by cluster number. Balanced quotas are water-filling:
    every cluster gets the same number of picks unless it has fewer rows.
    k-means costs :math:`O(n\,k\,d)` per Lloyd iteration; pools above 20,000 rows use
    mini-batch k-means.

    References
    ----------
    .. [1] Sculley, "Web-scale k-means clustering", WWW (2010) -- mini-batch k-means.
    .. [2] Abbas et al., "SemDeDup: Data-efficient learning at web-scale through
       semantic deduplication", arXiv:2303.09540 (2023) -- embedding clusters for data
       curation.

    Examples
    --------
    >>> from harp.selectors import ClusterSelector
    >>> topics = ["cats purr and nap", "stocks fell on monday", "rain soaks the hills"]
    >>> pool = [{"prompt": t, "response": f"note {i}"}
    ...         for t in topics for i in range(4)]
    >>> from harp.features import TextFeatures
    >>> sel = ClusterSelector(budget=3, n_clusters=3,
    ...                       features=TextFeatures(encoder="tfidf")).select(pool)
    >>> sorted((sel.indices // 4).tolist())  # one row from each topic
    [0, 1, 2]
    """

    name = "cluster"
    _components = ("features",)
    _parameter_constraints = {
        "budget": ["budget"],
        "seed": ["seed"],
        "features": [None, Options("text"), TextFeatures],
        "n_clusters": [None, Interval(int, 1, None)],
        "within": [Options("nearest", "random")],
        "target_weighted": ["boolean"],
        "n_init": [Interval(int, 1, None)],
        "context": [None, RunContext],
    }

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        features: TextFeatures | None = None,
        n_clusters: int | None = None,
        within: str = "nearest",
        target_weighted: bool = False,
        n_init: int = 3,
        context: RunContext | None = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.features = features
        self.n_clusters = n_clusters
        self.within = within
        self.target_weighted = target_weighted
        self.n_init = n_init
        self.context = context

    def _default_component(self, name: str, kind: str | None = None) -> TextFeatures:
        return TextFeatures()

    def _kmeans(self, x: np.ndarray, k: int, random_state: int):
        from sklearn.cluster import KMeans, MiniBatchKMeans
        from sklearn.exceptions import ConvergenceWarning

        if len(x) > MINIBATCH_THRESHOLD:
            model = MiniBatchKMeans(
                n_clusters=k,
                n_init=self.n_init,
                random_state=random_state,
                batch_size=4096,
            )
        else:
            model = KMeans(n_clusters=k, n_init=self.n_init, random_state=random_state)
        from threadpoolctl import threadpool_limits

        # One BLAS/OpenMP thread: k-means' parallel reductions otherwise change the
        # last bits of centres and distances with the thread count, and the same seed
        # must give a byte-identical selection on any machine.
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            # Fewer distinct points than clusters: some clusters stay empty; handled.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x)
        return model

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        rng = context.rng()
        if self.target_weighted and target is None:
            raise ParameterError(
                "ClusterSelector: target_weighted=True needs a target set; pass "
                "target=... or set target_weighted=False"
            )
        n = len(pool)
        features = self.resolved_component("features")
        self.encoder_ = features.resolved_encoder()
        use_target = self.target_weighted and target is not None
        sets = [pool] if target is None or not use_target else [pool, target]
        embeddings = features.embed_sets(sets, context)
        x = embeddings[0]
        if self.n_clusters is None:
            k = min(budget, max(2, int(round(math.sqrt(n)))))
        else:
            k = self.n_clusters
        k = max(1, min(k, n))
        self.n_clusters_ = k

        model = self._kmeans(x, k, int(rng.integers(2**31 - 1)))
        raw_labels = np.asarray(model.labels_, dtype=np.int64)
        centers = np.asarray(model.cluster_centers_, dtype=np.float64)
        dist = np.linalg.norm(x.astype(np.float64) - centers[raw_labels], axis=1)

        # Number clusters canonically: size descending, then lowest member index.
        sizes_raw = np.bincount(raw_labels, minlength=k)
        first = np.full(k, n, dtype=np.int64)
        np.minimum.at(first, raw_labels, np.arange(n))
        canon = np.lexsort((first, -sizes_raw))  # canon[new] = old
        relabel = np.empty(k, dtype=np.int64)
        relabel[canon] = np.arange(k)
        labels = relabel[raw_labels]
        sizes = sizes_raw[canon]
        self.labels_ = labels
        self.cluster_sizes_ = sizes
        if np.count_nonzero(sizes) < k:
            log.info(
                "k-means found %d non-empty clusters of %d asked",
                np.count_nonzero(sizes),
                k,
            )

        members = []
        for c in range(k):
            idx = np.flatnonzero(labels == c)
            if self.within == "nearest":
                idx = idx[np.lexsort((idx, dist[idx]))]
            else:
                idx = idx[rng.permutation(len(idx))]
            members.append(idx)

        if use_target:
            predicted = np.asarray(model.predict(embeddings[1]), dtype=np.int64)
            target_labels = relabel[predicted]
            weights = np.bincount(target_labels, minlength=k).astype(np.float64)
            quotas = allocate(budget, weights, sizes)
            short = budget - int(quotas.sum())
            if short > 0:
                quotas += allocate(short, np.ones(k), sizes - quotas)
        else:
            quotas = allocate(budget, np.ones(k), sizes)
        self.quotas_ = quotas

        keys, clusters, picks = [], [], []
        for c in range(k):
            q = int(quotas[c])
            j = np.arange(q, dtype=np.float64)
            keys.append((j + 0.5) / q if use_target else j)
            clusters.append(np.full(q, c))
            picks.append(members[c][:q])
        keys_all = np.concatenate(keys) if keys else np.zeros(0)
        clusters_all = np.concatenate(clusters) if clusters else np.zeros(0, np.int64)
        picks_all = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        order = picks_all[np.lexsort((clusters_all, keys_all))]
        scores = -dist
        cost = {
            "rows_scored": n
            + (len(target) if target is not None and use_target else 0),
            "device": features.device_for(context),
        }
        return order, scores, None, cost
