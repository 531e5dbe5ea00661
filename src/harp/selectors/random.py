"""Uniform random selection: the baseline every method must beat."""

from __future__ import annotations

from harp.core.context import RunContext
from harp.core.records import ExampleSet
from harp.selectors.base import BaseSelector, SelectResult
from harp.selectors.registry import register

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
    context : RunContext or None, default=None
        Run settings (unused: a permutation needs no device).

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
    _parameter_constraints = {
        "budget": ["budget"],
        "seed": ["seed"],
        "context": [None, RunContext],
    }

    def __init__(
        self,
        *,
        budget: int | float | str = "10%",
        seed: int | None = 0,
        context: RunContext | None = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.context = context

    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        context: RunContext,
    ) -> SelectResult:
        order = context.rng().permutation(len(pool))[:budget]
        return order, None, None, {"rows_scored": 0}
