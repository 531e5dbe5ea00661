"""The selector contract shared by every method (scikit-learn / apricot discipline).

A selector's ``__init__`` takes keyword-only hyper-parameters and only stores them;
``fit(pool, target)`` checks them against the class's ``_parameter_constraints`` table,
resolves the seed and the run context, does the work, and leaves a
:class:`~harp.core.selection.Selection` in ``selection_``.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harp.core.amount import resolve_budget
from harp.core.context import RunContext
from harp.core.errors import NotFittedError, ParameterError
from harp.core.hashing import fingerprint
from harp.core.params import Interval, Options, Parametrized, validate_params
from harp.core.records import ExampleSet
from harp.core.selection import Cost, Selection
from harp.data.loaders import as_example_set

__all__ = [
    "BaseSelector",
    "Diagnostics",
    "Interval",
    "Options",
    "SelectResult",
    "check_is_fitted",
    "ranked_order",
]

log = logging.getLogger(__name__)

#: What :meth:`BaseSelector._select` returns: picks in order, per-row scores (or
#: None), per-pick gains (or None) and cost fields.
SelectResult = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None", dict]


class Diagnostics:
    """Base of the typed diagnostics a fitted selector may expose.

    Subclasses are dataclasses with a ``kind`` (``"harp"``, ``"logdet"``) and
    ``to_dict`` / ``from_dict`` for the JSON files that ``harp report`` and
    ``harp inspect`` read.
    """

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """JSON-ready dict (with ``kind``)."""
        raise NotImplementedError


def ranked_order(scores: np.ndarray) -> np.ndarray:
    """Indices by score descending, ties by index ascending (stable, deterministic).

    Examples
    --------
    >>> ranked_order(np.array([0.5, 2.0, 0.5, np.nan])).tolist()
    [1, 0, 2, 3]
    """
    scores = np.asarray(scores, dtype=np.float64)
    # lexsort sorts by the last key first; -scores for descending order, NaN last.
    key = np.where(np.isnan(scores), np.inf, -scores)
    return np.lexsort((np.arange(len(scores)), key))


def check_is_fitted(selector: BaseSelector) -> None:
    """Raise :class:`NotFittedError` if ``selector`` has not been fitted."""
    if not hasattr(selector, "selection_"):
        raise NotFittedError(
            f"This {type(selector).__name__} is not fitted yet; "
            "call fit(pool, target) first"
        )


class BaseSelector(Parametrized, ABC):
    """Base class of every selector.

    Subclasses set ``name`` (the registry / CLI name), ``_parameter_constraints`` and
    implement :meth:`_select`, which returns the picks, per-row scores and per-pick
    gains. The base class validates parameters, resolves the budget and the seed,
    builds the run context, times the work and builds the :class:`Selection`.

    Every selector takes ``budget``, ``seed`` and ``context`` (a
    :class:`~harp.core.context.RunContext`: device, dtype, cache folder, progress,
    executor). The context says how the work runs, never what it computes: it is
    left out of the selection's parameters and fingerprint.
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
    #: How the work runs, not what it computes: kept out of params and fingerprint.
    _execution_params: ClassVar[tuple[str, ...]] = ("context",)
    #: Parameters holding a component (None stands for :meth:`_default_component`).
    _components: ClassVar[tuple[str, ...]] = ()
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}

    budget: Any
    seed: int | None
    context: RunContext | None

    # -- parameters ------------------------------------------------------------------
    def _fingerprint_params(self) -> dict[str, Any]:
        """Non-default computation parameters (components flattened as ``a__b``).

        Defaults are left out, so a new defaulted parameter keeps old caches valid,
        and ``features=None`` and an explicit default component are the same.
        """
        defaults = self.param_defaults()
        out: dict[str, Any] = {}
        for name in self.param_names():
            if name in ("seed", "budget", *self._execution_params):
                continue
            value = getattr(self, name)
            if name in self._components:
                default = self._default_component(name)
                given = self.resolved_component(name)
                if type(given) is not type(default):
                    out[name] = type(given).__name__
                    base: dict[str, Any] = {}
                else:
                    base = default.get_params(deep=True)
                for key, sub in given.get_params(deep=True).items():
                    if isinstance(sub, Parametrized):
                        continue
                    if key not in base or base[key] != sub:
                        out[f"{name}__{key}"] = sub
            elif value != defaults[name]:
                out[name] = value
        return out

    def resolved_component(self, name: str) -> Any:
        """The component of parameter ``name``: the one given, or the default.

        A component may be given by name (``features="gradient"``): it is then the
        method's default component of that kind.
        """
        value = getattr(self, name)
        if value is None or isinstance(value, str):
            return self._default_component(name, value)
        return value

    def computation_params(self) -> dict[str, Any]:
        """JSON-ready parameters that decide what is computed, components resolved.

        The context is left out; a component (given or default) is written as its
        class name plus its parameters as ``name__param``.
        """
        out: dict[str, Any] = {}
        for name, value in self.get_params(deep=False).items():
            if name in self._execution_params:
                continue
            if name not in self._components:
                out[name] = value
                continue
            component = self.resolved_component(name)
            out[name] = type(component).__name__
            for key, sub in component.get_params(deep=True).items():
                if not isinstance(sub, Parametrized):
                    out[f"{name}__{key}"] = sub
        return out

    def diagnostics(self) -> Diagnostics | None:
        """Typed diagnostics of the last fit, or None when the method keeps none."""
        check_is_fitted(self)
        return None

    # -- the work --------------------------------------------------------------------
    def model_dir(self, pool: ExampleSet, context: RunContext) -> Path:
        """A model-based method's model folder: its ``model`` parameter resolved.

        A folder, a ``.gguf`` file, a name harp can fetch, or (None / ``"proxy"``)
        the built-in proxy pretrained on ``pool``; see
        :func:`harp.models.resolve_model`.
        """
        from harp.models.resolve import resolve_model

        return resolve_model(getattr(self, "model", None), pool, context=context)

    def check_params(self) -> BaseSelector:
        """Validate every parameter now, nested components' too; return self.

        :meth:`fit` does the same; a caller about to start long work (a bench) calls
        this first, so that a bad value fails before anything runs.
        """
        owner = type(self).__name__
        params = self.get_params(deep=False)
        validate_params(owner, params, self._parameter_constraints)
        for value in params.values():
            if isinstance(value, Parametrized) and hasattr(value, "check"):
                value.check()  # a component (features=...) checks its own values
        return self

    def fit(self, pool: Any, target: Any = None) -> BaseSelector:
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
            With the result in ``selection_``; ``selection_.seed`` is the seed used
            (fresh entropy, drawn here, when ``seed`` is None).
        """
        # A failed refit must not leave the previous fit's results readable.
        fitted = [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]
        for name in fitted:
            delattr(self, name)
        owner = type(self).__name__
        self.check_params()
        if self.context is not None and not isinstance(self.context, RunContext):
            raise ParameterError(
                f"{owner}: context={self.context!r} is not allowed; expected a "
                "harp.core.RunContext or None"
            )
        pool = as_example_set(pool)
        target = None if target is None else as_example_set(target)
        if self.needs_target and (target is None or len(target) == 0):
            raise ParameterError(
                f"method {self.name!r} needs a target set with at least one row; "
                "pass target=... (--target on the command line)"
            )
        budget = resolve_budget(self.budget, len(pool))
        context = (self.context or RunContext()).with_seed(self.seed)
        start = time.perf_counter()
        indices, scores, gains, cost = self._select(pool, target, budget, context)
        elapsed = time.perf_counter() - start
        indices = np.asarray(indices, dtype=np.int64)[:budget]
        gains = (
            np.full(len(indices), np.nan)
            if gains is None
            else np.asarray(gains)[: len(indices)]
        )
        scores = np.full(len(pool), np.nan) if scores is None else np.asarray(scores)
        content = pool.content_hash() + (
            "" if target is None else target.content_hash()
        )
        self.selection_ = Selection(
            indices=indices,
            ids=tuple(pool.examples[i].id for i in indices),
            scores=scores,
            gains=gains,
            budget=budget,
            n_pool=len(pool),
            method=self.name,
            params=self.computation_params(),
            seed=context.seed,
            cost=Cost(**{**(cost or {}), "wall_seconds": elapsed}),
            fingerprint=fingerprint(
                self.name,
                content=content,
                params=self._fingerprint_params(),
                seed=context.seed,
            ),
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
        context: RunContext,
    ) -> SelectResult:
        """Return ``(indices in pick order, row scores, pick gains, cost fields)``.

        ``indices`` may be shorter than ``budget``; it is cut to ``budget`` if longer.
        ``context`` carries the resolved seed (``context.rng()`` is the selection's
        own generator, ``context.rng(stream)`` the named streams), the device and the
        cache. Cost fields name where the work ran (``device``, default ``"cpu"``).
        """
