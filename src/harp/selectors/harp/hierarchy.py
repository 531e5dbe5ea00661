"""HARP's three-level tree over the pool: nodes → parents → leaves, by k-means.

A *leaf* is a small cluster of pool rows (tens to a few hundred); HARP finetunes on
whole leaves. *Parents* group similar leaves, and one representative leaf per parent
is what HARP actually measures. *Nodes* group parents (the coarse regions HARP prunes).
The tree is built bottom-up so that every level is made of whole pieces of the level
below, and it is numbered canonically so that the same features and seed give the
same tree byte for byte.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harp.core.errors import ParameterError

__all__ = ["Hierarchy", "build_hierarchy", "default_shape"]

log = logging.getLogger(__name__)

#: Schema version of :meth:`Hierarchy.to_dict`.
SCHEMA_VERSION = 1

#: k-means restarts with scikit-learn (the best inertia is kept); faiss uses ``nredo``.
N_INIT = 3

#: Above this many points scikit-learn's mini-batch k-means is used (as in ``cluster``).
MINIBATCH_THRESHOLD = 20_000

BACKENDS = ("auto", "faiss", "sklearn")


def _as_ids(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ParameterError(
            f"Hierarchy: {name} must be one-dimensional, got shape {arr.shape}"
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ParameterError(f"Hierarchy: {name} must hold integer ids")
    # A private copy: the tree freezes its arrays and must not freeze the caller's.
    return np.array(arr, dtype=np.int64, copy=True)


def _check_labels(labels: np.ndarray, k: int, name: str, what: str) -> None:
    """Labels must cover 0..k-1, each at least once (no empty cluster)."""
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ParameterError(
            f"Hierarchy: {name} holds ids outside 0..{k - 1}; ids must be contiguous"
        )
    counts = np.bincount(labels, minlength=k)
    if np.any(counts == 0):
        raise ParameterError(
            f"Hierarchy: {what} {np.flatnonzero(counts == 0)[:5].tolist()} "
            f"have no members in {name}; renumber so that every id is used"
        )


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """A three-level tree over pool rows: rows → leaves → parents → nodes.

    Ids at every level are contiguous (``0..L-1``, ``0..P-1``, ``0..N-1``) and no
    cluster is empty. Leaves are numbered by their smallest row index, parents by their
    smallest leaf id and nodes by their smallest parent id, so the numbering depends
    only on the partition, never on the clustering library's label order.

    Parameters
    ----------
    leaf_of_row : ndarray of int64, shape (n,)
        Leaf of each pool row.
    parent_of_leaf : ndarray of int64, shape (L,)
        Parent of each leaf.
    node_of_parent : ndarray of int64, shape (P,)
        Node of each parent.
    leaf_centroids : ndarray of float64, shape (L, d)
        Mean feature vector of each leaf's rows.
    parent_centroids : ndarray of float64, shape (P, d)
        Mean feature vector of each parent's rows (leaf centroids weighted by size).
    representatives : ndarray of int64, shape (P,)
        Per parent, its leaf whose centroid is nearest the parent centroid (ties to the
        lowest leaf id): the leaf HARP measures first.

    Examples
    --------
    >>> import numpy as np
    >>> h = Hierarchy(
    ...     leaf_of_row=np.array([0, 0, 1, 2]), parent_of_leaf=np.array([0, 0, 1]),
    ...     node_of_parent=np.array([0, 0]),
    ...     leaf_centroids=np.array([[0.0], [1.0], [5.0]]),
    ...     parent_centroids=np.array([[1 / 3], [5.0]]),
    ...     representatives=np.array([0, 2]))
    >>> h.n_leaves, h.n_parents, h.n_nodes
    (3, 2, 1)
    >>> h.leaf_rows(0).tolist(), h.leaves_of_parent(0).tolist()
    ([0, 1], [0, 1])
    """

    leaf_of_row: np.ndarray
    parent_of_leaf: np.ndarray
    node_of_parent: np.ndarray
    leaf_centroids: np.ndarray
    parent_centroids: np.ndarray
    representatives: np.ndarray
    # Rows sorted by (leaf, row) and each leaf's start in that order: leaf_rows() is
    # then a slice, not an O(n) scan per call (HARP asks for every leaf's rows).
    _row_order: np.ndarray = field(init=False, repr=False)
    _row_starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        leaf_of_row = _as_ids(self.leaf_of_row, "leaf_of_row")
        parent_of_leaf = _as_ids(self.parent_of_leaf, "parent_of_leaf")
        node_of_parent = _as_ids(self.node_of_parent, "node_of_parent")
        representatives = _as_ids(self.representatives, "representatives")
        leaf_centroids = np.array(self.leaf_centroids, dtype=np.float64, copy=True)
        parent_centroids = np.array(self.parent_centroids, dtype=np.float64, copy=True)
        n_leaves, n_parents = len(parent_of_leaf), len(node_of_parent)
        if leaf_centroids.ndim != 2 or len(leaf_centroids) != n_leaves:
            raise ParameterError(
                f"Hierarchy: leaf_centroids must have shape ({n_leaves}, d), got "
                f"{leaf_centroids.shape}"
            )
        if parent_centroids.shape != (n_parents, leaf_centroids.shape[1]):
            raise ParameterError(
                f"Hierarchy: parent_centroids must have shape ({n_parents}, "
                f"{leaf_centroids.shape[1]}), got {parent_centroids.shape}"
            )
        if len(representatives) != n_parents:
            raise ParameterError(
                f"Hierarchy: representatives must have one leaf per parent "
                f"({n_parents}), got {len(representatives)}"
            )
        _check_labels(leaf_of_row, n_leaves, "leaf_of_row", "leaves")
        _check_labels(parent_of_leaf, n_parents, "parent_of_leaf", "parents")
        n_nodes = int(node_of_parent.max()) + 1 if n_parents else 0
        _check_labels(node_of_parent, n_nodes, "node_of_parent", "nodes")
        if n_parents and (
            representatives.min() < 0
            or representatives.max() >= n_leaves
            or np.any(parent_of_leaf[representatives] != np.arange(n_parents))
        ):
            raise ParameterError(
                "Hierarchy: each representative must be a leaf of its own parent"
            )
        for name, value in (
            ("leaf_of_row", leaf_of_row),
            ("parent_of_leaf", parent_of_leaf),
            ("node_of_parent", node_of_parent),
            ("leaf_centroids", leaf_centroids),
            ("parent_centroids", parent_centroids),
            ("representatives", representatives),
        ):
            value.setflags(write=False)  # frozen means frozen: no in-place edits
            object.__setattr__(self, name, value)
        order = np.argsort(leaf_of_row, kind="stable")  # stable: rows ascending
        starts = np.zeros(n_leaves + 1, dtype=np.int64)
        np.cumsum(np.bincount(leaf_of_row, minlength=n_leaves), out=starts[1:])
        object.__setattr__(self, "_row_order", order)
        object.__setattr__(self, "_row_starts", starts)

    @property
    def n_rows(self) -> int:
        """Number of pool rows."""
        return len(self.leaf_of_row)

    @property
    def n_leaves(self) -> int:
        """Number of leaves ``L``."""
        return len(self.parent_of_leaf)

    @property
    def n_parents(self) -> int:
        """Number of parents ``P``."""
        return len(self.node_of_parent)

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.node_of_parent.max()) + 1 if self.n_parents else 0

    @property
    def leaf_sizes(self) -> np.ndarray:
        """Rows per leaf, shape (L,)."""
        return np.diff(self._row_starts)

    def _check(self, value: int, n: int, what: str) -> int:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ParameterError(f"Hierarchy: {what} id must be an int, got {value!r}")
        if not 0 <= value < n:
            raise ParameterError(
                f"Hierarchy: {what} id {value} is out of range; use 0..{n - 1}"
            )
        return int(value)

    def leaf_rows(self, leaf: int) -> np.ndarray:
        """Row indices of ``leaf``, ascending."""
        leaf = self._check(leaf, self.n_leaves, "leaf")
        return self._row_order[self._row_starts[leaf] : self._row_starts[leaf + 1]]

    def leaves_of_parent(self, parent: int) -> np.ndarray:
        """Leaf ids of ``parent``, ascending."""
        parent = self._check(parent, self.n_parents, "parent")
        return np.flatnonzero(self.parent_of_leaf == parent)

    def parents_of_node(self, node: int) -> np.ndarray:
        """Parent ids of ``node``, ascending."""
        node = self._check(node, self.n_nodes, "node")
        return np.flatnonzero(self.node_of_parent == node)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (lists of ints and floats) that :meth:`from_dict` reads.

        Floats are written as Python floats, whose ``repr`` round-trips exactly, so a
        saved tree reloads bit for bit.
        """
        return {
            "schema_version": SCHEMA_VERSION,
            "leaf_of_row": self.leaf_of_row.tolist(),
            "parent_of_leaf": self.parent_of_leaf.tolist(),
            "node_of_parent": self.node_of_parent.tolist(),
            "leaf_centroids": self.leaf_centroids.tolist(),
            "parent_centroids": self.parent_centroids.tolist(),
            "representatives": self.representatives.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hierarchy:
        """Rebuild a tree written by :meth:`to_dict`."""
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ParameterError(
                f"Hierarchy.from_dict: schema_version {version} is not supported "
                f"(this harp reads {SCHEMA_VERSION}); rebuild the tree"
            )
        d = len(data["leaf_centroids"][0]) if data["leaf_centroids"] else 0
        return cls(
            leaf_of_row=np.asarray(data["leaf_of_row"], dtype=np.int64),
            parent_of_leaf=np.asarray(data["parent_of_leaf"], dtype=np.int64),
            node_of_parent=np.asarray(data["node_of_parent"], dtype=np.int64),
            leaf_centroids=np.reshape(
                np.asarray(data["leaf_centroids"], float), (-1, d)
            ),
            parent_centroids=np.reshape(
                np.asarray(data["parent_centroids"], float), (-1, d)
            ),
            representatives=np.asarray(data["representatives"], dtype=np.int64),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hierarchy):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, k), getattr(other, k))
            for k in (
                "leaf_of_row",
                "parent_of_leaf",
                "node_of_parent",
                "leaf_centroids",
                "parent_centroids",
                "representatives",
            )
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: unhashable


