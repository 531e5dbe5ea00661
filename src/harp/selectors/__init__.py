"""Selectors: every method is a :class:`BaseSelector` returning a :class:`Selection`."""

from harp.core.amount import parse_budget, resolve_budget
from harp.core.params import Interval, Options
from harp.core.selection import Cost, Selection
from harp.selectors.base import (
    BaseSelector,
    Diagnostics,
    check_is_fitted,
    ranked_order,
)

# Importing the modules registers the built-in methods.
from harp.selectors.cluster import ClusterSelector
from harp.selectors.diagnostics import (
    HARPDiagnostics,
    LeafDiagnostics,
    LogDetDiagnostics,
    diagnostics_from_dict,
)
from harp.selectors.dsir import DSIRSelector
from harp.selectors.gradient import GradientSelector
from harp.selectors.harp.selector import HARPCSelector, HARPESelector
from harp.selectors.less import GradNormSelector, LESSSelector
from harp.selectors.random import RandomSelector
from harp.selectors.rds import RDSSelector
from harp.selectors.registry import (
    available_methods,
    get_selector_class,
    make_selector,
    register,
)
from harp.selectors.similarity import SimilaritySelector
from harp.selectors.spice import DPPSelector, FisherSelector, SPICESelector

__all__ = [
    "BaseSelector",
    "ClusterSelector",
    "Cost",
    "DPPSelector",
    "DSIRSelector",
    "Diagnostics",
    "FisherSelector",
    "GradNormSelector",
    "GradientSelector",
    "HARPCSelector",
    "HARPDiagnostics",
    "HARPESelector",
    "Interval",
    "LESSSelector",
    "LeafDiagnostics",
    "LogDetDiagnostics",
    "Options",
    "RDSSelector",
    "RandomSelector",
    "SPICESelector",
    "Selection",
    "SimilaritySelector",
    "available_methods",
    "check_is_fitted",
    "diagnostics_from_dict",
    "get_selector_class",
    "make_selector",
    "parse_budget",
    "ranked_order",
    "register",
    "resolve_budget",
]
