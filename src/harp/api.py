"""The one-call Python API."""

from __future__ import annotations

from typing import Any

from harp.core.context import RunContext
from harp.core.selection import Selection
from harp.selectors.registry import make_selector

__all__ = ["select"]


def select(
    pool: Any,
    target: Any = None,
    *,
    method: str = "random",
    budget: int | float | str = "10%",
    seed: int | None = 0,
    context: RunContext | None = None,
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
        Seed; the same inputs and seed give the same selection. None draws fresh
        entropy, recorded in the result's ``seed``.
    context : RunContext or None, default=None
        Device (``"auto"``, ``"cpu"``, ``"cuda"``), dtype, cache folder, progress
        display and executor of the run; it never changes the result's fingerprint.
    **params
        The method's other hyper-parameters; a component's may be nested
        (``features__dim=1024``) or bare when unambiguous (``dim=1024``).

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
    selector = make_selector(
        method, budget=budget, seed=seed, context=context, **params
    )
    return selector.select(pool, target)
