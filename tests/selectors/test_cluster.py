"""ClusterSelector: k-means over embeddings, then balanced round-robin picks."""

from __future__ import annotations

import numpy as np
import pytest

from harp.core.errors import ParameterError
from harp.features import TextFeatures
from harp.selectors import ClusterSelector
from harp.selectors.cluster import allocate

FIVE = {"math": 20, "cooking": 20, "code": 20, "travel": 20, "sports": 20}


@pytest.fixture(scope="module")
def five_groups(make_pool):
    return make_pool(FIVE, seed=2)


def test_covers_every_cluster(five_groups, encoder):
    pool, labels = five_groups
    sel = ClusterSelector(
        budget=5, n_clusters=5, features=TextFeatures(encoder=encoder)
    ).fit(pool)
    assert sel.encoder_ == encoder
    assert sorted(labels[sel.ranking]) == sorted(FIVE)
    # The clusters found are the topics.
    for c in range(5):
        assert len(set(labels[sel.labels_ == c])) == 1


@pytest.mark.parametrize("budget", [5, 10, 13, 24, 99, 100])
def test_balanced_and_every_prefix_balanced(five_groups, budget):
    pool, labels = five_groups
    sel = ClusterSelector(
        budget=budget, n_clusters=5, features=TextFeatures(encoder="tfidf")
    ).fit(pool)
    picked = labels[sel.ranking]
    counts = [np.sum(picked == t) for t in FIVE]
    assert max(counts) - min(counts) <= 1
    for m in range(1, budget + 1):
        prefix = [np.sum(picked[:m] == t) for t in FIVE]
        assert max(prefix) - min(prefix) <= 1
    np.testing.assert_array_equal(
        sel.quotas_, np.bincount(sel.labels_[sel.ranking], minlength=5)
    )


def test_nearest_first_within_a_cluster(five_groups):
    pool, _ = five_groups
    sel = ClusterSelector(
        budget=20, n_clusters=5, features=TextFeatures(encoder="tfidf")
    ).fit(pool)
    dist = -sel.selection_.scores
    for c in range(5):
        members = np.flatnonzero(sel.labels_ == c)
        picks = [i for i in sel.ranking if sel.labels_[i] == c]
        order = members[np.lexsort((members, dist[members]))]
        assert picks == order[: len(picks)].tolist()


def test_within_random_is_seeded_and_balanced(five_groups):
    pool, labels = five_groups
    near = ClusterSelector(
        budget=10, n_clusters=5, features=TextFeatures(encoder="tfidf")
    ).select(pool)
    r1 = ClusterSelector(
        budget=10,
        n_clusters=5,
        features=TextFeatures(encoder="tfidf"),
        within="random",
        seed=1,
    ).select(pool)
    r2 = ClusterSelector(
        budget=10,
        n_clusters=5,
        features=TextFeatures(encoder="tfidf"),
        within="random",
        seed=2,
    ).select(pool)
    assert r1.indices.tolist() != near.indices.tolist()
    assert r1.indices.tolist() != r2.indices.tolist()
    for sel in (r1, r2):
        counts = [np.sum(labels[sel.indices] == t) for t in FIVE]
        assert counts == [2] * 5


def test_unequal_sizes_water_fill(make_pool):
    pool, labels = make_pool({"math": 2, "cooking": 10, "travel": 10}, seed=6)
    sel = ClusterSelector(
        budget=12, n_clusters=3, features=TextFeatures(encoder="tfidf")
    ).fit(pool)
    picked = labels[sel.ranking]
    assert [np.sum(picked == t) for t in ("math", "cooking", "travel")] == [2, 5, 5]
    assert sel.cluster_sizes_.tolist() == [10, 10, 2]  # numbered largest first
    # Round one visits all three clusters before any cluster gets a second pick.
    assert set(picked[:3]) == {"math", "cooking", "travel"}


