"""SimilaritySelector: cosine similarity of embeddings to the target's domains."""

from __future__ import annotations

import numpy as np
import pytest

from harp.data import ExampleSet
from harp.features import TextFeatures, TextFeaturizer
from harp.selectors import SimilaritySelector, ranked_order


@pytest.fixture(scope="module")
def two_topics(make_pool, make_rows):
    pool, labels = make_pool({"math": 40, "cooking": 40}, seed=1)
    target = ExampleSet.from_records(make_rows("math", 6, seed=77))
    return pool, labels, target


def test_picks_target_topic(two_topics, encoder):
    pool, labels, target = two_topics
    sel = SimilaritySelector(budget=20, features=TextFeatures(encoder=encoder)).fit(
        pool, target
    )
    assert sel.encoder_ == encoder
    assert np.mean(labels[sel.ranking] == "math") >= 0.9
    # Every math row outscores every cooking row.
    scores = sel.selection_.scores
    assert scores[labels == "math"].min() > scores[labels == "cooking"].max()


def test_scores_are_cosines_to_domain_centroids(two_topics):
    encoder = "tfidf"  # the arithmetic does not depend on the encoder
    pool, labels, _ = two_topics
    target = pool.subset(range(5))  # any rows; give them two domains
    target = ExampleSet.from_records(
        [
            {"prompt": e.prompt, "response": e.response, "domain": "ab"[i % 2]}
            for i, e in enumerate(target)
        ]
    )
    sel = SimilaritySelector(budget=10, features=TextFeatures(encoder=encoder)).fit(
        pool, target
    )
    p, t = TextFeaturizer(encoder=encoder).embed_sets(pool.texts, target.texts)
    centroids = []
    for idx in target.by_domain().values():
        c = t[idx].astype(np.float64).mean(axis=0)
        centroids.append(c / np.linalg.norm(c))
    sims = p.astype(np.float64) @ np.array(centroids).T
    assert sel.domains_ == ["a", "b"]
    np.testing.assert_allclose(sel.domain_similarity_, sims, atol=1e-6)
    np.testing.assert_allclose(sel.selection_.scores, sims.max(axis=1), atol=1e-6)
    np.testing.assert_array_equal(sel.ranking, ranked_order(sel.selection_.scores)[:10])
    mean = SimilaritySelector(
        budget=10, features=TextFeatures(encoder=encoder), aggregate="mean"
    ).select(pool, target)
    np.testing.assert_allclose(mean.scores, sims.mean(axis=1), atol=1e-6)


def test_small_domain_is_not_drowned(make_pool, make_rows):
    pool, labels = make_pool({"math": 40, "cooking": 40, "travel": 40}, seed=5)
    # 30 math target rows, 2 travel rows: one global centroid would favour math only.
    target = make_rows("math", 30, seed=61, domain="math") + make_rows(
        "travel", 2, seed=62, domain="travel"
    )
    sel = SimilaritySelector(budget=40, features=TextFeatures(encoder="tfidf")).select(
        pool, target
    )
    picked = labels[sel.indices]
    assert np.sum(picked == "travel") >= 10 and np.sum(picked == "math") >= 10
    assert np.sum(picked == "cooking") == 0


def test_seed_does_not_change_the_ranking(two_topics):
    pool, _, target = two_topics
    a = SimilaritySelector(
        budget=12, features=TextFeatures(encoder="tfidf"), seed=0
    ).select(pool, target)
    b = SimilaritySelector(
        budget=12, features=TextFeatures(encoder="tfidf"), seed=5
    ).select(pool, target)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_identical_rows_tie_by_index():
    rows = [{"prompt": "same text", "response": "same"}] * 4 + [
        {"prompt": "other words here", "response": "no"}
    ]
    sel = SimilaritySelector(budget=3, features=TextFeatures(encoder="tfidf")).select(
        rows, [{"prompt": "same text", "response": "same"}]
    )
    assert sel.indices.tolist() == [0, 1, 2]


def test_cost_and_gains(two_topics):
    pool, _, target = two_topics
    sel = SimilaritySelector(budget=5, features=TextFeatures(encoder="tfidf")).select(
        pool, target
    )
    assert sel.cost.rows_scored == len(pool) + len(target)
    assert np.isnan(sel.gains).all()
    assert sel.cost.wall_seconds > 0


def test_a_second_selection_reads_the_pools_embeddings_from_the_cache(
    tmp_path, monkeypatch
):
    """similarity then cluster on one pool: the sentence encoder runs once."""
    from harp.core.context import RunContext
    from harp.features import text as text_module
    from harp.features.text import minilm_available
    from harp.selectors import make_selector

    if not minilm_available():
        pytest.skip("the MiniLM encoder is not installed")
    pool = [
        {"prompt": f"Add {i} and {i + 1}.", "response": str(2 * i + 1)}
        for i in range(30)
    ]
    target = [{"prompt": "Add 2 and 5.", "response": "7"}]
    context = RunContext(device="cpu", cache_dir=tmp_path)
    first = make_selector("similarity", budget=5, context=context).fit(pool, target)
    text_module._EMBED_MEMO.clear()  # a new process: nothing remembered in memory
    calls = []
    real = text_module._embed_minilm_uncached

    def counting(texts, **kwargs):
        calls.append(len(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(text_module, "_embed_minilm_uncached", counting)
    again = make_selector("similarity", budget=5, context=context).fit(pool, target)
    make_selector("cluster", budget=5, context=context).fit(pool, target)
    assert calls == []
    assert list(again.selection_.indices) == list(first.selection_.indices)


def test_embeddings_of_another_precision_are_not_read_from_the_cache(
    tmp_path, monkeypatch
):
    """A store embedded in fp32 does not stand in for bf16, nor the other way."""
    from harp.core.context import RunContext
    from harp.features import text as text_module
    from harp.features.text import minilm_available
    from harp.selectors import make_selector

    if not minilm_available():
        pytest.skip("the MiniLM encoder is not installed")
    pool = [{"prompt": f"Name {i}.", "response": f"n{i}"} for i in range(12)]
    target = [{"prompt": "Name 3.", "response": "n3"}]
    precisions = []
    real = text_module._embed_minilm_uncached

    def recording(texts, **kwargs):
        precisions.append(kwargs["precision"])
        return real(texts, **kwargs)

    monkeypatch.setattr(text_module, "_embed_minilm_uncached", recording)
    for dtype in ("fp32", "bf16", "fp32"):
        context = RunContext(device="cpu", dtype=dtype, cache_dir=tmp_path)
        make_selector("similarity", budget=3, context=context).fit(pool, target)
    # fp32 and bf16 each embed once (pool, target, and the store's width probe);
    # the second fp32 run reads everything from its own store and memo.
    assert set(precisions) == {"fp32", "bf16"}
    assert precisions.index("bf16") > 0
    assert precisions[precisions.index("bf16") :].count("fp32") == 0
