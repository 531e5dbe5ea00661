"""HARP — Hierarchical Active Region Pruning (arXiv 2606.07690): its numerical parts.

``hierarchy`` builds the three-level tree over the pool, ``bayes`` turns a few measured
leaf effects into a posterior for every leaf, and ``envelopes`` picks leaves by the
HARP-C / HARP-E envelopes, greedy and best-prefix. None of these modules needs torch.
"""

from harp.selectors.harp.bayes import Posterior, empirical_bayes
from harp.selectors.harp.envelopes import (
    GreedyPath,
    best_prefix,
    cap_to_budget,
    envelope_value,
    envelope_values,
    greedy_envelope,
    lcb_effects,
)
from harp.selectors.harp.hierarchy import Hierarchy, build_hierarchy, default_shape

__all__ = [
    "GreedyPath",
    "Hierarchy",
    "Posterior",
    "best_prefix",
    "build_hierarchy",
    "cap_to_budget",
    "default_shape",
    "empirical_bayes",
    "envelope_value",
    "envelope_values",
    "greedy_envelope",
    "lcb_effects",
]
