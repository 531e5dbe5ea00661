"""Uniform random selection: the baseline every method must beat."""

from __future__ import annotations

import numpy as np

from harp.data._records import ExampleSet
from harp.selectors._base import BaseSelector
from harp.selectors._registry import register

__all__ = ["RandomSelector"]


@register
class RandomSelector(BaseSelector):
    """Pick ``budget`` pool rows uniformly at random, without replacement.

    Parameters
    ----------
    budget : int, float or str, default="10%"
        Rows to select: a count, a fraction of the pool, or a percentage string.
    seed : int or None, default=0
        Seed of the permutation; the same seed gives the same rows in the same order.

    Attributes
    ----------
    selection_ : Selection
        The picks in random order; ``scores`` and ``gains`` are NaN (no score is used).

    Examples
    --------
    >>> from harp.selectors import RandomSelector
    >>> pool = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(10)]
    >>> RandomSelector(budget=3, seed=0).fit(pool).selection_.indices.tolist()
    [4, 6, 2]
    """

    name = "random"
    _parameter_constraints = {"budget": ["budget"], "seed": ["seed"]}

    def __init__(
        self, *, budget: int | float | str = "10%", seed: int | None = 0
    ) -> None:
        self.budget = budget
        self.seed = seed

    def _select(self, pool: ExampleSet, target, budget: int, rng: np.random.Generator):
        order = rng.permutation(len(pool))[:budget]
        return order, None, None, {"rows_scored": 0}