def _branching(k: int) -> int:
    return int(np.clip(round(k ** (1 / 3)), 4, 8))


def default_shape(n_rows: int) -> tuple[int, int, int]:
    """Default ``(leaf_size, leaves_per_parent, parents_per_node)`` for ``n_rows``.

    Rules:

    - ``leaf_size = clip(round(n_rows / 64), 10, 200)``: a leaf is big enough for a
      LoRA finetune to move a score (tens of rows) and small enough that pools up to
      ~13k rows still get 64 leaves; large pools get leaves of 200 rows.
    - ``leaves_per_parent = clip(round(L ** (1/3)), 4, 8)`` with
      ``L = ceil(n_rows / leaf_size)``, and ``parents_per_node`` the same rule on
      ``P = ceil(L / leaves_per_parent)``: a branching factor of 4–8 that grows
      slowly with the tree. HARP's train-evaluate calls scale with ``P`` (one
      representative per parent), e.g. 10,000 rows → 64 leaves → 16 parents.

    Parameters
    ----------
    n_rows : int
        Pool size (at least 1).

    Returns
    -------
    tuple of int
        ``(leaf_size, leaves_per_parent, parents_per_node)``.

    Examples
    --------
    >>> default_shape(10_000)
    (156, 4, 4)
    >>> default_shape(1_000_000)
    (200, 8, 8)
    >>> default_shape(30)
    (10, 4, 4)
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)):
        raise ParameterError(f"default_shape: n_rows must be an int, got {n_rows!r}")
    if n_rows < 1:
        raise ParameterError(
            f"default_shape: n_rows must be at least 1, got {n_rows}; the pool is empty"
        )
    leaf_size = int(np.clip(round(n_rows / 64), 10, 200))
    n_leaves = math.ceil(n_rows / leaf_size)
    leaves_per_parent = _branching(n_leaves)
    n_parents = math.ceil(n_leaves / leaves_per_parent)
    return leaf_size, leaves_per_parent, _branching(n_parents)


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ParameterError(
            f"build_hierarchy: backend={backend!r} is not one of {BACKENDS}"
        )
    if backend == "sklearn":
        return backend
    try:
        import faiss  # noqa: F401
    except ImportError:
        if backend == "faiss":
            raise ParameterError(
                "build_hierarchy: backend='faiss' but faiss is not installed; "
                "pip install 'harp-select[faiss]' or use backend='sklearn'"
            ) from None
        return "sklearn"
    return "faiss"


def _kmeans_labels(
    x: np.ndarray, k: int, weights: np.ndarray | None, seed: int, backend: str
) -> np.ndarray:
    """Cluster labels of ``x`` into at most ``k`` groups (some may come back empty).

    Deterministic for a seed whatever the machine's thread count: both libraries run
    on one thread, because parallel reductions change the last bits of the centres
    and thereby, now and then, a label.
    """
    n = len(x)
    # Fewer distinct points than clusters: the distinct points are the clusters.
    # Exact, cheap, and spares k-means its empty-cluster warnings or errors.
    rows = np.ascontiguousarray(x)
    rows = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
    _, first, inverse = np.unique(rows.ravel(), return_index=True, return_inverse=True)
    if len(first) <= k:
        return inverse.astype(np.int64).ravel()
    if k == 1:
        return np.zeros(n, dtype=np.int64)

    if backend == "faiss":
        import faiss

        x32 = np.ascontiguousarray(x, dtype=np.float32)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            km = faiss.Kmeans(
                x32.shape[1], k, niter=25, nredo=N_INIT, seed=seed, verbose=False
            )
            w = None if weights is None else np.ascontiguousarray(weights, np.float32)
            km.train(x32, weights=w)
            _, labels = km.index.search(x32, 1)
        finally:
            faiss.omp_set_num_threads(before)
        return labels.astype(np.int64).ravel()

    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    if n > MINIBATCH_THRESHOLD:
        model = MiniBatchKMeans(
            n_clusters=k,
            n_init=N_INIT,
            random_state=seed,
            batch_size=max(4096, 4 * k),
        )
    else:
        model = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed)
    # One BLAS/OpenMP thread: see the docstring (same discipline as ``cluster``).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, sample_weight=weights)
    return np.asarray(model.labels_, dtype=np.int64)


def _canonical(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber labels 0..k-1 by each cluster's smallest member index; drop empties."""
    used, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(used), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(used))
    return rank[inverse.ravel()], len(used)


