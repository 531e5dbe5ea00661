"""harp — select finetuning data for large language models.

``harp.select(pool, target, method=..., budget=...)`` returns a :class:`Selection`;
the selector classes in :mod:`harp.selectors` follow the scikit-learn contract
(``fit(pool, target)`` leaves the result in ``selection_``).

Heavy dependencies (torch, transformers, peft) are imported only where they are used,
so ``import harp`` and ``harp --help`` stay fast.
"""

from harp._version import __version__
from harp.api import select
from harp.data import Example, ExampleSet, load_examples
from harp.errors import DataError, HarpError, NotFittedError, ParameterError
from harp.selectors import Cost, Selection, available_methods, make_selector

__all__ = [
    "Cost",
    "DataError",
    "Example",
    "ExampleSet",
    "HarpError",
    "NotFittedError",
    "ParameterError",
    "Selection",
    "__version__",
    "available_methods",
    "load_examples",
    "make_selector",
    "select",
]
