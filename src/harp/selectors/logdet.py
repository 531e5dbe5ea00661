"""The one greedy log-determinant engine behind Fisher / D-optimal, SPICE and DPP.

Objective, for rows ``g_i`` of a feature matrix ``G`` (n × D) and a selected set ``S``::

    f(S) = log det(I_D + α Σ_{i∈S} g_i g_iᵀ) = log det(I_|S| + α G_S G_Sᵀ)

The gain of a row ``x`` is ``Δ_x(S) = log(1 + α q_x)`` with ``q_x = g_xᵀ M_S g_x`` and
``M_S = (I + α F_S)⁻¹``. ``M`` is kept implicitly as ``I − α U Uᵀ`` (one column
``u`` per pick), so every quantity costs O(k·D) per row and the whole greedy
O(n·k·D), never an n × n kernel.

This module is pure numerics: no model code, no I/O beyond reading the rows it is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from harp.core.errors import NumericalError, ParameterError

__all__ = ["GreedyLogDet", "GreedyTrace", "default_alpha", "greedy_logdet"]

logger = logging.getLogger(__name__)

#: Strategies accepted by :class:`GreedyLogDet`.
STRATEGIES = ("exact", "lazy", "stochastic")

#: Most pending ``u`` columns before every row's ``q`` is refreshed with one GEMM.
#: Larger blocks run the GEMM nearer the machine's peak but leave the bounds staler
#: (more rows must be evaluated exactly between refreshes); refreshes usually come
#: earlier, by the ski-rental rule below.
_REFRESH_EVERY = 256

#: Fewest pending columns worth a refresh (a GEMM with fewer is little faster than
#: matvecs), and how much slower per flop the frontier's matvecs run than that GEMM.
_REFRESH_MIN = 16
_MATVEC_PENALTY = 4

#: Scores within ``_TIE_RTOL·max(1, |best|)`` of the best count as tied; ties go to the
#: lowest row index. Rounding differs between the refresh and the incremental path by
#: ~1e-15, so exact ties (duplicate rows) must not be decided by rounding noise.
_TIE_RTOL = 1e-10

#: Inputs that are not float64 (or are normalised) are copied to float64 in memory when
#: the copy takes at most this many bytes; larger ones (e.g. a big memmap) stream.
_CACHE_BYTES = 1 << 30

#: Rows admitted at once when the frontier is empty (amortises the small GEMM).
_ADMIT_CHUNK = 32

#: ``M`` is materialised as a D × D matrix once it is cheaper than ``U`` (k ≥ D/2) and
#: only up to this D (4096² float64 = 128 MiB).
_MAX_DENSE_DIM = 4096

#: Columns of ``U`` folded into the dense ``M`` at once (a BLAS3 rank-b update).
_FOLD_EVERY = 128


@dataclass(frozen=True, eq=False)
class GreedyTrace:
    """What one greedy call picked and why.

    Parameters
    ----------
    indices : numpy.ndarray
        int64 row indices (into the candidates passed) in pick order.
    gains : numpy.ndarray
        Log-det gain ``Δ`` of each pick given everything picked before it.
    scores : numpy.ndarray
        Selection criterion ``Δ − λ·conflict`` of each pick.
    conflicts : numpy.ndarray
        ``max(0, −cos(g_x, s))`` of each pick, ``s`` the sum of the rows picked before.
    epsilons : numpy.ndarray
        ``Δ − log(1 + α‖g‖²)`` of each pick (≤ 0): what redundancy cost it.
    objective : numpy.ndarray
        ``f(S)`` after each pick, including any state conditioned on.
    alpha : float
        The ``α`` used.
    stopped_early : bool
        Whether the ω rule (``early_stop``) fired. Fewer picks than asked with
        ``stopped_early=False`` means no row with a positive gain was left.
    initial_gains : numpy.ndarray
        ``Δ_i`` of every candidate row given the state at the start of the call
        (``log(1 + α‖g_i‖²)`` when nothing was selected before); shape ``(m,)``.
    evaluations : int
        Number of exact candidate gain evaluations outside the bulk refreshes (a naive
        greedy would need about ``m·k``).
    """

    indices: np.ndarray
    gains: np.ndarray
    scores: np.ndarray
    conflicts: np.ndarray
    epsilons: np.ndarray
    objective: np.ndarray
    alpha: float
    stopped_early: bool
    initial_gains: np.ndarray
    evaluations: int

    def __len__(self) -> int:
        return int(len(self.indices))

    def to_dict(self) -> dict[str, Any]:
        """Return the trace as plain Python types (lists, floats), ready for JSON.

        Returns
        -------
        dict
            One key per field.
        """
        return {
            "indices": [int(i) for i in self.indices],
            "gains": [float(v) for v in self.gains],
            "scores": [float(v) for v in self.scores],
            "conflicts": [float(v) for v in self.conflicts],
            "epsilons": [float(v) for v in self.epsilons],
            "objective": [float(v) for v in self.objective],
            "alpha": float(self.alpha),
            "stopped_early": bool(self.stopped_early),
            "initial_gains": [float(v) for v in self.initial_gains],
            "evaluations": int(self.evaluations),
        }


def _is_row_source(data: Any) -> bool:
    """An array-like that reads row slices and gathers on demand (a store's rows)."""
    return all(hasattr(data, a) for a in ("shape", "dtype", "ndim", "__getitem__"))


class _Rows:
    """Read access to a feature matrix in float64 row blocks.

    Memmaps and row sources (``FeatureStore.rows()``: anything with ``shape``,
    ``dtype``, ``ndim`` and slice / integer-array indexing) are never loaded whole:
    blocks and gathered rows are read on demand, so data larger than RAM streams.
    """

    def __init__(self, data: Any, *, normalize: bool = False, name: str = "features"):
        if not isinstance(data, np.ndarray) and not _is_row_source(data):
            data = np.asarray(data)
        if data.ndim != 2:
            raise ParameterError(
                f"{name} must be a 2-D array (rows × dim); got shape {data.shape}. "
                "Reshape a single row with x[None, :]."
            )
        if not (
            np.issubdtype(data.dtype, np.floating)
            or np.issubdtype(data.dtype, np.integer)
        ):
            raise ParameterError(
                f"{name} must hold real numbers; got dtype {data.dtype}."
            )
        self.data = data
        self.n, self.dim = (int(s) for s in data.shape)
        self.normalize = normalize
        self.name = name
        # A float64 copy, filled during the first full pass when it is small enough:
        # the exact strategy streams every row again at each refresh, and converting
        # float32 blocks each time costs as much as the GEMM itself.
        self._cache: np.ndarray | None = None
        self._cached = False
        self._want_cache = (
            data.dtype != np.float64 or normalize
        ) and self.n * self.dim * 8 <= _CACHE_BYTES

    def _finish(self, rows: np.ndarray) -> np.ndarray:
        if not self.normalize:
            # float64 C-ordered slices of an in-memory array need no copy.
            return np.ascontiguousarray(rows, dtype=np.float64)
        rows = np.array(rows, dtype=np.float64, copy=True, order="C")
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        # Zero rows stay zero: they carry no information and are never picked.
        np.divide(rows, norms[:, None], out=rows, where=norms[:, None] > 0)
        return rows

    def block(self, start: int, stop: int) -> np.ndarray:
        if self._cache is not None and self._cached:
            return self._cache[start:stop]
        return self._finish(self.data[start:stop])

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if self._cache is not None and self._cached:
            return self._cache[idx]
        if len(idx) <= 1:
            return self._finish(self.data[idx])
        # Sorted reads are sequential on a memmap; undo the sort afterwards.
        order = np.argsort(idx, kind="stable")
        rows = self._finish(self.data[idx[order]])
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def blocks(self, block_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        fill = self._want_cache and not self._cached
        cache = self._cache
        if fill and cache is None:
            cache = self._cache = np.empty((self.n, self.dim))
        for start in range(0, self.n, block_rows):
            stop = min(start + block_rows, self.n)
            blk = self.block(start, stop)
            if fill and cache is not None:
                cache[start:stop] = blk
            yield start, stop, blk
        self._cached = self._cached or fill


def _bad_rows_error(bad: list[int], total: int, name: str) -> NumericalError:
    shown = ", ".join(str(i) for i in bad[:5])
    more = f" (first 5 of {total} shown)" if total > 5 else ""
    return NumericalError(
        f"{name} rows [{shown}]{more} contain NaN or Inf. Recompute these rows "
        "(e.g. a diverged gradient) or drop them before selection."
    )


def default_alpha(
    features: Any, *, block_rows: int = 8192, normalize: bool = False
) -> float:
    """Return the default ``α = 1 / median_i ‖g_i‖²`` over rows with a nonzero norm.

    With this ``α`` the typical row has ``α‖g‖² ≈ 1``: its first gain is about ``log 2``
    and the objective neither saturates (huge ``α``: every row looks new) nor turns
    linear (tiny ``α``: ``f`` ≈ ``α·trace``, redundancy ignored).

    Parameters
    ----------
    features : array_like, numpy.memmap or row source
        ``(n, D)`` rows; memmaps and row sources are read in row blocks.
    block_rows : int, default 8192
        Rows read at once.
    normalize : bool, default False
        Measure the rows after L2 normalisation (then ``α`` is 1 up to rounding).

    Returns
    -------
    float
        The default ``α``; ``1.0`` when every row is zero.

    Raises
    ------
    ParameterError
        ``features`` is not 2-D.
    NumericalError
        Some rows contain NaN or Inf (their indices are named).

    Examples
    --------
    >>> import numpy as np
    >>> default_alpha(np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [3.0, 0.0]]))
    0.25
    """
    rows = _Rows(features, normalize=normalize)
    sq = np.empty(rows.n)
    bad: list[int] = []
    nbad = 0
    for start, stop, blk in rows.blocks(max(int(block_rows), 1)):
        finite = np.isfinite(blk).all(axis=1)
        if not finite.all():
            where = np.flatnonzero(~finite) + start
            nbad += len(where)
            bad.extend(int(i) for i in where[: max(0, 5 - len(bad))])
            blk = np.where(finite[:, None], blk, 0.0)
        sq[start:stop] = np.einsum("ij,ij->i", blk, blk)
    if nbad:
        raise _bad_rows_error(bad, nbad, "features")
    nonzero = sq[sq > 0]
    if len(nonzero) == 0:
        return 1.0
    return float(1.0 / np.median(nonzero))


class _Frontier:
    """Rows whose gain is known exactly *now* (the lazy frontier of the exact strategy).

    Their rows are cached in float64 so that each pick updates them with one small
    matvec; everything outside is only known through a stale upper bound.
    """

    def __init__(self, dim: int, track_conflict: bool):
        self.dim = dim
        self.track = track_conflict
        self.clear()

    def clear(self) -> None:
        self.size = 0
        self.idx = np.empty(0, dtype=np.int64)
        self.rows = np.empty((0, self.dim))
        self.q = np.empty(0)
        self.c = np.empty(0)
        self.sq = np.empty(0)

    def add(self, idx, rows, q, c, sq) -> None:
        need = self.size + len(idx)
        if need > len(self.idx):
            cap = max(need, 2 * len(self.idx), 64)
            for name, shape in (
                ("idx", (cap,)),
                ("rows", (cap, self.dim)),
                ("q", (cap,)),
                ("c", (cap,)),
                ("sq", (cap,)),
            ):
                old = getattr(self, name)
                new = np.empty(shape, dtype=old.dtype)
                new[: self.size] = old[: self.size]
                setattr(self, name, new)
        s, e = self.size, need
        self.idx[s:e] = idx
        self.rows[s:e] = rows
        self.q[s:e] = q
        self.c[s:e] = c
        self.sq[s:e] = sq
        self.size = need

    def keep(self, mask: np.ndarray) -> None:
        n = int(mask.sum())
        if n == self.size:
            return
        for name in ("idx", "rows", "q", "c", "sq"):
            arr = getattr(self, name)
            arr[:n] = arr[: self.size][mask]
        self.size = n

    def remove(self, pos: int) -> None:
        # Swap with the last row: O(D) instead of compacting the whole cache.
        last = self.size - 1
        if pos != last:
            for name in ("idx", "rows", "q", "c", "sq"):
                arr = getattr(self, name)
                arr[pos] = arr[last]
        self.size = last


class _PickBookkeeping:
    """The per-pick arithmetic both engines share (numpy arrays or torch tensors).

    A subclass holds ``alpha``, ``conflict_weight``, ``early_stop``, the running sum
    ``_s`` of picked rows, ``_k``, ``_objective``, ``_first_gain`` and ``_stopped``.
    """

    alpha: float
    conflict_weight: float
    early_stop: float | None
    _s: Any
    _k: int
    _objective: float
    _first_gain: float | None
    _stopped: bool

    @property
    def n_selected(self) -> int:
        """Rows selected so far over all ``select`` calls."""
        return self._k

    @property
    def objective(self) -> float:
        """``f(S)`` of everything selected so far."""
        return self._objective

    @property
    def stopped(self) -> bool:
        """Whether the ω rule fired (further ``select`` calls pick nothing)."""
        return self._stopped

    def _pick_terms(self, g: Any, v: Any) -> tuple[float, float, float, float]:
        """``(q, gain, ‖g‖², conflict)`` of a row ``g`` with ``v = M g``."""
        ss = gs = 0.0
        if self._k > 0:
            ss, gs = float(self._s @ self._s), float(g @ self._s)
        return self._terms(float(g @ v), float(g @ g), ss, gs)

    def _terms(
        self, gv: float, gg: float, ss: float, gs: float
    ) -> tuple[float, float, float, float]:
        """``(q, gain, ‖g‖², conflict)`` from the dot products ``gᵀv``, ``gᵀg``,
        ``sᵀs`` and ``gᵀs`` (``s``: the running sum of picked rows)."""
        # q from the same v that defines u keeps U self-consistent (M stays ≻ 0).
        q = max(gv, 0.0)
        gain = math.log1p(self.alpha * q)
        conflict = 0.0
        if self._k > 0 and gg > 0:
            snorm = math.sqrt(ss)
            if snorm > 0:
                conflict = min(max(-gs / (math.sqrt(gg) * snorm), 0.0), 1.0)
        return q, gain, gg, conflict

    def _omega_fires(self, gain: float, acc: _Acc) -> bool:
        """Whether the ω rule stops the run at this gain (and record that it did)."""
        if (
            self.early_stop is not None
            and self._first_gain is not None
            and gain < self.early_stop * self._first_gain
        ):
            self._stopped = True
            acc.fired = True
            return True
        return False

    def _record(
        self, x: int, g: Any, gain: float, conflict: float, sq: float, acc: _Acc
    ) -> None:
        """Count row ``x`` (its factor ``u`` already stored) in the set's totals."""
        self._k += 1
        self._s += g
        self._objective += gain
        if self._first_gain is None:
            self._first_gain = gain
        acc.add(
            x,
            gain,
            gain - self.conflict_weight * conflict,
            conflict,
            gain - math.log1p(self.alpha * sq),
            self._objective,
        )


class GreedyLogDet(_PickBookkeeping):
    """Stateful greedy maximiser of ``log det(I + α Σ_{i∈S} g_i g_iᵀ)`` (+ SPICE).

    The selected set so far (the ``U`` factors, the running sum of picked rows, the
    objective and the first gain) persists across :meth:`select` calls, so a caller can
    pick from successive candidate pools conditioned on everything picked before
    (SPICE's paper mode) or from one pool at once (global mode).

    Parameters
    ----------
    dim : int
        Feature dimension ``D``.
    alpha : float
        Scale ``α > 0`` of the information matrix (see :func:`default_alpha`).
    conflict_weight : float, default 0.0
        SPICE's ``λ ≥ 0``: the criterion is ``Δ_x − λ·max(0, −cos(g_x, s))`` with ``s``
        the sum (equivalently the mean) of the rows picked so far. ``0`` is pure
        Fisher / D-optimal design.
    early_stop : float or None, default None
        SPICE+'s ``ω ∈ (0, 1]``: stop before adding a pick whose gain is below ``ω``
        times the gain of the first pick ever made by this engine. ``None``: off.
    strategy : {"exact", "lazy", "stochastic"}, default "exact"
        ``"exact"``: lazy evaluation with blocked (GEMM) refresh of every bound; the
        picks equal a naive greedy that recomputes every gain each step. ``"lazy"``:
        textbook lazy greedy (a heap of stale bounds); same picks, slower on large
        inputs. ``"stochastic"``: stochastic greedy (each pick looks at a random sample
        of ``(m/k)·log(1/ε)`` remaining rows); ``(1 − 1/e − ε)`` in expectation.
    epsilon : float, default 0.01
        ``ε ∈ (0, 1)`` of the stochastic strategy.
    block_rows : int, default 8192
        Rows read and multiplied at once (memory ≈ ``block_rows · D · 8`` bytes).
    seed : int or None, default 0
        Seed of the stochastic strategy's sampler.

    Attributes
    ----------
    n_selected : int
        Rows selected so far, over all calls.
    objective : float
        ``f(S)`` of everything selected so far.
    stopped : bool
        Whether the ω rule fired; further :meth:`select` calls then pick nothing.

    See Also
    --------
    greedy_logdet : one-shot global greedy over one feature matrix.

    Notes
    -----
    Picking ``x`` with ``q_x = g_xᵀ M g_x`` appends ``u = M g_x / sqrt(1 + α q_x)`` to
    ``U`` so that ``M ← M − α u uᵀ`` and every ``q_i ← q_i − α (g_i·u)²``. The exact
    strategy never does the last update row by row (a memory-bound pass over ``G`` per
    pick). ``q`` only decreases and the conflict is ``≥ 0``, so ``log(1 + α q_i)`` at
    the last refresh bounds the current score from above. Between refreshes only the
    frontier (rows whose bound could beat the best exact score, examined in bound
    order) is evaluated exactly, using the few pending ``u`` columns, and is kept
    exact by one small matvec per pick. Once that frontier work has cost about as much
    as a refresh (or after ``_REFRESH_EVERY`` picks) every ``q_i`` is refreshed with
    one GEMM ``G_block @ U_new`` streamed over row blocks. Time ``O(n·k·D)`` at BLAS3
    speed, memory ``O(k·D + n)`` plus the frontier's cached rows, a ``D × D`` copy of
    ``M`` once ``k ≥ D/2`` (then ``M g_x`` costs ``D²`` instead of ``2kD``) and, for
    non-float64 inputs up to 1 GiB as float64, a float64 copy of the rows (larger
    inputs, e.g. big memmaps, are streamed block by block at every refresh).
    On isotropic data (all ``q_i`` nearly equal) the frontier is large and the bounds
    help least; on gradient-like data with a decaying spectrum they help most.

    References
    ----------
    .. [1] SPICE: Submodular Penalized Information–Conflict Selection, arXiv 2601.23155.
    .. [2] L. Chen, G. Zhang, H. Zhou. Fast greedy MAP inference for determinantal point
       process to improve recommendation diversity. NeurIPS 2018, arXiv 1709.05135.
    .. [3] M. Minoux. Accelerated greedy algorithms for maximizing submodular set
       functions. 1978 (lazy greedy).
    .. [4] B. Mirzasoleiman et al. Lazier than lazy greedy. AAAI 2015, arXiv 1409.7938.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> engine = GreedyLogDet(4, alpha=1.0)
    >>> first = engine.select(rng.standard_normal((20, 4)), 3)
    >>> second = engine.select(rng.standard_normal((20, 4)), 3)  # conditioned on first
    >>> engine.n_selected
    6
    """

    def __init__(
        self,
        dim: int,
        *,
        alpha: float,
        conflict_weight: float = 0.0,
        early_stop: float | None = None,
        strategy: str = "exact",
        epsilon: float = 0.01,
        block_rows: int = 8192,
        seed: int | None = 0,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ParameterError(f"dim must be a positive int; got {dim!r}.")
        alpha = _as_float("alpha", alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ParameterError(
                f"alpha must be a finite number > 0; got {alpha!r}. "
                "Leave it unset to use default_alpha (1 / median squared row norm)."
            )
        conflict_weight = _as_float("conflict_weight", conflict_weight)
        if not (conflict_weight >= 0 and math.isfinite(conflict_weight)):
            raise ParameterError(
                "conflict_weight must be a finite number >= 0; "
                f"got {conflict_weight!r}."
            )
        if early_stop is not None:
            early_stop = _as_float("early_stop", early_stop)
            if not (0 < early_stop <= 1):
                raise ParameterError(
                    f"early_stop must be in (0, 1] or None; got {early_stop!r} "
                    "(SPICE+ uses 0.5)."
                )
        if strategy not in STRATEGIES:
            raise ParameterError(
                f"strategy must be one of {', '.join(map(repr, STRATEGIES))}; "
                f"got {strategy!r}."
            )
        epsilon = _as_float("epsilon", epsilon)
        if not (0 < epsilon < 1):
            raise ParameterError(f"epsilon must be in (0, 1); got {epsilon!r}.")
        if (
            isinstance(block_rows, bool)
            or not isinstance(block_rows, (int, np.integer))
            or block_rows < 1
        ):
            raise ParameterError(
                f"block_rows must be a positive int; got {block_rows!r}."
            )
        self.dim = int(dim)
        self.alpha = alpha
        self.conflict_weight = conflict_weight
        self.early_stop = early_stop
        self.strategy = strategy
        self.epsilon = epsilon
        self.block_rows = int(block_rows)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        # State of the selected set. U's columns are stored as rows of _Ut (k × D) so
        # appending is cheap and U_pending.T is a free transposed view for BLAS.
        self._Ut = np.empty((0, self.dim))
        self._k = 0
        self._s = np.zeros(self.dim)
        self._objective = 0.0
        self._first_gain: float | None = None
        self._stopped = False
        self._M: np.ndarray | None = None  # dense I − α U[:, :_mk] U[:, :_mk]ᵀ
        self._mk = 0

    # -- public API -----------------------------------------------------------------
    def select(
        self, candidates: Any, k: int, *, normalize: bool = False
    ) -> GreedyTrace:
        """Pick up to ``k`` rows of ``candidates`` given everything picked before.

        Parameters
        ----------
        candidates : array_like, numpy.memmap or row source
            ``(m, dim)`` rows; any real dtype (float32 memmaps and a feature store's
            :meth:`~harp.features.FeatureStore.rows` are read in blocks).
        k : int
            Maximum number of picks. Fewer are made when no row with a positive gain
            is left (e.g. all-zero rows) or the ω rule fires.
        normalize : bool, default False
            L2-normalise each row as it is read (the DPP / cosine-kernel variant).

        Returns
        -------
        GreedyTrace
            The picks (indices into ``candidates``) with their diagnostics.

        Raises
        ------
        ParameterError
            ``k`` is negative or not an int; ``candidates`` is not 2-D or its width
            is not ``dim``.
        NumericalError
            Some rows contain NaN or Inf (the first few indices are named).
        """
        return self._select(
            _Rows(candidates, normalize=normalize, name="candidates"), k
        )

    # -- internals ------------------------------------------------------------------
    def _select(self, src: _Rows, k: int) -> GreedyTrace:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ParameterError(f"k must be an int >= 0; got {k!r}.")
        k = int(k)
        if src.dim != self.dim:
            raise ParameterError(
                f"{src.name} have {src.dim} columns but the engine was built for "
                f"dim={self.dim}; project them to the same dimension."
            )
        q0, c0, sq = self._initial_pass(src)
        with np.errstate(invalid="ignore"):
            init_gains = np.log1p(self.alpha * q0)
        acc = _Acc()
        if k > 0 and not self._stopped and src.n > 0:
            run = {
                "exact": self._run_exact,
                "lazy": self._run_lazy,
                "stochastic": self._run_stochastic,
            }[self.strategy]
            run(src, k, q0.copy(), c0.copy(), sq, acc)
        return acc.trace(self.alpha, self._stopped, init_gains)

    def _initial_pass(self, src: _Rows):
        """Validate rows; compute ``q_i``, ``g_i·s`` and ``‖g_i‖²`` given the state."""
        n = src.n
        q = np.empty(n)
        c = np.zeros(n)
        sq = np.empty(n)
        bad: list[int] = []
        nbad = 0
        use_m = self._M is not None
        if use_m:
            self._fold(force=True)
        Uk = self._Ut[: self._k]
        for start, stop, blk in src.blocks(self.block_rows):
            finite = np.isfinite(blk).all(axis=1)
            if not finite.all():
                where = np.flatnonzero(~finite) + start
                nbad += len(where)
                bad.extend(int(i) for i in where[: max(0, 5 - len(bad))])
                continue
            if nbad:  # keep scanning only to count/name the bad rows
                continue
            sq[start:stop] = np.einsum("ij,ij->i", blk, blk)
            if self._k == 0:
                q[start:stop] = sq[start:stop]
            elif use_m:
                q[start:stop] = np.einsum("ij,ij->i", blk @ self._M, blk)
            else:
                p = blk @ Uk.T
                q[start:stop] = sq[start:stop] - self.alpha * np.einsum(
                    "ij,ij->i", p, p
                )
            if self.conflict_weight > 0 and self._k > 0:
                c[start:stop] = blk @ self._s
        if nbad:
            raise _bad_rows_error(bad, nbad, src.name)
        np.maximum(q, 0.0, out=q)
        q[sq == 0] = 0.0
        return q, c, sq

    def _tol(self, best: float) -> float:
        return _TIE_RTOL * max(1.0, abs(best))

    def _scores(self, q: np.ndarray, c: np.ndarray, sq: np.ndarray) -> np.ndarray:
        gain = np.log1p(self.alpha * q)
        if self.conflict_weight == 0 or self._k == 0:
            return gain
        snorm = math.sqrt(float(self._s @ self._s))
        if snorm == 0:
            return gain
        conf = np.clip(-c / (np.sqrt(sq) * snorm), 0.0, 1.0)
        return gain - self.conflict_weight * conf

    def _pick_among(self, idx: np.ndarray, scores: np.ndarray) -> tuple[int, float]:
        """Position of the lowest index whose score ties the best (within tolerance)."""
        best = float(scores.max())
        tied = np.flatnonzero(scores >= best - self._tol(best))
        pos = int(tied[np.argmin(idx[tied])])
        return pos, best

    def _apply_m(self, g: np.ndarray) -> np.ndarray:
        """``M g`` via the dense ``M`` plus unfolded columns, or via ``U`` alone."""
        if self._M is not None:
            v = self._M @ g
            lo = self._mk
        else:
            v = g.copy()
            lo = 0
        if self._k > lo:
            Up = self._Ut[lo : self._k]
            v -= self.alpha * (Up.T @ (Up @ g))
        return v

    def _fold(self, force: bool = False) -> None:
        """Keep the dense ``M`` (if worth having) within ``_FOLD_EVERY`` columns."""
        if self._M is None:
            # Materialise once ``M g`` (D² flops) beats ``U (Uᵀ g)`` (2kD flops).
            if self.dim <= _MAX_DENSE_DIM and 2 * self._k >= self.dim and self._k >= 2:
                Uk = self._Ut[: self._k]
                self._M = np.eye(self.dim) - self.alpha * (Uk.T @ Uk)
                self._mk = self._k
            return
        if self._k - self._mk >= (1 if force else _FOLD_EVERY):
            Up = self._Ut[self._mk : self._k]
            self._M -= self.alpha * (Up.T @ Up)
            self._mk = self._k

    def _commit(self, src: _Rows, x: int, acc: _Acc) -> bool:
        """Add row ``x`` to the set (unless the ω rule fires); return whether added."""
        g = src.take(np.array([x]))[0]
        v = self._apply_m(g)
        q, gain, sq, conflict = self._pick_terms(g, v)
        if self._omega_fires(gain, acc):
            return False
        u = v / math.sqrt(1.0 + self.alpha * q)
        if self._k == len(self._Ut):
            grown = np.empty((max(16, 2 * len(self._Ut)), self.dim))
            grown[: self._k] = self._Ut[: self._k]
            self._Ut = grown
        self._Ut[self._k] = u
        self._record(x, g, gain, conflict, sq, acc)
        self._fold()
        return True

    # -- strategies -------------------------------------------------------------------
    def _run_exact(self, src, k, q, c, sq, acc) -> None:
        alpha, lam = self.alpha, self.conflict_weight
        track = lam > 0
        alive = q > 0
        frontier = _Frontier(self.dim, track)
        k_ref = self._k  # q and c are exact as of this many U columns ...
        s_ref = self._s.copy()  # ... and this running sum

        def rebuild():
            idx = np.flatnonzero(alive)
            order = idx[np.argsort(-q[idx], kind="stable")]
            return order, -q[order]

        order, negq = rebuild()
        ptr = 0
        picks = 0
        work = 0
        while picks < k:
            # Lazy search: admit outside rows in bound order until no outside bound can
            # reach the best exact score (within the tie band).
            while True:
                if frontier.size:
                    sc = self._scores(
                        frontier.q[: frontier.size],
                        frontier.c[: frontier.size],
                        frontier.sq[: frontier.size],
                    )
                    best = float(sc.max())
                    floor = best - self._tol(best)
                else:
                    best = floor = -math.inf
                if ptr >= len(order):
                    break
                if frontier.size and math.log1p(-alpha * negq[ptr]) < floor:
                    break
                if frontier.size:
                    thr = math.expm1(floor) / alpha
                    new = int(np.searchsorted(negq, -thr, side="right"))
                    new = max(new, ptr + 1)
                else:
                    new = ptr + _ADMIT_CHUNK
                new = min(new, len(order))
                idx = order[ptr:new]
                ptr = new
                rows = src.take(idx)
                qi = q[idx].copy()
                if self._k > k_ref:
                    p = rows @ self._Ut[k_ref : self._k].T
                    qi -= alpha * np.einsum("ij,ij->i", p, p)
                ci = c[idx] + rows @ (self._s - s_ref) if track else c[idx]
                acc.evaluations += len(idx)
                ok = qi > 0
                frontier.add(idx[ok], rows[ok], qi[ok], ci[ok], sq[idx][ok])
                alive[idx[~ok]] = False
            if frontier.size == 0:
                return
            size = frontier.size
            sc = self._scores(frontier.q[:size], frontier.c[:size], frontier.sq[:size])
            pos, _ = self._pick_among(frontier.idx[:size], sc)
            x = int(frontier.idx[pos])
            if not self._commit(src, x, acc):
                return
            picks += 1
            alive[x] = False
            frontier.remove(pos)
            # Ski rental: refresh once the frontier work since the last refresh (matvecs
            # ~_MATVEC_PENALTY× slower per flop than a GEMM) has cost as much as a
            # refresh would, or after _REFRESH_EVERY picks.
            work += frontier.size
            pending = self._k - k_ref
            if pending >= _REFRESH_EVERY or (
                pending >= _REFRESH_MIN and work * _MATVEC_PENALTY >= len(order)
            ):
                work = 0
                self._refresh(src, q, c, k_ref, s_ref, track)
                k_ref, s_ref = self._k, self._s.copy()
                alive &= q > 0
                frontier.clear()
                order, negq = rebuild()
                ptr = 0
            elif frontier.size:
                # Bring the frontier up to date with the new u (and the new row in s).
                size = frontier.size
                u = self._Ut[self._k - 1]
                rows = frontier.rows[:size]
                if track:
                    g = src.take(np.array([x]))[0]
                    p = rows @ np.stack([u, g], axis=1)
                    frontier.q[:size] -= alpha * p[:, 0] ** 2
                    frontier.c[:size] += p[:, 1]
                else:
                    frontier.q[:size] -= alpha * (rows @ u) ** 2
                acc.evaluations += size
                if not (frontier.q[:size] > 0).all():
                    frontier.keep(frontier.q[:size] > 0)

    def _refresh(self, src, q, c, k_ref, s_ref, track) -> None:
        """Apply the pending ``u`` columns to every ``q_i`` with one GEMM per block."""
        Up = self._Ut[k_ref : self._k]
        cols = Up.T
        if track:
            cols = np.concatenate([cols, (self._s - s_ref)[:, None]], axis=1)
        npend = len(Up)
        for start, stop, blk in src.blocks(self.block_rows):
            p = blk @ cols
            pu = p[:, :npend]
            q[start:stop] -= self.alpha * np.einsum("ij,ij->i", pu, pu)
            if track:
                c[start:stop] += p[:, npend]
        np.maximum(q, 0.0, out=q)

    def _exact_rows(self, src, idx, q, ver):
        """Bring ``q[idx]`` from their versions to now; return rows and exact c."""
        rows = src.take(idx)
        lo = int(ver[idx].min()) if len(idx) else self._k
        if self._k > lo:
            p = rows @ self._Ut[lo : self._k].T
            # Column j of p only applies to rows whose q predates u_{lo+j}.
            mask = np.arange(lo, self._k)[None, :] >= ver[idx][:, None]
            q[idx] -= self.alpha * np.einsum("ij,ij->i", p * mask, p)
            q[idx] = np.maximum(q[idx], 0.0)
        ver[idx] = self._k
        c = rows @ self._s if self.conflict_weight > 0 else np.zeros(len(idx))
        return rows, c

    def _run_lazy(self, src, k, q, c, sq, acc) -> None:
        import heapq

        alpha = self.alpha
        ver = np.full(src.n, self._k, dtype=np.int64)
        heap = [(-math.log1p(alpha * q[i]), int(i)) for i in np.flatnonzero(q > 0)]
        heapq.heapify(heap)
        picks = 0
        while picks < k and heap:
            best = -math.inf
            seen: list[int] = []
            seen_sc: list[float] = []
            while heap and -heap[0][0] >= best - self._tol(best):
                _, i = heapq.heappop(heap)
                idx = np.array([i])
                _, ci = self._exact_rows(src, idx, q, ver)
                acc.evaluations += 1
                if q[i] <= 0:
                    continue
                sc = float(self._scores(q[idx], np.asarray(ci, float), sq[idx])[0])
                seen.append(i)
                seen_sc.append(sc)
                best = max(best, sc)
            if not seen:
                return
            seen_arr = np.array(seen, dtype=np.int64)
            pos, _ = self._pick_among(seen_arr, np.array(seen_sc))
            x = int(seen_arr[pos])
            if not self._commit(src, x, acc):
                return
            picks += 1
            for j, i in enumerate(seen):
                if j != pos:
                    # Δ only decreases, so the current gain bounds every later score.
                    heapq.heappush(heap, (-math.log1p(alpha * q[i]), i))

    def _run_stochastic(self, src, k, q, c, sq, acc) -> None:
        alive = q > 0
        ver = np.full(src.n, self._k, dtype=np.int64)
        sample = max(1, math.ceil(src.n / k * math.log(1.0 / self.epsilon)))
        picks = 0
        while picks < k:
            pool = np.flatnonzero(alive)
            if len(pool) == 0:
                return
            if len(pool) > sample:
                idx = np.sort(self._rng.choice(pool, size=sample, replace=False))
            else:
                idx = pool
            _, ci = self._exact_rows(src, idx, q, ver)
            acc.evaluations += len(idx)
            ok = q[idx] > 0
            alive[idx[~ok]] = False
            idx, ci = idx[ok], ci[ok]
            if len(idx) == 0:
                continue
            pos, _ = self._pick_among(idx, self._scores(q[idx], ci, sq[idx]))
            x = int(idx[pos])
            if not self._commit(src, x, acc):
                return
            picks += 1
            alive[x] = False


class _Acc:
    """Per-pick diagnostics collected during one call."""

    def __init__(self) -> None:
        self.cols: tuple[list, ...] = ([], [], [], [], [], [])
        self.evaluations = 0
        self.fired = False

    def add(self, *values) -> None:
        for col, v in zip(self.cols, values):
            col.append(v)

    def trace(self, alpha: float, stopped: bool, init: np.ndarray) -> GreedyTrace:
        idx, gains, scores, conflicts, eps, obj = self.cols
        f = np.asarray
        return GreedyTrace(
            indices=f(idx, dtype=np.int64),
            gains=f(gains, dtype=np.float64),
            scores=f(scores, dtype=np.float64),
            conflicts=f(conflicts, dtype=np.float64),
            epsilons=f(eps, dtype=np.float64),
            objective=f(obj, dtype=np.float64),
            alpha=float(alpha),
            stopped_early=bool(stopped),
            initial_gains=init,
            evaluations=int(self.evaluations),
        )


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ParameterError(f"{name} must be a number; got {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number; got {value!r}.") from None


def greedy_logdet(
    features: Any,
    k: int,
    *,
    alpha: float | None = None,
    conflict_weight: float = 0.0,
    early_stop: float | None = None,
    strategy: str = "exact",
    epsilon: float = 0.01,
    block_rows: int = 8192,
    seed: int | None = 0,
    normalize: bool = False,
) -> GreedyTrace:
    """Greedily pick up to ``k`` rows maximising ``log det(I + α Σ g_i g_iᵀ)``.

    One-shot global greedy over one feature matrix (Fisher / D-optimal design with
    ``conflict_weight=0``, SPICE with ``conflict_weight > 0``, the DPP / cosine-kernel
    variant with ``normalize=True``).

    Parameters
    ----------
    features : array_like or numpy.memmap
        ``(n, D)`` rows; memmaps are streamed in row blocks.
    k : int
        Maximum number of picks.
    alpha : float or None, default None
        ``α > 0``; ``None`` uses :func:`default_alpha` (after normalisation; exactly
        ``1.0`` when ``normalize=True``).
    conflict_weight, early_stop, strategy, epsilon, block_rows, seed
        As in :class:`GreedyLogDet`.
    normalize : bool, default False
        L2-normalise rows first (zero rows stay zero and are never picked).

    Returns
    -------
    GreedyTrace
        Picks in order with their gains, scores, conflicts, ε and objective.

    Raises
    ------
    ParameterError
        Bad ``k``, shape or option.
    NumericalError
        Rows with NaN or Inf (named in the message).

    See Also
    --------
    GreedyLogDet : the stateful engine (successive pools, conditioning).

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> trace = greedy_logdet(g, 3, alpha=1.0)
    >>> trace.indices.tolist()
    [0, 2, 1]
    >>> round(float(trace.objective[-1]), 6) == round(float(np.log(3 * 2)), 6)
    True
    """
    src = _Rows(features, normalize=normalize)
    if alpha is None:
        alpha = 1.0 if normalize else default_alpha(features, block_rows=block_rows)
    engine = GreedyLogDet(
        src.dim,
        alpha=alpha,
        conflict_weight=conflict_weight,
        early_stop=early_stop,
        strategy=strategy,
        epsilon=epsilon,
        block_rows=block_rows,
        seed=seed,
    )
    return engine._select(src, k)
