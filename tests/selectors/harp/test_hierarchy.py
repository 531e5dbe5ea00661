"""HARP's three-level tree: a partition at every level, canonical and deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from harp.core.errors import ParameterError
from harp.selectors.harp import Hierarchy, build_hierarchy, default_shape


def blobs(n_blobs: int = 6, per_blob: int = 40, dim: int = 8, seed: int = 0):
    """Well-separated Gaussian blobs (centres 50 apart, sd 1); returns (x, labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=50.0, size=(n_blobs, dim))
    labels = np.repeat(np.arange(n_blobs), per_blob)
    x = centres[labels] + rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


def check_tree(h: Hierarchy, n: int) -> None:
    """Every invariant a tree must keep, whatever built it."""
    assert h.leaf_of_row.shape == (n,)
    assert h.leaf_of_row.dtype == np.int64
    # Every row in exactly one leaf; ids contiguous; nothing empty at any level.
    assert np.array_equal(np.unique(h.leaf_of_row), np.arange(h.n_leaves))
    assert np.array_equal(np.unique(h.parent_of_leaf), np.arange(h.n_parents))
    assert np.array_equal(np.unique(h.node_of_parent), np.arange(h.n_nodes))
    rows = np.concatenate([h.leaf_rows(g) for g in range(h.n_leaves)])
    assert np.array_equal(np.sort(rows), np.arange(n))
    for g in range(h.n_leaves):
        r = h.leaf_rows(g)
        assert len(r) > 0 and np.all(np.diff(r) > 0)
    # Canonical numbering: leaves by first row, parents by first leaf.
    first_row = [h.leaf_rows(g)[0] for g in range(h.n_leaves)]
    assert np.all(np.diff(first_row) > 0)
    first_leaf = [h.leaves_of_parent(p)[0] for p in range(h.n_parents)]
    assert np.all(np.diff(first_leaf) > 0)
    first_parent = [h.parents_of_node(m)[0] for m in range(h.n_nodes)]
    assert np.all(np.diff(first_parent) > 0)
    assert sum(len(h.leaves_of_parent(p)) for p in range(h.n_parents)) == h.n_leaves


def test_partition_and_representatives():
    x, _ = blobs()
    h = build_hierarchy(x, leaf_size=10, leaves_per_parent=4, parents_per_node=3)
    check_tree(h, len(x))
    assert h.n_leaves <= 24 and h.n_parents <= 6 and h.n_nodes <= 2
    xd = x.astype(np.float64)
    for g in range(h.n_leaves):
        assert np.allclose(h.leaf_centroids[g], xd[h.leaf_rows(g)].mean(axis=0))
    for p in range(h.n_parents):
        leaves = h.leaves_of_parent(p)
        rows = np.concatenate([h.leaf_rows(g) for g in leaves])
        assert np.allclose(h.parent_centroids[p], xd[rows].mean(axis=0))
        # The representative is truly the nearest leaf centroid (ties: lowest id).
        dist = np.linalg.norm(h.leaf_centroids[leaves] - h.parent_centroids[p], axis=1)
        assert h.representatives[p] == leaves[np.argmin(dist)]
        assert h.parent_of_leaf[h.representatives[p]] == p


def test_blobs_recovered():
    x, labels = blobs(n_blobs=6, per_blob=40)
    h = build_hierarchy(x, leaf_size=10, leaves_per_parent=4, parents_per_node=8)
    parent_of_row = h.parent_of_leaf[h.leaf_of_row]
    for b in range(6):
        # Each blob sits under one parent and no leaf mixes two blobs.
        assert len(np.unique(parent_of_row[labels == b])) == 1
    for g in range(h.n_leaves):
        assert len(np.unique(labels[h.leaf_rows(g)])) == 1


def test_deterministic_and_thread_invariant():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    kw = dict(leaf_size=12, leaves_per_parent=5, parents_per_node=4, seed=7)
    a = build_hierarchy(x, **kw)
    b = build_hierarchy(x, **kw)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    with threadpool_limits(limits=1):
        c = build_hierarchy(x, **kw)
    with threadpool_limits(limits=2):
        d = build_hierarchy(x, **kw)
    assert a == c == d
    for field in ("leaf_centroids", "parent_centroids"):
        assert getattr(a, field).tobytes() == getattr(d, field).tobytes()
    other = build_hierarchy(x, **{**kw, "seed": 8})
    check_tree(other, len(x))


