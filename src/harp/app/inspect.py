"""Text rendering of a HARP run's tree for ``harp inspect``."""

from __future__ import annotations

import json
from pathlib import Path

from harp.app.output import sidecar_path
from harp.core.errors import HarpError
from harp.selectors.diagnostics import (
    HARPDiagnostics,
    LeafDiagnostics,
    diagnostics_from_dict,
)

__all__ = ["format_tree", "load_diagnostics"]


def load_diagnostics(path: str | Path) -> HARPDiagnostics:
    """The HARP diagnostics of a run: a selection's output, its sidecar, or a JSON.

    ``path`` may be the rows file ``harp select`` wrote (its ``.meta.json`` sidecar is
    read), the sidecar itself, or a diagnostics JSON saved by ``harp bench``.

    Raises
    ------
    harp.core.errors.HarpError
        When the file is missing, unreadable, or holds no HARP diagnostics.
    """
    path = Path(path)
    candidates = [path] if path.name.endswith(".json") else []
    candidates.append(sidecar_path(path))
    for candidate in candidates:
        if candidate.is_file():
            break
    else:
        raise HarpError(
            f"{path}: no such run; pass the output of 'harp select' (or its "
            ".meta.json sidecar) or a diagnostics JSON from 'harp bench'"
        )
    try:
        data = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HarpError(f"{candidate}: not a readable JSON file ({exc})") from None
    diag = data.get("diagnostics", data) if isinstance(data, dict) else None
    if not isinstance(diag, dict) or diag.get("kind") != "harp":
        raise HarpError(
            f"{candidate}: holds no HARP tree (it was not made by harp-c or harp-e); "
            "run 'harp select --method harp-c ...' first"
        )
    typed = diagnostics_from_dict(diag, where=str(candidate))
    assert isinstance(typed, HARPDiagnostics)
    return typed


def _fmt(values: list[float] | None, scale: float) -> str:
    if values is None:
        return "-"
    return " ".join(f"{scale * v:+7.2f}" for v in values)


def format_tree(diag: HARPDiagnostics, *, max_leaves: int | None = None) -> str:
    """Nodes → parents → leaves, each leaf with its posterior per domain.

    Marks: ``M`` measured (its measured effect follows), ``*`` chosen. Exact-match
    effects are shown in points (×100), loss reductions in nats ×100; ``fit`` is
    the leaf's median target-fit loss (low: its rows follow the target's rule).

    Parameters
    ----------
    diag : HARPDiagnostics
        A HARP selector's :meth:`diagnostics` (or :func:`load_diagnostics`).
    max_leaves : int or None
        Show at most this many leaves per parent (the highest posterior first).

    Returns
    -------
    str
        The rendered tree.
    """
    scale = 100.0
    oracle = diag.oracle
    leaves = diag.leaves
    chosen = diag.chosen
    order = diag.greedy_order
    lines = [
        f"{diag.method}: {len(leaves)} leaves, {len(diag.measured)} measured "
        f"({oracle.get('calls', '?')} calls run, {oracle.get('cache_hits', 0)} "
        f"cached, {oracle.get('seconds', 0):.1f}s), {len(chosen)} chosen "
        f"({sum(x.size for x in chosen)} rows)",
        f"metric: {diag.metric} (effects x100); domains: "
        + ", ".join(diag.domains)
        + "; active: "
        + ", ".join(diag.active_domains),
        f"greedy order: {order[:20]}{' ...' if len(order) > 20 else ''}; best "
        f"prefix {diag.prefix}",
    ]
    replicated = oracle.get("replicated_leaves") or []
    if replicated:
        sds = ", ".join(f"{scale * sd:.2f}" for sd in oracle.get("training_sd", []))
        lines.append(
            f"training noise sd per domain: {sds} (leaves {replicated} measured "
            "twice; added to every measurement's variance)"
        )
    lines += [
        "",
        f"{'':28s}{'posterior mean (sd) per domain':s}",
    ]
    by_node: dict[int, dict[int, list[LeafDiagnostics]]] = {}
    for leaf in leaves:
        by_node.setdefault(leaf.node, {}).setdefault(leaf.parent, []).append(leaf)
    for node in sorted(by_node):
        parents = by_node[node]
        n_rows = sum(x.size for p in parents.values() for x in p)
        lines.append(f"node {node}  ({len(parents)} parents, {n_rows} rows)")
        for parent in sorted(parents):
            group = sorted(parents[parent], key=lambda x: -sum(x.mean))
            lines.append(f"  parent {parent}  ({len(group)} leaves)")
            shown = group if max_leaves is None else group[:max_leaves]
            for leaf in shown:
                mark = ("M" if leaf.measured else " ") + ("*" if leaf.chosen else " ")
                sd = " ".join(f"({scale * s:5.2f})" for s in leaf.sd)
                line = (
                    f"    {mark} leaf {leaf.leaf:4d} n={leaf.size:4d}  "
                    f"{_fmt(leaf.mean, scale)}  {sd}"
                )
                if leaf.target_fit_loss is not None:
                    line += f"  fit {leaf.target_fit_loss:5.2f}"
                if leaf.measured:
                    line += f"  measured {_fmt(leaf.effect, scale)}"
                lines.append(line)
            if len(shown) < len(group):
                lines.append(f"      ... {len(group) - len(shown)} more leaves")
    return "\n".join(lines)
