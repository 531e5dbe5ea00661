"""DSIR: importance resampling with hashed n-gram features (Xie et al., 2023)."""

from __future__ import annotations

import itertools
import re
import zlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from harp.core.context import RunContext
from harp.core.records import ExampleSet
from harp.selectors.base import BaseSelector, Interval, SelectResult, ranked_order
from harp.selectors.registry import register

__all__ = ["DSIRSelector", "hashed_ngram_counts", "ngrams", "ngram_bucket"]

_WORD = re.compile(r"\w+")


def ngrams(text: str) -> list[str]:
    """Unigrams, then bigrams, of ``text``: lowercase ``\\w+`` words, space-joined.

    Examples
    --------
    >>> ngrams("Hello, World!")
    ['hello', 'world', 'hello world']
    """
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def ngram_bucket(gram: str, num_buckets: int) -> int:
    """Bucket of one n-gram: CRC-32 of its UTF-8 bytes modulo ``num_buckets``.

    CRC-32 is fixed across runs and platforms, unlike Python's salted ``hash()``.
    """
    return zlib.crc32(gram.encode("utf-8")) % num_buckets


def hashed_ngram_counts(texts: Sequence[str], num_buckets: int):
    """Bag of hashed unigrams and bigrams of each text.

    Returns
    -------
    scipy.sparse.csr_matrix of float64, shape (len(texts), num_buckets)
        ``X[i, b]`` counts the n-grams of text ``i`` that hash to bucket ``b`` (see
        :func:`ngrams` and :func:`ngram_bucket`).
    """
    import scipy.sparse as sp

    vocab: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    doc_ids = [
        np.array([vocab[w] for w in _WORD.findall(text.lower())], dtype=np.int64)
        for text in texts
    ]
    words_by_id = list(vocab)
    n_words = max(1, len(words_by_id))
    word_crc = [zlib.crc32(w.encode("utf-8")) for w in words_by_id]
    uni_bucket = np.array(word_crc, dtype=np.int64) % num_buckets
    lengths = np.array([len(d) for d in doc_ids], dtype=np.int64)
    tokens = np.concatenate(doc_ids) if doc_ids else np.zeros(0, np.int64)
    row_of_token = np.repeat(np.arange(len(texts)), lengths)
    # Bigrams: consecutive tokens of the same text, hashed once per distinct pair.
    same_doc = row_of_token[1:] == row_of_token[:-1]
    left, right = tokens[:-1][same_doc], tokens[1:][same_doc]
    bigram_rows = row_of_token[:-1][same_doc]
    unique_pairs, inverse = np.unique(left * n_words + right, return_inverse=True)
    # crc32(a + " " + b) continues the CRC of a with the bytes of " " + b.
    spaced = [(" " + w).encode("utf-8") for w in words_by_id]
    pair_bucket = (
        np.array(
            [
                zlib.crc32(spaced[r], word_crc[a])
                for a, r in zip(
                    (unique_pairs // n_words).tolist(),
                    (unique_pairs % n_words).tolist(),
                )
            ],
            dtype=np.int64,
        )
        % num_buckets
    )
    rows = np.concatenate([row_of_token, bigram_rows])
    cols = np.concatenate([uni_bucket[tokens], pair_bucket[inverse.reshape(-1)]])
    data = np.ones(len(rows), dtype=np.float64)
    out = sp.csr_matrix((data, (rows, cols)), shape=(len(texts), num_buckets))
    out.sum_duplicates()
    return out


@register
class DSIRSelector(BaseSelector):
    r"""Data Selection with Importance Resampling on hashed n-gram features.

    Each text becomes a bag of hashed unigrams and bigrams. Two smoothed categorical
    distributions over the buckets are fitted, one on the target and one on the raw
    pool; a pool row's log importance weight is the log-likelihood ratio of its n-grams
    under the two. ``budget`` rows are then drawn without replacement with probability
    proportional to the weights (Gumbel-top-k), or the top-weighted rows are taken.

    Parameters
    ----------
    budget : int, float or str, default="10%"
        Rows to select: a count, a fraction of the pool, or a percentage string.
    seed : int or None, default=0
        Seed of the Gumbel noise (unused with ``gumbel=False``).
    num_buckets : int, default=10_000
        Hash buckets of the n-gram features (at most 2**24).
    smoothing : float, default=1.0
        Pseudo-count added to every bucket of both distributions (additive smoothing).
    gumbel : bool, default=True
        Sample by Gumbel-top-k (importance resampling without replacement, as in DSIR);
        ``False`` takes the ``budget`` largest weights (deterministic top-k).
    context : RunContext or None, default=None
        Run settings (the n-gram models run on the CPU).

    Attributes
    ----------
    selection_ : Selection
        The picks in order of perturbed (``gumbel=True``) or plain log weight;
        ``scores`` are every pool row's log importance weight, ``gains`` are NaN.
    log_ratio_ : ndarray of float64, shape (num_buckets,)
        :math:`\log p_\text{target} - \log p_\text{raw}` per bucket.

    Notes
    -----
    With bucket counts :math:`c_{ij}` of row :math:`i`, target and pool bucket totals
    :math:`T_j`, :math:`R_j` and smoothing :math:`\alpha` over :math:`B` buckets,

    .. math::

        p^\text{target}_j = \frac{T_j + \alpha}{\sum_k T_k + \alpha B},\qquad
        \log w_i = \sum_j c_{ij}\,(\log p^\text{target}_j - \log p^\text{raw}_j).

    Gumbel-top-k: with :math:`g_i` i.i.d. standard Gumbel, the ``budget`` largest
    :math:`\log w_i + g_i` are a sample without replacement from
    :math:`\propto w_i` (Kool et al., 2019). Ties break by row index. Text is lowercased
    and split on ``\w+``; n-grams hash by CRC-32. Cost: linear in the number of tokens.

    The reference implementation adds :math:`10^{-8}` to the probabilities instead of
    a pseudo-count; with the small target sets of finetuning that floor makes every
    n-gram absent from the target cost about 18 nats, so harp smooths with a count
    (``smoothing`` close to 0 comes near the reference). Weights are not normalised by
    length: a row's weight sums over its n-grams, as in the paper.

    References
    ----------
    .. [1] Xie, Santurkar, Ma and Liang, "Data Selection for Language Models via
       Importance Resampling", arXiv:2302.03169 (2023).
    .. [2] Kool, van Hoof and Welling, "Stochastic Beams and Where to Find Them: The
       Gumbel-Top-k Trick", arXiv:1903.06059 (2019).

    Examples
    --------
    >>> from harp.selectors import DSIRSelector
    >>> pool = [{"prompt": "solve 2 + 2", "response": "4"},
    ...         {"prompt": "a haiku on snow", "response": "white hush"},
    ...         {"prompt": "solve 3 + 5", "response": "8"}]
    >>> target = [{"prompt": "solve 1 + 1", "response": "2"}]
    >>> sel = DSIRSelector(budget=2, gumbel=False).select(pool, target)
    >>> sorted(sel.indices.tolist())
    [0, 2]
    """

    name = "dsir"
    needs_target = True
    _parameter_constraints = {
        "budget": ["budget"],
        "seed": ["seed"],
        "num_buckets": [Interval(int, 1, 2**24)],
        "smoothing": [Interval(float, 0, None, closed="neither")],
        "gumbel": ["boolean"],
        "context": [None, RunContext],
    }

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        num_buckets: int = 10_000,
        smoothing: float = 1.0,
        gumbel: bool = True,
        context: RunContext | None = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.num_buckets = num_buckets
        self.smoothing = smoothing
        self.gumbel = gumbel
        self.context = context

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        rng = context.rng()
        assert target is not None  # checked by BaseSelector.fit (needs_target)
        b = int(self.num_buckets)
        alpha = float(self.smoothing)
        pool_counts = hashed_ngram_counts(pool.texts, b)
        target_counts = hashed_ngram_counts(target.texts, b)
        totals_raw = np.asarray(pool_counts.sum(axis=0)).ravel()
        totals_target = np.asarray(target_counts.sum(axis=0)).ravel()
        log_p_raw = np.log(totals_raw + alpha) - np.log(totals_raw.sum() + alpha * b)
        log_p_target = np.log(totals_target + alpha) - np.log(
            totals_target.sum() + alpha * b
        )
        self.log_ratio_ = log_p_target - log_p_raw
        scores = np.asarray(pool_counts @ self.log_ratio_, dtype=np.float64).ravel()
        if self.gumbel:
            keys = scores + rng.gumbel(size=len(scores))
        else:
            keys = scores
        order = ranked_order(keys)[:budget]
        cost = {"rows_scored": len(pool) + len(target), "device": "cpu"}
        return order, scores, None, cost
