"""Typed diagnostics of fitted selectors, as ``harp inspect`` and ``harp report`` read.

A fitted selector's :meth:`~harp.selectors.BaseSelector.diagnostics` returns one of
these (or None); ``to_dict`` is the JSON written beside a selection (the sidecar's
``diagnostics``, a bench's ``diagnostics/<key>.json``) and :func:`load_diagnostics`
reads such JSON back into the type its ``kind`` names, so readers never index raw
dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from harp.core.errors import HarpError
from harp.selectors.base import Diagnostics

if TYPE_CHECKING:  # pragma: no cover
    from harp.selectors.logdet import GreedyTrace

__all__ = [
    "HARPDiagnostics",
    "LeafDiagnostics",
    "LogDetDiagnostics",
    "diagnostics_from_dict",
]


def _items(values: Any) -> list[Any]:
    """A JSON list (or an array) as a list; None as an empty one."""
    return [] if values is None else list(values)


def _floats(values: Any) -> list[float]:
    """JSON numbers (None for NaN) back to floats (NaN for None)."""
    return [math.nan if v is None else float(v) for v in _items(values)]


def _json_floats(values: Any) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else float(v) for v in values]


@dataclass(frozen=True)
class LogDetDiagnostics(Diagnostics):
    """The greedy of a log-det selector (Fisher, SPICE, DPP), pick by pick.

    Attributes
    ----------
    method : str
        The selector's name.
    alpha : float
        The ``α`` used.
    stopped_early : bool
        Whether the ω rule fired.
    gains, scores, epsilons, conflicts, objective : list of float
        Per pick: log-det gain, criterion, redundancy ε, conflict, ``f(S)`` after.
    """

    kind: ClassVar[str] = "logdet"

    method: str
    alpha: float
    stopped_early: bool
    gains: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)
    conflicts: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)

    @classmethod
    def from_trace(cls, method: str, trace: GreedyTrace) -> LogDetDiagnostics:
        """The diagnostics of a :class:`~harp.selectors.logdet.GreedyTrace`."""
        return cls(
            method=method,
            alpha=float(trace.alpha),
            stopped_early=bool(trace.stopped_early),
            gains=trace.gains.tolist(),
            scores=trace.scores.tolist(),
            epsilons=trace.epsilons.tolist(),
            conflicts=trace.conflicts.tolist(),
            objective=trace.objective.tolist(),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as null)."""
        return {
            "kind": self.kind,
            "method": self.method,
            "alpha": self.alpha,
            "stopped_early": self.stopped_early,
            "gains": _json_floats(self.gains),
            "scores": _json_floats(self.scores),
            "epsilons": _json_floats(self.epsilons),
            "conflicts": _json_floats(self.conflicts),
            "objective": _json_floats(self.objective),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogDetDiagnostics:
        """Read :meth:`to_dict`'s output back."""
        return cls(
            method=str(data.get("method", "")),
            alpha=float(data.get("alpha", math.nan)),
            stopped_early=bool(data.get("stopped_early", False)),
            gains=_floats(data.get("gains")),
            scores=_floats(data.get("scores")),
            epsilons=_floats(data.get("epsilons")),
            conflicts=_floats(data.get("conflicts")),
            objective=_floats(data.get("objective")),
        )


@dataclass(frozen=True)
class LeafDiagnostics:
    """One leaf of a HARP tree: where it sits, its posterior, whether it was chosen.

    Attributes
    ----------
    leaf, parent, node : int
        Its number and its parent's and node's.
    size : int
        Pool rows in the leaf.
    measured : bool
        Whether a train-evaluate call measured it.
    effect : list of float or None
        The measured effect per domain (None when inferred).
    mean, sd : list of float
        Posterior mean and standard deviation of its effect per domain.
    chosen : bool
        Whether the envelope's greedy kept it.
    target_fit_loss : float or None
        Median target-fit loss of its rows (None without the target fit).
    """

    leaf: int
    parent: int
    node: int
    size: int
    measured: bool
    effect: list[float] | None
    mean: list[float]
    sd: list[float]
    chosen: bool
    target_fit_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "leaf": self.leaf,
            "parent": self.parent,
            "node": self.node,
            "size": self.size,
            "measured": self.measured,
            "effect": None if self.effect is None else _json_floats(self.effect),
            "mean": _json_floats(self.mean),
            "sd": _json_floats(self.sd),
            "chosen": self.chosen,
            "target_fit_loss": self.target_fit_loss,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LeafDiagnostics:
        """Read :meth:`to_dict`'s output back."""
        effect = data.get("effect")
        fit = data.get("target_fit_loss")
        return cls(
            leaf=int(data["leaf"]),
            parent=int(data["parent"]),
            node=int(data["node"]),
            size=int(data["size"]),
            measured=bool(data["measured"]),
            effect=None if effect is None else _floats(effect),
            mean=_floats(data.get("mean")),
            sd=_floats(data.get("sd")),
            chosen=bool(data["chosen"]),
            target_fit_loss=None if fit is None else float(fit),
        )


@dataclass(frozen=True)
class HARPDiagnostics(Diagnostics):
    """A HARP run: its tree with every leaf's posterior, the calls, the greedy path.

    Attributes
    ----------
    method : str
        ``"harp-c"`` or ``"harp-e"``.
    metric : str
        What an effect measures (``"loss"`` or ``"exact_match"``).
    domains, active_domains : list of str
        Target domains, and those where some leaf may help.
    base : list of float
        The base model's score per domain (higher is better).
    leaves : list of LeafDiagnostics
        Every leaf.
    rounds : list of dict
        The measurement rounds (leaves measured per round).
    greedy_order : list of int
        Leaves in the envelope greedy's order.
    greedy_gains : list of float
        Their marginal gains.
    prefix : int
        Length of the best prefix kept.
    hyper : dict
        The empirical-Bayes hyper-parameters.
    oracle : dict
        Calls run, cache hits, seconds, target-fit seconds.
    """

    kind: ClassVar[str] = "harp"

    method: str
    metric: str
    domains: list[str]
    active_domains: list[str]
    base: list[float]
    leaves: list[LeafDiagnostics]
    rounds: list[Any] = field(default_factory=list)
    greedy_order: list[int] = field(default_factory=list)
    greedy_gains: list[float] = field(default_factory=list)
    prefix: int = 0
    hyper: dict[str, Any] = field(default_factory=dict)
    oracle: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> list[LeafDiagnostics]:
        """The measured leaves."""
        return [leaf for leaf in self.leaves if leaf.measured]

    @property
    def chosen(self) -> list[LeafDiagnostics]:
        """The chosen leaves."""
        return [leaf for leaf in self.leaves if leaf.chosen]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the layout of a sidecar's ``diagnostics``)."""
        return {
            "kind": self.kind,
            "method": self.method,
            "metric": self.metric,
            "domains": list(self.domains),
            "active_domains": list(self.active_domains),
            "base": _json_floats(self.base),
            "leaves": [leaf.to_dict() for leaf in self.leaves],
            "rounds": [list(map(int, r)) for r in self.rounds],
            "greedy": {
                "order": [int(g) for g in self.greedy_order],
                "gains": _json_floats(self.greedy_gains),
                "prefix": int(self.prefix),
            },
            "hyper": self.hyper,
            "oracle": self.oracle,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HARPDiagnostics:
        """Read :meth:`to_dict`'s output back."""
        greedy = data.get("greedy") or {}
        return cls(
            method=str(data.get("method", "harp")),
            metric=str(data.get("metric", "")),
            domains=[str(d) for d in _items(data.get("domains"))],
            active_domains=[str(d) for d in _items(data.get("active_domains"))],
            base=_floats(data.get("base")),
            leaves=[LeafDiagnostics.from_dict(x) for x in _items(data.get("leaves"))],
            rounds=_items(data.get("rounds")),
            greedy_order=[int(g) for g in _items(greedy.get("order"))],
            greedy_gains=_floats(greedy.get("gains")),
            prefix=int(greedy.get("prefix", 0) or 0),
            hyper=dict(data.get("hyper") or {}),
            oracle=dict(data.get("oracle") or {}),
        )


_KINDS: dict[str, Any] = {
    HARPDiagnostics.kind: HARPDiagnostics,
    LogDetDiagnostics.kind: LogDetDiagnostics,
}


def diagnostics_from_dict(data: Any, *, where: str = "diagnostics") -> Diagnostics:
    """The typed diagnostics a JSON dict holds (dispatch on its ``kind``).

    Raises
    ------
    HarpError
        When ``data`` is not a dict of a known kind, or a field is malformed
        (the message names ``where``).
    """
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind not in _KINDS:
        raise HarpError(
            f"{where}: not harp diagnostics (kind {kind!r}; expected one of "
            f"{', '.join(sorted(_KINDS))})"
        )
    try:
        return _KINDS[kind].from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # A hand-edited file: a list where a mapping belongs, a string for a list.
        raise HarpError(f"{where}: malformed {kind} diagnostics ({exc})") from None