def _group_means(
    x: np.ndarray, labels: np.ndarray, k: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted mean of ``x`` per label, float64, summed in a fixed (sorted) order."""
    order = np.argsort(labels, kind="stable")
    xs = np.asarray(x, dtype=np.float64)[order]
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)[order]
    starts = np.searchsorted(labels[order], np.arange(k))
    sums = np.add.reduceat(xs * w[:, None], starts, axis=0)
    return sums / np.add.reduceat(w, starts)[:, None]


def _check_size(name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterError(f"build_hierarchy: {name} must be an int, got {value!r}")
    if value < 1:
        raise ParameterError(
            f"build_hierarchy: {name} must be at least 1, got {value}; "
            "or pass None for the default"
        )
    return int(value)


def build_hierarchy(
    features: np.ndarray,
    *,
    leaf_size: int | None = None,
    leaves_per_parent: int | None = None,
    parents_per_node: int | None = None,
    seed: int = 0,
    backend: str = "auto",
) -> Hierarchy:
    r"""Cluster pool rows into a three-level tree (leaves → parents → nodes).

    Bottom-up k-means: rows into :math:`L = \lceil n / \text{leaf\_size} \rceil`
    leaves; leaf centroids (weighted by leaf size) into
    :math:`P = \lceil L / \text{leaves\_per\_parent} \rceil` parents; parent centroids
    (weighted by parent size) into :math:`\lceil P / \text{parents\_per\_node}
    \rceil` nodes. Clusters that k-means leaves empty are dropped, so a level may have
    fewer members than asked (always when the points have fewer distinct values than
    clusters: then each distinct value is one cluster).

    Parameters
    ----------
    features : ndarray, shape (n, d) or (n,)
        One feature vector per pool row (sentence embeddings, projected gradients);
        float32 is fine. A 1-D array is read as ``d = 1``.
    leaf_size : int or None, default=None
        Target rows per leaf; ``None`` uses :func:`default_shape`.
    leaves_per_parent : int or None, default=None
        Target leaves per parent; ``None`` uses :func:`default_shape`.
    parents_per_node : int or None, default=None
        Target parents per node; ``None`` uses :func:`default_shape`.
    seed : int, default=0
        k-means seed; each level gets its own child seed of it.
    backend : {"auto", "faiss", "sklearn"}, default="auto"
        ``"auto"`` uses faiss when it can be imported, else scikit-learn.

    Returns
    -------
    Hierarchy
        Canonically numbered: leaves by smallest row index, parents by smallest leaf
        id, nodes by smallest parent id. Centroids are exact float64 means of the
        member rows.

    Raises
    ------
    ParameterError
        On an empty or non-finite feature matrix, or a bad size or backend.

    Notes
    -----
    Determinism: k-means runs on one thread (scikit-learn under
    ``threadpool_limits(1)``, faiss under ``omp_set_num_threads(1)``), so the same
    features and seed give a byte-identical tree on any machine *with the same
    backend*; faiss and scikit-learn give different (equally valid) trees.
    Cost: :math:`O(n L d)` per Lloyd iteration for the leaves, which dominates; pools
    above 20,000 rows use mini-batch k-means with scikit-learn, and faiss is much
    faster on large pools (``pip install 'harp-select[faiss]'``).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.repeat([[0.0, 0.0], [0.0, 9.0], [9.0, 0.0], [9.0, 9.0]], 5, axis=0)
    >>> h = build_hierarchy(x + 0.01 * np.arange(20)[:, None], leaf_size=5,
    ...                     leaves_per_parent=2, parents_per_node=2, backend="sklearn")
    >>> h.n_leaves, h.n_parents, h.n_nodes
    (4, 2, 1)
    >>> h.leaf_rows(1).tolist()
    [5, 6, 7, 8, 9]
    """
    x = np.asarray(features)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ParameterError(
            f"build_hierarchy: features must be (n_rows, dim), got shape {x.shape}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    n, d = x.shape
    if n == 0 or d == 0:
        raise ParameterError(
            f"build_hierarchy: features of shape {x.shape} are empty; need at least "
            "one row and one column"
        )
    if not np.all(np.isfinite(x)):
        raise ParameterError(
            "build_hierarchy: features hold NaN or inf; drop or repair those rows"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ParameterError(f"build_hierarchy: seed must be an int, got {seed!r}")
    default = default_shape(n)
    leaf_size = _check_size("leaf_size", leaf_size, default[0])
    leaves_per_parent = _check_size("leaves_per_parent", leaves_per_parent, default[1])
    parents_per_node = _check_size("parents_per_node", parents_per_node, default[2])
    backend = _resolve_backend(backend)
    # One child seed per level: changing one level's size never reseeds another.
    seeds = [
        int(s.generate_state(1)[0] % (2**31 - 1))
        for s in np.random.SeedSequence(int(seed)).spawn(3)
    ]

    raw = _kmeans_labels(x, math.ceil(n / leaf_size), None, seeds[0], backend)
    leaf_of_row, n_leaves = _canonical(raw)
    leaf_sizes = np.bincount(leaf_of_row, minlength=n_leaves).astype(np.float64)
    leaf_centroids = _group_means(x, leaf_of_row, n_leaves)

    raw = _kmeans_labels(
        leaf_centroids,
        math.ceil(n_leaves / leaves_per_parent),
        leaf_sizes,
        seeds[1],
        backend,
    )
    parent_of_leaf, n_parents = _canonical(raw)  # leaf ids ascend with first row
    parent_sizes = np.bincount(parent_of_leaf, leaf_sizes, minlength=n_parents)
    parent_centroids = _group_means(
        leaf_centroids, parent_of_leaf, n_parents, leaf_sizes
    )

    raw = _kmeans_labels(
        parent_centroids,
        math.ceil(n_parents / parents_per_node),
        parent_sizes,
        seeds[2],
        backend,
    )
    node_of_parent, n_nodes = _canonical(raw)

    # Representative: the parent's leaf nearest its centroid; lexsort on (id, dist)
    # then first-per-parent makes ties go to the lowest leaf id.
    dist = np.sum((leaf_centroids - parent_centroids[parent_of_leaf]) ** 2, axis=1)
    order = np.lexsort((np.arange(n_leaves), dist, parent_of_leaf))
    first = np.searchsorted(parent_of_leaf[order], np.arange(n_parents))
    representatives = order[first]
    log.debug(
        "hierarchy: %d rows -> %d leaves -> %d parents -> %d nodes (%s)",
        n,
        n_leaves,
        n_parents,
        n_nodes,
        backend,
    )
    return Hierarchy(
        leaf_of_row=leaf_of_row,
        parent_of_leaf=parent_of_leaf,
        node_of_parent=node_of_parent,
        leaf_centroids=leaf_centroids,
        parent_centroids=parent_centroids,
        representatives=representatives,
    )