def test_default_number_of_clusters(five_groups):
    pool, _ = five_groups
    assert (
        ClusterSelector(budget=30, features=TextFeatures(encoder="tfidf"))
        .fit(pool)
        .n_clusters_
        == 10
    )
    assert (
        ClusterSelector(budget=4, features=TextFeatures(encoder="tfidf"))
        .fit(pool)
        .n_clusters_
        == 4
    )
    assert (
        ClusterSelector(budget=1, features=TextFeatures(encoder="tfidf"))
        .fit(pool)
        .n_clusters_
        == 1
    )
    small = [{"prompt": f"row {i}", "response": "x"} for i in range(3)]
    assert (
        ClusterSelector(budget=2, n_clusters=50, features=TextFeatures(encoder="tfidf"))
        .fit(small)
        .n_clusters_
        == 3
    )  # never more clusters than rows


def test_target_weighted(five_groups, make_rows):
    pool, labels = five_groups
    target = make_rows("math", 6, seed=40) + make_rows("code", 2, seed=41)
    sel = ClusterSelector(
        budget=16,
        n_clusters=5,
        features=TextFeatures(encoder="tfidf"),
        target_weighted=True,
    ).fit(pool, target)
    picked = labels[sel.ranking]
    assert np.sum(picked == "math") == 12 and np.sum(picked == "code") == 4
    # Interleaved in proportion: any prefix of 4 has 3 math and 1 code.
    assert sorted(picked[:4]) == ["code", "math", "math", "math"]


def test_target_weighted_fills_the_budget_from_other_clusters(five_groups, make_rows):
    pool, labels = five_groups
    target = make_rows("math", 3, seed=40)
    sel = ClusterSelector(
        budget=30,
        n_clusters=5,
        features=TextFeatures(encoder="tfidf"),
        target_weighted=True,
    ).fit(pool, target)
    picked = labels[sel.ranking]
    assert len(picked) == 30 and np.sum(picked == "math") == 20
    others = [np.sum(picked == t) for t in FIVE if t != "math"]
    assert max(others) - min(others) <= 1


def test_target_ignored_unless_weighted(five_groups, make_rows):
    pool, _ = five_groups
    a = ClusterSelector(budget=7, features=TextFeatures(encoder="tfidf")).select(pool)
    b = ClusterSelector(budget=7, features=TextFeatures(encoder="tfidf")).select(
        pool, make_rows("math", 3)
    )
    np.testing.assert_array_equal(a.indices, b.indices)


def test_target_weighted_needs_a_target(five_groups):
    pool, _ = five_groups
    with pytest.raises(ParameterError, match="target_weighted=True needs a target"):
        ClusterSelector(
            budget=5, features=TextFeatures(encoder="tfidf"), target_weighted=True
        ).fit(pool)


def test_duplicate_rows_do_not_break_kmeans():
    rows = [{"prompt": "same", "response": "same"}] * 6
    sel = ClusterSelector(
        budget=4, n_clusters=3, features=TextFeatures(encoder="tfidf")
    ).select(rows)
    assert len(set(sel.indices.tolist())) == 4


def test_minibatch_path_is_deterministic(monkeypatch, five_groups):
    import harp.selectors.cluster as cluster

    monkeypatch.setattr(cluster, "MINIBATCH_THRESHOLD", 10)
    pool, labels = five_groups
    a = ClusterSelector(
        budget=10, n_clusters=5, features=TextFeatures(encoder="tfidf")
    ).select(pool)
    b = ClusterSelector(
        budget=10, n_clusters=5, features=TextFeatures(encoder="tfidf")
    ).select(pool)
    assert a == b
    assert sorted(set(labels[a.indices])) == sorted(FIVE)


@pytest.mark.parametrize(
    ("budget", "weights", "caps", "expected"),
    [
        (10, [1, 1, 1], [10, 10, 10], [4, 3, 3]),  # remainder to the lower index
        (10, [1, 1, 1], [1, 10, 10], [1, 5, 4]),
        (6, [3, 1, 0], [10, 10, 10], [5, 1, 0]),  # zero weight gets nothing
        (6, [3, 1, 0], [2, 10, 10], [2, 4, 0]),
        (50, [1, 1], [3, 4], [3, 4]),  # all rows taken, short of the budget
        (0, [1, 2], [5, 5], [0, 0]),
    ],
)
def test_allocate(budget, weights, caps, expected):
    got = allocate(budget, np.array(weights), np.array(caps))
    assert got.tolist() == expected
