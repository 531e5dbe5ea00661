"""The base of the selectors that read a model's projected LoRA gradients.

LESS, the gradient-norm baseline, Fisher, DPP and SPICE share one shape: a ``model``
(a local folder, or the built-in proxy pretrained on the pool) and a ``features``
component (:class:`~harp.features.GradientFeatures`: the warm-up, the LoRA shape,
the projection) that turns rows into gradient features. Each method only says what it
does with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from harp.core.context import RunContext
from harp.features.components import GradientFeatures
from harp.selectors.base import BaseSelector

__all__ = ["GradientSelector", "GRADIENT_CONSTRAINTS"]

#: Constraints of the parameters every gradient selector has.
GRADIENT_CONSTRAINTS: dict[str, list[Any]] = {
    "budget": ["budget"],
    "seed": ["seed"],
    "model": [None, str, Path],
    "features": [None, GradientFeatures],
    "context": [None, RunContext],
}


class GradientSelector(BaseSelector):
    """Selectors on projected LoRA gradients of a model (see the module docstring).

    Subclasses set ``default_features`` (the :class:`GradientFeatures` arguments that
    their ``features=None`` stands for) and implement ``_select``; they read the
    model folder from :meth:`model_dir` and the component from :meth:`features_for`.
    """

    uses_model = True
    _components = ("features",)
    #: Arguments of the GradientFeatures that ``features=None`` stands for.
    default_features: ClassVar[dict[str, Any]] = {}

    model: str | Path | None
    features: GradientFeatures | None

    def _default_component(
        self, name: str, kind: str | None = None
    ) -> GradientFeatures:
        return GradientFeatures(**self.default_features)

    def features_for(self) -> GradientFeatures:
        """The gradient features of this fit (given, or the default), checked."""
        features: GradientFeatures = self.resolved_component("features")
        features.check()
        return features
