"""Name → selector class table; the names are the CLI and YAML names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from harp.core.errors import HarpError, ParameterError
from harp.core.params import Parametrized

if TYPE_CHECKING:  # pragma: no cover
    from harp.selectors.base import BaseSelector

__all__ = [
    "available_methods",
    "get_selector_class",
    "make_selector",
    "register",
    "route_params",
]

_REGISTRY: dict[str, type[BaseSelector]] = {}

SelectorClass = TypeVar("SelectorClass", bound="type[BaseSelector]")


def register(cls: SelectorClass) -> SelectorClass:
    """Class decorator: add a selector to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"selector name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    import harp.selectors  # noqa: F401  (registers the built-in selectors)

    return sorted(_REGISTRY)


def get_selector_class(method: str) -> type[BaseSelector]:
    """The selector class registered as ``method``."""
    names = available_methods()
    if method not in _REGISTRY:
        raise ParameterError(
            f"unknown method {method!r}; available: {', '.join(names)}"
        )
    return _REGISTRY[method]


def route_params(cls: type[BaseSelector], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with bare names of a component's parameters made nested.

    ``dim=1024`` for a method whose ``features`` component has a ``dim`` becomes
    ``features__dim=1024`` (the command line's and a suite file's short form);
    top-level names and ``a__b`` names pass unchanged.

    Raises
    ------
    ParameterError
        For a name that is neither a parameter of the method nor of one of its
        components, listing both.
    """
    valid = set(cls.param_names())
    probe = cls(**{key: params[key] for key in cls._components if key in params})
    nested: dict[str, set[str]] = {}
    for name in cls._components:
        value = getattr(probe, name)
        if value is None or isinstance(value, (str, Parametrized)):
            try:
                component = probe.resolved_component(name)
            except HarpError:
                continue  # a bad value: fit names it
            nested[name] = set(component.param_names())
    out: dict[str, Any] = {}
    unknown = []
    for key, value in params.items():
        head = key.split("__", 1)[0]
        if head in valid:
            out[key] = value
            continue
        owners = [name for name, names in nested.items() if key in names]
        if len(owners) == 1:
            out[f"{owners[0]}__{key}"] = value
        else:
            unknown.append(key)
    if unknown:
        shown = valid - set(cls._execution_params)
        listed = sorted(shown) + sorted(
            f"{name}__{sub}" for name, subs in nested.items() for sub in subs
        )
        noun = "parameter" if len(unknown) == 1 else "parameters"
        raise ParameterError(
            f"method {cls.name!r} has no {noun} "
            f"{', '.join(map(repr, sorted(unknown)))}; its parameters are: "
            + ", ".join(listed)
        )
    return out


def make_selector(method: str, **params: Any) -> BaseSelector:
    """Build the selector registered as ``method``; unknown ``params`` fail.

    Parameters of a component may be given nested (``features__dim=1024``) or, when
    the name is unambiguous, bare (``dim=1024``).

    Examples
    --------
    >>> make_selector("less", dim=1024).get_params()["features__dim"]
    1024
    """
    cls = get_selector_class(method)
    routed = route_params(cls, params)
    top = {k: v for k, v in routed.items() if "__" not in k}
    selector = cls(**top)
    nested = {k: v for k, v in routed.items() if "__" in k}
    if nested:
        selector.set_params(**nested)
    return selector
