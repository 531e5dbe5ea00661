"""core: the contracts every stage shares.

Records (:class:`Example`, :class:`ExampleSet`), the result type
(:class:`Selection`, :class:`Cost`), amounts (budgets, evaluation counts), the
parameter protocol and constraints, the run context (device, dtype, seeds, cache,
progress, executor), fingerprints, atomic files and cache entries, the progress bar
and harp's exceptions. Nothing here imports torch at import time, and nothing here
imports another harp package.
"""

from harp.core.amount import Budget, parse_budget, resolve_budget, resolve_evals
from harp.core.artifact import JsonCache
from harp.core.context import DEVICES, DTYPES, STREAMS, RunContext, resolve_seed
from harp.core.errors import (
    DataError,
    HarpError,
    ModelError,
    NotFittedError,
    NumericalError,
    ParameterError,
)
from harp.core.hashing import fingerprint, sha256_hex, stable_json
from harp.core.io import (
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    check_output_path,
)
from harp.core.params import Interval, Options, Parametrized, validate_params
from harp.core.progress import ProgressBar
from harp.core.records import DEFAULT_DOMAIN, Example, ExampleSet, content_id
from harp.core.selection import Cost, Selection

__all__ = [
    "Budget",
    "Cost",
    "DEFAULT_DOMAIN",
    "DEVICES",
    "DTYPES",
    "DataError",
    "Example",
    "ExampleSet",
    "HarpError",
    "Interval",
    "JsonCache",
    "ModelError",
    "NotFittedError",
    "NumericalError",
    "Options",
    "ParameterError",
    "Parametrized",
    "ProgressBar",
    "RunContext",
    "STREAMS",
    "Selection",
    "atomic_open",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_path",
    "content_id",
    "fingerprint",
    "parse_budget",
    "resolve_budget",
    "resolve_evals",
    "resolve_seed",
    "sha256_hex",
    "stable_json",
    "validate_params",
]