def test_tiny_pool_is_one_leaf():
    x = np.random.default_rng(0).normal(size=(5, 3))
    h = build_hierarchy(x)  # default leaf size (10) exceeds the pool
    check_tree(h, 5)
    assert (h.n_leaves, h.n_parents, h.n_nodes) == (1, 1, 1)
    assert h.representatives.tolist() == [0]
    one = build_hierarchy(np.array([[1.0, 2.0]]))
    assert one.leaf_rows(0).tolist() == [0]


def test_duplicate_points():
    # Three distinct points repeated, asked for 10 leaves: one leaf per distinct point.
    x = np.repeat(np.eye(3), [30, 40, 30], axis=0)
    x = x[np.random.default_rng(0).permutation(len(x))]
    h = build_hierarchy(x, leaf_size=10, leaves_per_parent=2, parents_per_node=2)
    check_tree(h, len(x))
    assert h.n_leaves == 3
    for g in range(3):
        assert len(np.unique(x[h.leaf_rows(g)], axis=0)) == 1
    # All rows identical: one of each.
    same = build_hierarchy(np.ones((50, 4)), leaf_size=10)
    assert (same.n_leaves, same.n_parents, same.n_nodes) == (1, 1, 1)


def test_one_dimensional_features():
    x = np.concatenate([np.arange(20.0), 100 + np.arange(20.0)])
    h = build_hierarchy(x, leaf_size=5, leaves_per_parent=4, parents_per_node=2)
    check_tree(h, 40)
    assert h.leaf_centroids.shape == (h.n_leaves, 1)
    parent_of_row = h.parent_of_leaf[h.leaf_of_row]
    assert not set(parent_of_row[:20]) & set(parent_of_row[20:])


def test_dict_round_trip(tmp_path):
    x, _ = blobs(n_blobs=3, per_blob=20)
    h = build_hierarchy(x, leaf_size=8)
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(h.to_dict()))
    back = Hierarchy.from_dict(json.loads(path.read_text()))
    assert back == h
    assert back.leaf_centroids.tobytes() == h.leaf_centroids.tobytes()
    assert back.leaf_rows(1).tolist() == h.leaf_rows(1).tolist()


def test_default_shape_rule():
    assert default_shape(1) == (10, 4, 4)
    assert default_shape(10_000) == (156, 4, 4)
    assert default_shape(1_000_000) == (200, 8, 8)
    for n in (1, 50, 640, 5_000, 64_000, 300_000):
        leaf_size, lpp, ppn = default_shape(n)
        assert 10 <= leaf_size <= 200 and 4 <= lpp <= 8 and 4 <= ppn <= 8


def test_bad_arguments():
    x = np.zeros((4, 2))
    with pytest.raises(ParameterError, match="leaf_size"):
        build_hierarchy(x, leaf_size=0)
    with pytest.raises(ParameterError, match="backend"):
        build_hierarchy(x, backend="annoy")
    with pytest.raises(ParameterError, match="NaN"):
        build_hierarchy(np.array([[np.nan, 0.0]]))
    with pytest.raises(ParameterError, match="empty"):
        build_hierarchy(np.zeros((0, 3)))
    with pytest.raises(ParameterError, match="n_rows"):
        default_shape(0)
    h = build_hierarchy(x)
    with pytest.raises(ParameterError, match="out of range"):
        h.leaf_rows(1)
    with pytest.raises(ParameterError, match="no members"):
        Hierarchy(
            leaf_of_row=np.array([0, 0]),
            parent_of_leaf=np.array([0, 0]),
            node_of_parent=np.array([0]),
            leaf_centroids=np.zeros((2, 1)),
            parent_centroids=np.zeros((1, 1)),
            representatives=np.array([0]),
        )


def test_faiss_backend_when_installed():
    pytest.importorskip("faiss")
    x, labels = blobs(n_blobs=4, per_blob=30)
    a = build_hierarchy(x, leaf_size=10, backend="faiss")
    b = build_hierarchy(x, leaf_size=10, backend="faiss")
    check_tree(a, len(x))
    assert a == b


def test_inputs_untouched():
    x = np.random.default_rng(1).normal(size=(60, 3)).astype(np.float32)
    before = x.copy()
    h = build_hierarchy(x, leaf_size=10)
    assert np.array_equal(x, before)
    # Built from the caller's arrays: the tree's copies are read-only, theirs are not.
    arrays = {
        k: np.asarray(getattr(h, k)).copy()
        for k in h.to_dict()
        if k != "schema_version"
    }
    again = Hierarchy(**arrays)
    assert again == h
    assert not again.leaf_of_row.flags.writeable
    assert all(a.flags.writeable for a in arrays.values())
