"""DSIRSelector: hashed n-gram importance resampling (Xie et al., 2023)."""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter

import numpy as np
import pytest

from harp.data import ExampleSet
from harp.selectors import DSIRSelector
from harp.selectors.dsir import hashed_ngram_counts, ngram_bucket, ngrams


def brute_counts(text: str, num_buckets: int) -> Counter:
    """Reference featuriser written straight from the definition."""
    words = re.findall(r"\w+", text.lower())
    grams = words + [words[i] + " " + words[i + 1] for i in range(len(words) - 1)]
    return Counter(zlib.crc32(g.encode("utf-8")) % num_buckets for g in grams)


def brute_log_weights(pool_texts, target_texts, num_buckets, alpha):
    """log w_i = sum_j c_ij (log p_target_j - log p_raw_j), additive smoothing alpha."""

    def model(texts):
        total = Counter()
        for t in texts:
            total.update(brute_counts(t, num_buckets))
        n = sum(total.values())
        return [
            math.log((total[j] + alpha) / (n + alpha * num_buckets))
            for j in range(num_buckets)
        ]

    lt, lr = model(target_texts), model(pool_texts)
    return [
        sum(c * (lt[j] - lr[j]) for j, c in brute_counts(t, num_buckets).items())
        for t in pool_texts
    ]


GOLDEN_POOL = [
    {"prompt": "Add 2 and 3.", "response": "2 plus 3 is 5."},
    {"prompt": "Bake bread at 200 degrees.", "response": "Bread bakes in an hour."},
    {"prompt": "Add 10 and 7.", "response": "10 plus 7 is 17."},
    {"prompt": "What is the capital of France?", "response": "Paris."},
    {"prompt": "Subtract 4 from 9.", "response": "9 minus 4 is 5."},
    {"prompt": "Write a haiku.", "response": "Snow falls, the pond sleeps."},
    {"prompt": "Add 1 and 1.", "response": "1 plus 1 is 2."},
    {"prompt": "Bake a cake.", "response": "Mix, pour, and bake it."},
]
GOLDEN_TARGET = [
    {"prompt": "Add 6 and 2.", "response": "6 plus 2 is 8."},
    {"prompt": "Add 3 and 4.", "response": "3 plus 4 is 7."},
]


def texts(rows):
    return [f"{r['prompt']}\n{r['response']}" for r in rows]


def test_ngrams_and_bucket():
    assert ngrams("Add 2, add 3!") == [
        "add",
        "2",
        "add",
        "3",
        "add 2",
        "2 add",
        "add 3",
    ]
    assert ngrams("") == []
    assert ngram_bucket("add 2", 97) == zlib.crc32(b"add 2") % 97
    assert 0 <= ngram_bucket("anything", 10) < 10


@pytest.mark.parametrize("num_buckets", [7, 50, 10_000])
def test_counts_match_brute_force(num_buckets):
    extra = ["Café naïve — 東京 tower tower", "", "!!!", "one"]
    docs = texts(GOLDEN_POOL) + extra
    x = hashed_ngram_counts(docs, num_buckets)
    assert x.shape == (len(docs), num_buckets)
    for i, doc in enumerate(docs):
        expected = np.zeros(num_buckets)
        for j, c in brute_counts(doc, num_buckets).items():
            expected[j] = c
        np.testing.assert_array_equal(x[i].toarray().ravel(), expected)


def test_counts_do_not_cross_rows():
    # The last word of one text and the first of the next do not form a bigram.
    x = hashed_ngram_counts(["alpha", "beta"], 1000)
    assert x.sum() == 2  # two unigrams, no "alpha beta"


@pytest.mark.parametrize(("num_buckets", "alpha"), [(10_000, 1.0), (64, 0.5)])
def test_golden_scores_and_ranking(num_buckets, alpha):
    sel = DSIRSelector(
        budget=5, gumbel=False, num_buckets=num_buckets, smoothing=alpha
    ).select(GOLDEN_POOL, GOLDEN_TARGET)
    expected = brute_log_weights(
        texts(GOLDEN_POOL), texts(GOLDEN_TARGET), num_buckets, alpha
    )
    np.testing.assert_allclose(sel.scores, expected, rtol=1e-10, atol=1e-10)
    golden = sorted(range(len(expected)), key=lambda i: (-expected[i], i))[:5]
    assert sel.indices.tolist() == golden
    # The addition sharing the most n-grams with the target ranks first.
    assert golden[0] == 0


