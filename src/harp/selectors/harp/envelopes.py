r"""HARP-C / HARP-E envelopes: predicted scores of a set of leaves, and the greedy.

For a set :math:`S` of leaves, base scores :math:`b_d` and leaf effects
:math:`\phi_{g,d}` (score of the leaf-tuned model minus the base score):

- HARP-C (conservative): :math:`\hat y_d(S) = \mathrm{clip}_{[0,1]}(b_d +
  \max_{g\in S}\phi^+_{g,d} - \sum_{g\in S}\phi^-_{g,d})` — only the strongest helpful
  leaf counts per domain (redundant helpers add nothing), every harm adds up;
- HARP-E (expansive): :math:`\hat y_d(S) = \mathrm{clip}_{[0,1]}(b_d +
  \sum_{g\in S}\phi_{g,d})` — complementary leaves add up;

with :math:`\phi^+ = \max(\phi, 0)`, :math:`\phi^- = \max(-\phi, 0)` and the max over
an empty set 0. The objective is :math:`J(S) = \sum_{d\,\text{active}} \hat y_d(S)`;
the clip is skipped for unbounded metrics (loss reductions). A greedy over leaves then
the best-prefix rule choose the leaves; :func:`cap_to_budget` turns them into rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from harp.core.errors import ParameterError

__all__ = [
    "GreedyPath",
    "best_prefix",
    "cap_to_budget",
    "envelope_value",
    "envelope_values",
    "greedy_envelope",
    "lcb_effects",
]

KINDS = ("c", "e")


def _kind(kind: str, where: str) -> str:
    k = str(kind).lower()
    k = k[len("harp-") :] if k.startswith("harp-") else k
    if k not in KINDS:
        raise ParameterError(
            f"{where}: kind={kind!r} is not an envelope; use 'c' (HARP-C, "
            "conservative) or 'e' (HARP-E, expansive)"
        )
    return k


def _check_phi_base(
    phi: np.ndarray, base: np.ndarray | float, where: str
) -> tuple[np.ndarray, np.ndarray]:
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim == 1:
        phi = phi[:, None]
    if phi.ndim != 2:
        raise ParameterError(
            f"{where}: phi must be (n_leaves, n_domains), got shape {phi.shape}"
        )
    if not np.all(np.isfinite(phi)):
        raise ParameterError(
            f"{where}: phi holds NaN or inf; give every leaf a finite effect (use "
            "the posterior mean for unmeasured leaves)"
        )
    base = np.asarray(base, dtype=np.float64)
    if base.ndim == 0:
        base = np.full(phi.shape[1], float(base))
    if base.shape != (phi.shape[1],):
        raise ParameterError(
            f"{where}: base must hold one score per domain ({phi.shape[1]}), got "
            f"shape {base.shape}"
        )
    if not np.all(np.isfinite(base)):
        raise ParameterError(f"{where}: base scores must be finite")
    return phi, base


def _check_active(active: np.ndarray | None, phi: np.ndarray, where: str) -> np.ndarray:
    if active is None:
        # Default: a domain is worth optimising only if some leaf can help it.
        return np.asarray((phi > 0).any(axis=0))
    act = np.asarray(active)
    if act.dtype != bool or act.shape != (phi.shape[1],):
        raise ParameterError(
            f"{where}: active must be a bool mask with one entry per domain "
            f"({phi.shape[1]}), got dtype {act.dtype} and shape {act.shape}"
        )
    return act


def _check_set(S: Sequence[int] | np.ndarray, n_leaves: int, where: str) -> np.ndarray:
    arr = np.asarray(S)
    if arr.dtype == bool:
        if arr.shape != (n_leaves,):
            raise ParameterError(
                f"{where}: a boolean S needs one entry per leaf ({n_leaves}), got "
                f"shape {arr.shape}"
            )
        return np.flatnonzero(arr)
    arr = arr.reshape(-1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ParameterError(f"{where}: S must hold int leaf ids, got {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n_leaves:
        raise ParameterError(f"{where}: S holds leaf ids outside 0..{n_leaves - 1}")
    return np.unique(arr)  # a set: repeats count once


def envelope_values(
    phi: np.ndarray,
    base: np.ndarray | float,
    S: Sequence[int] | np.ndarray,
    *,
    kind: str,
    bounded: bool = True,
) -> np.ndarray:
    """Predicted score of every domain after finetuning on the leaves in ``S``.

    Parameters
    ----------
    phi : ndarray, shape (L, n_domains) or (L,)
        Leaf effects (score change of each domain when tuning on the leaf).
    base : ndarray, shape (n_domains,), or float
        Base model scores.
    S : sequence of int or bool mask of shape (L,)
        The leaves (a set: repeats count once).
    kind : {"c", "e"}
        HARP-C or HARP-E (``"harp-c"``/``"harp-e"`` also accepted).
    bounded : bool, default=True
        Clip to [0, 1] (accuracy-like scores); ``False`` for loss reductions.

    Returns
    -------
    ndarray of float64, shape (n_domains,)
        :math:`\\hat y_d(S)` for every domain, active or not.

    Examples
    --------
    >>> import numpy as np
    >>> phi = np.array([[0.3, -0.1], [0.2, 0.0]])
    >>> envelope_values(phi, [0.5, 0.9], [0, 1], kind="c").tolist()
    [0.8, 0.8]
    >>> envelope_values(phi, [0.5, 0.9], [0, 1], kind="e").tolist()
    [1.0, 0.8]
    """
    phi, base = _check_phi_base(phi, base, "envelope_values")
    k = _kind(kind, "envelope_values")
    idx = _check_set(S, len(phi), "envelope_values")
    sub = phi[idx]
    if k == "c":
        # Sum of harms first then one subtraction: same arithmetic as the greedy.
        best = np.maximum(sub, 0.0).max(axis=0, initial=0.0)
        raw = base + best - np.maximum(-sub, 0.0).sum(axis=0)
    else:
        raw = base + sub.sum(axis=0)
    return np.clip(raw, 0.0, 1.0) if bounded else raw


def envelope_value(
    phi: np.ndarray,
    base: np.ndarray | float,
    S: Sequence[int] | np.ndarray,
    *,
    kind: str,
    bounded: bool = True,
    active: np.ndarray | None = None,
) -> float:
    """The HARP objective :math:`J(S)`: the envelope summed over active domains.

    Parameters
    ----------
    phi, base, S, kind, bounded
        As in :func:`envelope_values`.
    active : ndarray of bool, shape (n_domains,), optional
        Domains that count; default: those where some leaf has ``phi > 0``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> phi = np.array([[0.3, -0.1], [0.2, 0.0]])
    >>> round(envelope_value(phi, [0.5, 0.9], [0, 1], kind="c"), 6)  # domain 1 idle
    0.8
    >>> round(envelope_value(phi, [0.5, 0.9], [0, 1], kind="c",
    ...                      active=np.array([True, True])), 6)
    1.6
    """
    phi, base = _check_phi_base(phi, base, "envelope_value")
    act = _check_active(active, phi, "envelope_value")
    values = envelope_values(phi, base, S, kind=kind, bounded=bounded)
    return float(values[act].sum())


@dataclass(frozen=True, eq=False)
class GreedyPath:
    """The greedy order over leaves with its gains, and the best prefix.

    Attributes
    ----------
    order : ndarray of int64, shape (T,)
        Leaves in pick order (every leaf, or the first ``max_leaves``).
    gains : ndarray of float64, shape (T,)
        Marginal gain :math:`J(S_t) - J(S_{t-1})` of each pick.
    values : ndarray of float64, shape (T,)
        :math:`J(S_t)` after each pick.
    prefix : int
        Best-prefix length (see :func:`best_prefix`).
    start : float
        :math:`J(\\emptyset)`, the base scores summed over active domains.
    """

    order: np.ndarray
    gains: np.ndarray
    values: np.ndarray
    prefix: int
    start: float = 0.0

    @property
    def chosen(self) -> np.ndarray:
        """The leaves kept: ``order[:prefix]``."""
        return self.order[: self.prefix]


def best_prefix(gains: Sequence[float] | np.ndarray) -> int:
    """Length of the prefix that maximises the running sum of marginal gains.

    Ties go to the shorter prefix; 0 when no prefix has a positive sum (e.g. all
    gains ``<= 0``). This drops harmful tails of the greedy order while keeping a
    harmful pick that later picks more than make up for.

    Parameters
    ----------
    gains : sequence of float
        Marginal gains in pick order.

    Returns
    -------
    int

    Examples
    --------
    >>> best_prefix([0.3, 0.2, -0.1, 0.05])  # running sums .3 .5 .4 .45
    2
    >>> best_prefix([-0.1, 0.3])  # .2 beats the empty prefix
    2
    >>> best_prefix([0.0, -1.0])
    0
    """
    g = np.asarray(gains, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(g)):
        raise ParameterError("best_prefix: gains must be finite")
    running = np.concatenate([[0.0], np.cumsum(g)])
    return int(np.argmax(running))  # first maximum: the shortest prefix


def greedy_envelope(
    phi: np.ndarray,
    base: np.ndarray | float,
    *,
    kind: str,
    bounded: bool = True,
    active: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    max_leaves: int | None = None,
) -> GreedyPath:
    r"""Greedy over leaves on the HARP objective, then the best-prefix rule.

    Each step adds the leaf whose addition gives the largest :math:`J(S \cup \{g\})`
    (the largest marginal gain; ties to the lowest leaf id), and the greedy goes on
    through every leaf (or ``max_leaves``) even after gains turn negative, so that
    :func:`best_prefix` can see past a harmful pick.

    Parameters
    ----------
    phi : ndarray, shape (L, n_domains) or (L,)
        Leaf effects (e.g. posterior means, or :func:`lcb_effects`).
    base : ndarray, shape (n_domains,), or float
        Base model scores.
    kind : {"c", "e"}
        HARP-C or HARP-E.
    bounded : bool, default=True
        Clip each domain's envelope to [0, 1]; ``False`` for loss reductions.
    active : ndarray of bool, shape (n_domains,), optional
        Domains in the objective; default: those where some leaf has ``phi > 0``.
    sizes : ndarray of int, shape (L,), optional
        Rows per leaf. When given, leaves with a positive gain are ranked by gain per
        row (cost-effectiveness: small leaves that help as much go first), and leaves
        without a positive gain come after them, ranked by raw gain.
    max_leaves : int, optional
        Stop after this many picks (default: all leaves).

    Returns
    -------
    GreedyPath

    Notes
    -----
    Gains are exact, not linearised: with HARP-C a leaf's gain changes as the
    running per-domain max grows (a second helper of the same domain adds nothing),
    and with clipping a gain saturates at the bounds. Each step re-scores every
    remaining leaf in one vectorised pass over an (L, active domains) array, holding
    per domain the running max of :math:`\phi^+` and sum of :math:`\phi^-` (HARP-C)
    or sum of :math:`\phi` (HARP-E): :math:`O(L^2 D)` time, :math:`O(L D)` memory.

    Examples
    --------
    Leaf 0 helps domain 0 by .3, leaf 1 by .2, leaf 2 helps domain 1 but hurts
    domain 0 by .25:

    >>> import numpy as np
    >>> phi = np.array([[0.3, 0.0], [0.2, 0.0], [-0.25, 0.1]])
    >>> path = greedy_envelope(phi, [0.4, 0.5], kind="c")
    >>> path.order.tolist(), np.round(path.gains, 2).tolist(), path.prefix
    ([0, 1, 2], [0.3, 0.0, -0.15], 1)
    >>> path = greedy_envelope(phi, [0.4, 0.5], kind="e")
    >>> path.order.tolist(), np.round(path.gains, 2).tolist(), path.prefix
    ([0, 1, 2], [0.3, 0.2, -0.15], 2)
    """
    where = "greedy_envelope"
    phi, base = _check_phi_base(phi, base, where)
    k = _kind(kind, where)
    act = _check_active(active, phi, where)
    n_leaves = len(phi)
    steps = n_leaves
    if max_leaves is not None:
        integer = isinstance(max_leaves, (int, np.integer))
        if isinstance(max_leaves, bool) or not integer:
            raise ParameterError(f"{where}: max_leaves must be an int or None")
        if max_leaves < 0:
            raise ParameterError(f"{where}: max_leaves must be >= 0, got {max_leaves}")
        steps = min(int(max_leaves), n_leaves)
    size = None
    if sizes is not None:
        size = np.asarray(sizes, dtype=np.float64)
        if size.shape != (n_leaves,) or not np.all(size > 0):
            raise ParameterError(
                f"{where}: sizes must hold one positive row count per leaf ({n_leaves})"
            )

    # Only active domains enter J; work on them alone.
    ph, b = phi[:, act], base[act]
    pos, neg = np.maximum(ph, 0.0), np.maximum(-ph, 0.0)
    run_max = np.zeros(len(b))  # HARP-C: running max of phi+ (0 for the empty set)
    run_harm = np.zeros(len(b))  # HARP-C: running sum of phi-
    run_sum = np.zeros(len(b))  # HARP-E: running sum of phi

    def clip(v: np.ndarray) -> np.ndarray:
        return np.clip(v, 0.0, 1.0) if bounded else v

    current = float(clip(b).sum())
    start = current
    taken = np.zeros(n_leaves, dtype=bool)
    order = np.empty(steps, dtype=np.int64)
    values = np.empty(steps)
    for t in range(steps):
        if k == "c":
            cand = b + np.maximum(run_max, pos) - (run_harm + neg)
        else:
            cand = b + (run_sum + ph)
        j_new = clip(cand).sum(axis=1)  # J(S ∪ {g}) for every leaf g
        key = j_new.copy()
        if size is not None:
            helpful = (j_new > current) & ~taken
            if helpful.any():
                # Cost-effectiveness among the leaves that help; the others wait.
                key = np.where(helpful, (j_new - current) / size, -np.inf)
        key[taken] = -np.inf
        g = int(np.argmax(key))  # first maximum: ties to the lowest leaf id
        taken[g] = True
        order[t] = g
        if k == "c":
            run_max = np.maximum(run_max, pos[g])
            run_harm = run_harm + neg[g]
        else:
            run_sum = run_sum + ph[g]
        current = float(j_new[g])
        values[t] = current
    gains = np.diff(np.concatenate([[start], values]))
    return GreedyPath(
        order=order,
        gains=gains,
        values=values,
        prefix=best_prefix(gains),
        start=start,
    )


def cap_to_budget(
    order_of_leaves: Sequence[int] | np.ndarray,
    leaf_rows: Sequence[np.ndarray],
    budget: int,
    *,
    within_leaf_order: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Rows of the chosen leaves, leaf by leaf in greedy order, cut at ``budget`` rows.

    Order of the result: the leaves in ``order_of_leaves``; inside each leaf, the
    order ``within_leaf_order[leaf]`` (e.g. rows nearest the leaf centroid first) or,
    by default, ascending row index. Only the last leaf reached is cut, keeping its
    first rows in that order. A row that appears in two leaves is kept once, at its
    first place. Fewer rows than ``budget`` is fine: HARP often keeps far fewer.

    Parameters
    ----------
    order_of_leaves : sequence of int
        Chosen leaves in pick order (e.g. :attr:`GreedyPath.chosen`).
    leaf_rows : sequence of ndarray
        ``leaf_rows[leaf]`` are the leaf's row indices (e.g.
        ``[h.leaf_rows(g) for g in range(h.n_leaves)]``).
    budget : int
        Most rows to return (>= 0).
    within_leaf_order : sequence of ndarray, optional
        ``within_leaf_order[leaf]``: the leaf's rows in the order to keep them; must
        hold the same rows as ``leaf_rows[leaf]``.

    Returns
    -------
    ndarray of int64
        Row indices, in the order above.

    Examples
    --------
    >>> import numpy as np
    >>> rows = [np.array([0, 3]), np.array([1, 2, 4])]
    >>> cap_to_budget([1, 0], rows, 4).tolist()
    [1, 2, 4, 0]
    >>> cap_to_budget([1, 0], rows, 4,
    ...               within_leaf_order=[np.array([3, 0]), rows[1]]).tolist()
    [1, 2, 4, 3]
    """
    where = "cap_to_budget"
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ParameterError(
            f"{where}: budget must be an int row count, got {budget!r}"
        )
    if budget < 0:
        raise ParameterError(f"{where}: budget must be >= 0, got {budget}")
    leaves = np.asarray(order_of_leaves, dtype=np.int64).reshape(-1)
    n_leaves = len(leaf_rows)
    if leaves.size and (leaves.min() < 0 or leaves.max() >= n_leaves):
        raise ParameterError(
            f"{where}: order_of_leaves holds ids outside 0..{n_leaves - 1}"
        )
    if within_leaf_order is not None and len(within_leaf_order) != n_leaves:
        raise ParameterError(
            f"{where}: within_leaf_order needs one array per leaf ({n_leaves}), got "
            f"{len(within_leaf_order)}"
        )
    out: list[np.ndarray] = []
    seen: set[int] = set()
    count = 0
    for g in leaves.tolist():
        if count >= budget:
            break
        rows = np.asarray(leaf_rows[g], dtype=np.int64).reshape(-1)
        if within_leaf_order is None:
            rows = np.sort(rows)
        else:
            ordered = np.asarray(within_leaf_order[g], dtype=np.int64).reshape(-1)
            if not np.array_equal(np.sort(ordered), np.sort(rows)):
                raise ParameterError(
                    f"{where}: within_leaf_order[{g}] must be a reordering of "
                    f"leaf_rows[{g}]"
                )
            rows = ordered
        if seen:
            rows = rows[[int(r) not in seen for r in rows]]
        rows = rows[: budget - count]
        seen.update(rows.tolist())
        out.append(rows)
        count += len(rows)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def lcb_effects(mean: np.ndarray, var: np.ndarray, kappa: float) -> np.ndarray:
    """Lower-confidence-bound effects ``mean - kappa * sqrt(var)``.

    Feeding these to :func:`greedy_envelope` instead of the posterior means makes the
    selection cautious: a leaf must help even when its effect is ``kappa`` posterior
    standard deviations below its mean (and its harms count ``kappa`` sd larger).

    Parameters
    ----------
    mean, var : ndarray, same shape
        Posterior means and variances (e.g. :attr:`Posterior.mean`, ``.var``).
    kappa : float
        Number of standard deviations, ``>= 0`` (0 gives the means back).

    Returns
    -------
    ndarray of float64

    Examples
    --------
    >>> lcb_effects([0.3, 0.1], [0.01, 0.04], 1.0).round(6).tolist()
    [0.2, -0.1]
    """
    mean = np.asarray(mean, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    if mean.shape != var.shape:
        raise ParameterError(
            f"lcb_effects: mean {mean.shape} and var {var.shape} must match"
        )
    if isinstance(kappa, bool) or not np.isfinite(kappa) or kappa < 0:
        raise ParameterError(
            f"lcb_effects: kappa must be a finite number >= 0, got {kappa!r}"
        )
    if np.any(var < 0):
        raise ParameterError("lcb_effects: variances must be >= 0")
    if kappa == 0:
        return mean.copy()  # avoids 0 * inf = nan for domains never measured
    return mean - kappa * np.sqrt(var)
