"""Selectors: every method is a :class:`BaseSelector` returning a :class:`Selection`."""

from harp.selectors._base import (
    BaseSelector,
    Interval,
    Options,
    check_is_fitted,
    ranked_order,
)
from harp.selectors._budget import parse_budget, resolve_budget
from harp.selectors._registry import (
    available_methods,
    get_selector_class,
    make_selector,
    register,
)
from harp.selectors._selection import Cost, Selection

# Importing the modules registers the built-in methods.
from harp.selectors.cluster import ClusterSelector  # noqa: E402
from harp.selectors.dsir import DSIRSelector
from harp.selectors.harp.selector import HARPCSelector, HARPESelector  # noqa: E402
from harp.selectors.less import GradNormSelector, LESSSelector  # noqa: E402
from harp.selectors.random import RandomSelector  # noqa: E402
from harp.selectors.similarity import SimilaritySelector  # noqa: E402
from harp.selectors.spice import DPPSelector, FisherSelector, SPICESelector  # noqa: E402

__all__ = [
    "BaseSelector",
    "ClusterSelector",
    "Cost",
    "DPPSelector",
    "DSIRSelector",
    "FisherSelector",
    "HARPCSelector",
    "HARPESelector",
    "GradNormSelector",
    "LESSSelector",
    "Interval",
    "Options",
    "RandomSelector",
    "SPICESelector",
    "Selection",
    "SimilaritySelector",
    "available_methods",
    "check_is_fitted",
    "get_selector_class",
    "make_selector",
    "parse_budget",
    "ranked_order",
    "register",
    "resolve_budget",
]
