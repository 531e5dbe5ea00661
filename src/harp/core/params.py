"""Hyper-parameters: the scikit-learn parameter protocol and declared constraints.

Every configurable object of harp — a selector, a feature component — records its
keyword-only constructor arguments as attributes and nothing else, so
:meth:`Parametrized.get_params` / :meth:`Parametrized.set_params` (nested, as
``features__dim``) and cloning come for free. Checks live in one constraint table per
class (:func:`validate_params`), run when the object is used, not when it is built.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from harp.core.amount import parse_budget
from harp.core.errors import ParameterError

__all__ = [
    "Interval",
    "Options",
    "Parametrized",
    "validate_params",
]


@dataclass(frozen=True)
class Interval:
    """Constraint: a number of ``kind`` (int or float) between ``low`` and ``high``.

    Examples
    --------
    >>> Interval(int, 1, None).accepts(3), Interval(float, 0.0, 1.0).accepts(2.0)
    (True, False)
    """

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` satisfies the constraint."""
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if self.kind is float and not isinstance(value, numbers.Real):
            return False
        if isinstance(value, numbers.Real) and not math.isfinite(value):
            return False  # inf and nan are never a setting
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
    """Constraint: one of a fixed set of values.

    Examples
    --------
    >>> Options("a", "b").accepts("a"), Options("a", "b").accepts("c")
    (True, False)
    """

    values: frozenset[Any]

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", frozenset(values))

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is one of the options."""
        try:
            return value in self.values
        except TypeError:
            return False

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in sorted(self.values, key=str))


def _accepts(constraint: Any, value: Any) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, str):
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
                and int(value) >= 0
            )
        if constraint == "boolean":
            return isinstance(value, (bool, np.bool_))
        raise ValueError(f"unknown constraint keyword {constraint!r}")
    if isinstance(constraint, type):
        return isinstance(value, constraint) and not (
            constraint is not bool and isinstance(value, bool)
        )
    return bool(constraint.accepts(value))


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


def validate_params(
    owner: str, params: Mapping[str, Any], table: Mapping[str, list[Any]]
) -> None:
    """Check ``params`` against a constraint table; errors name param and choices.

    Parameters
    ----------
    owner : str
        The class name, first word of the message.
    params : mapping
        Parameter values by name.
    table : mapping
        ``{name: [constraint, ...]}``; a value must satisfy one of its constraints:
        ``None``, a type, an :class:`Interval`, :class:`Options`, or one of the
        keywords ``"budget"``, ``"seed"``, ``"boolean"``.

    Raises
    ------
    ParameterError
        Naming the parameter, the bad value and what is allowed.

    Examples
    --------
    >>> validate_params("X", {"k": 0}, {"k": [Interval(int, 1, None)]})
    Traceback (most recent call last):
    ...
    harp.core.errors.ParameterError: X: k=0 is not allowed; expected int in [1, inf]
    """
    for name, constraints in table.items():
        value = params[name]
        if not any(_accepts(c, value) for c in constraints):
            if list(constraints) == ["budget"]:
                try:
                    parse_budget(value)  # its message says what exactly is wrong
                except ParameterError as exc:
                    raise ParameterError(f"{owner}: {exc}") from None
            allowed = " or ".join(_describe(c) for c in constraints)
            raise ParameterError(
                f"{owner}: {name}={value!r} is not allowed; expected {allowed}"
            )


class Parametrized:
    """scikit-learn's parameter protocol for objects configured by keyword arguments.

    A subclass's ``__init__`` takes keyword-only arguments and stores each under its
    own name, unchanged. Parameters whose value is itself :class:`Parametrized` (a
    component, such as a selector's ``features``) are *nested*: ``get_params()``
    lists theirs as ``name__param`` and ``set_params(name__param=value)`` sets them.

    Subclasses may declare ``_parameter_constraints`` (see :func:`validate_params`)
    and ``_execution_params``: parameters that say how the work runs rather than
    what it computes, left out of :meth:`computation_params`.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}
    _execution_params: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the constructor's parameters, sorted."""
        sig = inspect.signature(cls.__init__)
        return sorted(
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        )

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """The constructor's default of every parameter."""
        sig = inspect.signature(cls.__init__)
        return {name: sig.parameters[name].default for name in cls.param_names()}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters as given to the constructor (with ``deep``, nested ones too).

        Parameters
        ----------
        deep : bool, default True
            Add ``name__param`` entries for parameters that are components.

        Returns
        -------
        dict
        """
        out: dict[str, Any] = {}
        for name in self.param_names():
            value = getattr(self, name)
            out[name] = value
            if deep and isinstance(value, Parametrized):
                for sub, sub_value in value.get_params(deep=True).items():
                    out[f"{name}__{sub}"] = sub_value
        return out

    def set_params(self, **params: Any) -> Any:
        """Set parameters (``name__param`` reaches into a component); returns self.

        A nested parameter of a component left at None (or given by name) is set on
        a fresh default component (:meth:`_default_component`).

        Raises
        ------
        ParameterError
            For a name that is neither a parameter nor a nested one.
        """
        valid = set(self.param_names())
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            head, sep, rest = key.partition("__")
            if head not in valid:
                raise ParameterError(
                    f"{type(self).__name__} has no parameter {head!r}; "
                    f"valid parameters: {', '.join(sorted(valid))}"
                )
            if sep:
                nested.setdefault(head, {})[rest] = value
            else:
                setattr(self, key, value)
        for head, values in nested.items():
            component = getattr(self, head)
            if component is None or isinstance(component, str):
                component = self._default_component(head, component)
                setattr(self, head, component)
            if not isinstance(component, Parametrized):
                raise ParameterError(
                    f"{type(self).__name__}: {head}={component!r} has no parameters "
                    f"to set ({', '.join(f'{head}__{k}' for k in values)})"
                )
            component.set_params(**values)
        return self

    def _default_component(self, name: str, kind: str | None = None) -> Parametrized:
        """The component that parameter ``name`` stands for when None (or a name)."""
        raise ParameterError(
            f"{type(self).__name__}: {name} is None and has no default component; "
            f"pass {name}=... first"
        )

    def computation_params(self) -> dict[str, Any]:
        """JSON-ready parameters that decide what is computed.

        Execution parameters are left out; a component is written as its class name
        under its own key plus its parameters as ``name__param``.
        """
        out: dict[str, Any] = {}
        for name, value in self.get_params(deep=True).items():
            head = name.split("__", 1)[0]
            if head in self._execution_params:
                continue
            out[name] = (
                type(value).__name__ if isinstance(value, Parametrized) else value
            )
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({args})"
