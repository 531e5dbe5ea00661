"""Name → selector class table; the names are the CLI and YAML names."""

from __future__ import annotations

from typing import Any

from harp.errors import ParameterError

__all__ = ["register", "get_selector_class", "available_methods", "make_selector"]

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: add a selector to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"selector name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    import harp.selectors  # noqa: F401  (registers the built-in selectors)

    return sorted(_REGISTRY)


def get_selector_class(method: str) -> type:
    """The selector class registered as ``method``."""
    names = available_methods()
    if method not in _REGISTRY:
        raise ParameterError(
            f"unknown method {method!r}; available: {', '.join(names)}"
        )
    return _REGISTRY[method]


def make_selector(method: str, **params: Any):
    """Build the selector registered as ``method``; unknown ``params`` fail."""
    cls = get_selector_class(method)
    valid = set(cls._get_param_names())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ParameterError(
            f"method {method!r} has no parameter(s) {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(sorted(valid))}"
        )
    return cls(**params)
