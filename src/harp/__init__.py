"""harp — select finetuning data for large language models.

``harp.select(pool, target, method=..., budget=...)`` returns a :class:`Selection`;
the selector classes in :mod:`harp.selectors` follow the scikit-learn contract
(``fit(pool, target)`` leaves the result in ``selection_``). A :class:`RunContext`
says where the work runs (device, dtype), where it caches, and whether it shows
progress.

Heavy dependencies (torch, transformers, peft) are imported only where they are used,
so ``import harp`` and ``harp --help`` stay fast.
"""

from harp._version import __version__
from harp.api import select
from harp.core.context import RunContext
from harp.core.errors import (
    DataError,
    HarpError,
    ModelError,
    NotFittedError,
    NumericalError,
    ParameterError,
)
from harp.core.records import Example, ExampleSet
from harp.core.selection import Cost, Selection
from harp.data import load_examples
from harp.selectors import available_methods, make_selector

__all__ = [
    "Cost",
    "DataError",
    "Example",
    "ExampleSet",
    "HarpError",
    "ModelError",
    "NotFittedError",
    "NumericalError",
    "ParameterError",
    "RunContext",
    "Selection",
    "__version__",
    "available_methods",
    "load_examples",
    "make_selector",
    "select",
]
