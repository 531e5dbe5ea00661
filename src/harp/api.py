"""The one-call Python API."""

from __future__ import annotations

from typing import Any

from harp.selectors import Selection, make_selector

__all__ = ["select"]


def select(
    pool: Any,
    target: Any = None,
    *,
    method: str = "random",
    budget: int | float | str = "10%",
    seed: int | None = 0,
    **params: Any,
) -> Selection:
    """Select a subset of ``pool`` for finetuning towards ``target``.

    Parameters
    ----------
    pool : ExampleSet, path or list of dict
        Candidate training rows (see :func:`harp.load_examples` for the formats).
    target : ExampleSet, path or list of dict, optional
        Examples of the task(s) to be good at; rows may carry a ``domain``.
    method : str, default="random"
        A registered method name (``harp.available_methods()``).
    budget : int, float or str, default="10%"
        Rows to select: a count, a fraction of the pool or a percentage string.
    seed : int or None, default=0
        Seed; the same inputs and seed give the same selection.
    **params
        The method's other hyper-parameters.

    Returns
    -------
    Selection
        Indices in pick order, ids, scores, gains and cost.

    Examples
    --------
    >>> import harp
    >>> pool = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(20)]
    >>> sel = harp.select(pool, method="random", budget="10%", seed=0)
    >>> len(sel), sel.method
    (2, 'random')
    """
    selector = make_selector(method, budget=budget, seed=seed, **params)
    return selector.select(pool, target)
