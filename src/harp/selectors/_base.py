"""The selector contract shared by every method (scikit-learn / apricot discipline).

A selector's ``__init__`` takes keyword-only hyper-parameters and only stores them;
``fit(pool, target)`` checks them against the class's ``_parameter_constraints`` table,
does the work, and leaves a :class:`~harp.selectors.Selection` in ``selection_``.
"""

from __future__ import annotations

import inspect
import logging
import numbers
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from harp._utils.hashing import fingerprint
from harp.data._records import ExampleSet, as_example_set
from harp.errors import NotFittedError, ParameterError
from harp.selectors._budget import parse_budget, resolve_budget
from harp.selectors._selection import Cost, Selection

__all__ = [
    "BaseSelector",
    "Interval",
    "Options",
    "check_is_fitted",
    "ranked_order",
    "validate_params",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interval:
    """Constraint: a number of ``kind`` (int or float) between ``low`` and ``high``."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if self.kind is float and not isinstance(value, numbers.Real):
            return False
        lo_ok = self.low is None or (
            value >= self.low if self.closed in ("both", "left") else value > self.low
        )
        hi_ok = self.high is None or (
            value <= self.high
            if self.closed in ("both", "right")
            else value < self.high
        )
        return bool(lo_ok and hi_ok)

    def __str__(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        lo = "-inf" if self.low is None else self.low
        hi = "inf" if self.high is None else self.high
        return f"{self.kind.__name__} in {left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class Options:
    """Constraint: one of a fixed set of values."""

    values: frozenset

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", frozenset(values))

    def accepts(self, value: Any) -> bool:
        try:
            return value in self.values
        except TypeError:
            return False

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in sorted(self.values, key=str))


def _accepts(constraint: Any, value: Any) -> bool:
    if constraint is None:
        return value is None
    if constraint == "budget":
        try:
            parse_budget(value)
            return True
        except ParameterError:
            return False
    if constraint == "seed":
        return value is None or (
            isinstance(value, numbers.Integral)
            and not isinstance(value, bool)
            and value >= 0
        )
    if constraint == "boolean":
        return isinstance(value, (bool, np.bool_))
    if isinstance(constraint, type):
        return isinstance(value, constraint) and not (
            constraint is not bool and isinstance(value, bool)
        )
    return constraint.accepts(value)


def _describe(constraint: Any) -> str:
    if constraint is None:
        return "None"
    if constraint == "budget":
        return 'a budget (rows, fraction in (0, 1], or "10%")'
    if constraint == "seed":
        return "None or a non-negative int"
    if constraint == "boolean":
        return "a bool"
    if isinstance(constraint, type):
        return f"a {constraint.__name__}"
    return str(constraint)


def validate_params(owner: str, params: dict[str, Any], table: dict[str, list]) -> None:
    """Check ``params`` against a constraint table; errors name param and choices."""
    for name, constraints in table.items():
        value = params[name]
        if not any(_accepts(c, value) for c in constraints):
            if constraints == ["budget"]:
                try:
                    parse_budget(value)  # its message says what exactly is wrong
                except ParameterError as exc:
                    raise ParameterError(f"{owner}: {exc}") from None
            allowed = " or ".join(_describe(c) for c in constraints)
            raise ParameterError(
                f"{owner}: {name}={value!r} is not allowed; expected {allowed}"
            )


def ranked_order(scores: np.ndarray) -> np.ndarray:
    """Indices by score descending, ties by index ascending (stable, deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    # lexsort sorts by the last key first; -scores for descending order, NaN last.
    key = np.where(np.isnan(scores), np.inf, -scores)
    return np.lexsort((np.arange(len(scores)), key))


def check_is_fitted(selector: "BaseSelector") -> None:
    """Raise :class:`NotFittedError` if ``selector`` has not been fitted."""
    if not hasattr(selector, "selection_"):
        raise NotFittedError(
            f"This {type(selector).__name__} is not fitted yet; "
            "call fit(pool, target) first"
        )


class BaseSelector(ABC):
    """Base class of every selector.

    Subclasses set ``name`` (the registry / CLI name), ``_parameter_constraints`` and
    implement :meth:`_select`, which returns the picks, per-row scores and per-pick
    gains. The base class validates parameters, resolves the budget, seeds the
    generator, times the work and builds the :class:`Selection`.
    """

    name: ClassVar[str] = "base"
    #: Whether ``fit`` needs a target set.
    needs_target: ClassVar[bool] = False
    #: Whether the method runs a language model (gradients, finetuning); the demo's
    #: default method list leaves these out.
    uses_model: ClassVar[bool] = False
    #: Whether a fit always selects exactly ``budget`` rows (HARP's best-prefix rule
    #: and early stops select fewer on purpose).
    fills_budget: ClassVar[bool] = True
    #: Parameters that say how the work runs (progress bars, an executor), not what
    #: it computes: kept out of the Selection's params and fingerprint.
    _execution_params: ClassVar[tuple[str, ...]] = ("progress",)
    _parameter_constraints: ClassVar[dict[str, list]] = {}

    # -- scikit-learn parameter protocol ----------------------------------------------
    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters as given to the constructor."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> "BaseSelector":
        """Set hyper-parameters; unknown names are an error. Returns self."""
        valid = set(self._get_param_names())
        for key, value in params.items():
            if key not in valid:
                raise ParameterError(
                    f"{type(self).__name__} has no parameter {key!r}; "
                    f"valid parameters: {', '.join(sorted(valid))}"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _non_default_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        out = {}
        for name, value in self.get_params().items():
            default = sig.parameters[name].default
            if name in ("seed", "budget", *self._execution_params):
                continue
            if default is inspect.Parameter.empty or value != default:
                out[name] = value
        return out

    # -- the work ----------------------------------------------------------------------
    def fit(self, pool: Any, target: Any = None) -> "BaseSelector":
        """Select rows of ``pool`` (for ``target`` when the method uses one).

        Parameters
        ----------
        pool : ExampleSet, path or list of dict
            The candidate rows.
        target : ExampleSet, path or list of dict, optional
            Examples of the task the finetuned model should be good at.

        Returns
        -------
        self
            With the result in ``selection_``.
        """
        # A failed refit must not leave the previous fit's results readable.
        fitted = [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]
        for name in fitted:
            delattr(self, name)
        validate_params(
            type(self).__name__, self.get_params(), self._parameter_constraints
        )
        pool = as_example_set(pool)
        target = None if target is None else as_example_set(target)
        if self.needs_target and (target is None or len(target) == 0):
            raise ParameterError(
                f"method {self.name!r} needs a target set with at least one row; "
                "pass target=... (--target on the command line)"
            )
        budget = resolve_budget(self.budget, len(pool))
        rng = np.random.default_rng(self.seed)
        start = time.perf_counter()
        indices, scores, gains, cost = self._select(pool, target, budget, rng)
        elapsed = time.perf_counter() - start
        indices = np.asarray(indices, dtype=np.int64)[:budget]
        gains = (
            np.full(len(indices), np.nan)
            if gains is None
            else np.asarray(gains)[: len(indices)]
        )
        scores = np.full(len(pool), np.nan) if scores is None else np.asarray(scores)
        cost = Cost(**{**(cost or {}), "wall_seconds": elapsed})
        content = pool.content_hash() + (
            "" if target is None else target.content_hash()
        )
        fp = fingerprint(
            self.name,
            content=content,
            params=self._non_default_params(),
            seed=self.seed,
        )
        self.selection_ = Selection(
            indices=indices,
            ids=tuple(pool.examples[i].id for i in indices),
            scores=scores,
            gains=gains,
            budget=budget,
            n_pool=len(pool),
            method=self.name,
            # How the work ran is not part of the result.
            params={
                k: v
                for k, v in self.get_params().items()
                if k not in self._execution_params
            },
            seed=self.seed,
            cost=cost,
            fingerprint=fp,
        )
        log.info(
            "%s selected %d of %d rows in %.2fs",
            self.name,
            len(indices),
            len(pool),
            elapsed,
        )
        return self

    def select(self, pool: Any, target: Any = None) -> Selection:
        """``fit(pool, target).selection_`` in one call."""
        return self.fit(pool, target).selection_

    @property
    def ranking(self) -> np.ndarray:
        """Picked pool indices in pick order (apricot's name)."""
        check_is_fitted(self)
        return self.selection_.indices

    @property
    def gains(self) -> np.ndarray:
        """Marginal gain of each pick (NaN where the method defines none)."""
        check_is_fitted(self)
        return self.selection_.gains

    @abstractmethod
    def _select(
        self,
        pool: ExampleSet,
        target: ExampleSet | None,
        budget: int,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict | None]:
        """Return ``(indices in pick order, row scores, pick gains, cost fields)``.

        ``indices`` may be shorter than ``budget``; it is cut to ``budget`` if longer.
        """
