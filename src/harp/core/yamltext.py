"""YAML as harp reads it: configs, suites and ``--param`` values.

PyYAML's safe loader has three traps for a command-line tool, closed here:

- ``1e-4`` is a *string* in YAML 1.1 (a float needs a dot: ``1.0e-4``); learning rates
  are written the first way, so exponent floats without a dot are floats here;
- aliases (``*name``) expand without bound: 451 bytes of nested aliases (the "billion
  laughs") take gigabytes. No harp file needs them, so they are refused;
- deep nesting ends in a ``RecursionError``; nesting is capped at :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from harp.core.errors import ParameterError

__all__ = ["load_yaml", "MAX_DEPTH"]

#: Deepest nesting of mappings and lists accepted (harp's own files use 4).
MAX_DEPTH = 32

# YAML 1.1's float pattern, plus exponent forms without a dot (``2e-4``, ``1E5``).
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _Loader(yaml.SafeLoader):
    """The safe loader without aliases, with a depth cap and exponent floats."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                f"aliases (*{event.anchor}) are not supported; write the value out",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str, *, source: str) -> Any:
    """Parse one YAML document as harp does (see the module docstring).

    Parameters
    ----------
    text : str
        The document.
    source : str
        What it came from (a file, ``--param x``), the start of every message.

    Raises
    ------
    ParameterError
        ``"{source}:{line}: not valid YAML (...)"`` for bad syntax, an alias or too
        deep a nesting.

    Examples
    --------
    >>> load_yaml("lr: 2e-4\\nsteps: 10", source="x")
    {'lr': 0.0002, 'steps': 10}
    >>> load_yaml("a: &x [1]\\nb: *x", source="cfg.yaml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    harp.core.errors.ParameterError: cfg.yaml:2: not valid YAML (aliases (*x) are ...
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ParameterError(f"{where}: not valid YAML ({problem})") from None