def test_golden_ranking_pinned():
    # Pinned so that a change of tokeniser, hash or smoothing shows up here.
    sel = DSIRSelector(budget=8, gumbel=False).select(GOLDEN_POOL, GOLDEN_TARGET)
    assert sel.indices.tolist() == [0, 3, 2, 5, 4, 7, 6, 1]
    # DSIR weights are sums over n-grams, so short off-topic rows (3: "capital of
    # France") can beat long on-topic rows full of n-grams the target lacks (6).


def test_gumbel_false_ignores_seed():
    a = DSIRSelector(budget=4, gumbel=False, seed=0).select(GOLDEN_POOL, GOLDEN_TARGET)
    b = DSIRSelector(budget=4, gumbel=False, seed=9).select(GOLDEN_POOL, GOLDEN_TARGET)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_log_ratio_attribute():
    sel = DSIRSelector(budget=2, num_buckets=128).fit(GOLDEN_POOL, GOLDEN_TARGET)
    assert sel.log_ratio_.shape == (128,)
    x = hashed_ngram_counts(texts(GOLDEN_POOL), 128)
    np.testing.assert_allclose(x @ sel.log_ratio_, sel.selection_.scores)


@pytest.fixture(scope="module")
def topical(make_pool, make_rows):
    pool, labels = make_pool(
        {"math": 30, "cooking": 90, "code": 90, "travel": 90}, seed=4
    )
    target = make_rows("math", 8, seed=77)
    return pool, labels, target


def test_picks_target_like_rows(topical):
    pool, labels, target = topical
    base_rate = np.mean(labels == "math")
    assert base_rate == pytest.approx(0.1)
    for gumbel in (False, True):
        sel = DSIRSelector(budget=30, gumbel=gumbel).select(pool, target)
        share = np.mean(labels[sel.indices] == "math")
        assert share >= 0.9, (gumbel, share)
        # Scores separate the topics: every math row outscores every other row.
        assert sel.scores[labels == "math"].min() > sel.scores[labels != "math"].max()


def test_gumbel_seeds_differ_but_stay_on_target(make_pool, make_rows):
    # Short, similar texts give close weights, so the Gumbel noise matters.
    pool, labels = make_pool({"math": 60, "cooking": 60}, seed=8)
    target = make_rows("math", 5, seed=5)
    a = DSIRSelector(budget=15, seed=1).select(pool, target)
    b = DSIRSelector(budget=15, seed=2).select(pool, target)
    assert a.indices.tolist() != b.indices.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)  # weights do not depend on seed
    for sel in (a, b):
        assert np.mean(labels[sel.indices] == "math") >= 0.9


def test_gumbel_first_pick_follows_importance_weights():
    # Gumbel-max: the first pick is row i with probability w_i / sum(w).
    pool = [
        {"prompt": "add numbers", "response": "sum"},
        {"prompt": "add numbers now", "response": "total"},
        {"prompt": "bake bread", "response": "oven"},
    ]
    target = [{"prompt": "add numbers", "response": "sum total"}]
    trials = 600
    first = Counter()
    scores = None
    for seed in range(trials):
        sel = DSIRSelector(budget=1, seed=seed, num_buckets=64).select(pool, target)
        first[int(sel.indices[0])] += 1
        scores = sel.scores
    p = np.exp(scores - scores.max())
    p /= p.sum()
    freq = np.array([first[i] for i in range(3)]) / trials
    sd = np.sqrt(p * (1 - p) / trials)
    assert np.all(np.abs(freq - p) <= 4 * sd + 1e-3), (freq, p)


def test_accepts_example_sets_and_duplicates():
    rows = GOLDEN_POOL + GOLDEN_POOL[:2]  # exact repeats get distinct ids
    pool = ExampleSet.from_records(rows)
    sel = DSIRSelector(budget=len(rows), gumbel=False).select(pool, GOLDEN_TARGET)
    assert sorted(sel.indices.tolist()) == list(range(len(rows)))
    assert sel.scores[0] == sel.scores[len(GOLDEN_POOL)]


def test_cost_recorded():
    sel = DSIRSelector(budget=2).select(GOLDEN_POOL, GOLDEN_TARGET)
    assert sel.cost.rows_scored == len(GOLDEN_POOL) + len(GOLDEN_TARGET)
    assert np.isnan(sel.gains).all()
