"""The greedy log-det engine in torch: the same exact algorithm, on any torch device.

:class:`TorchGreedyLogDet` maximises the objective of
:class:`~harp.selectors.logdet.GreedyLogDet` (``log det(I + α Σ g gᵀ)`` minus SPICE's
conflict penalty) with the same exact greedy and the same picks (ties aside), built
for a GPU:

- **lazy bounds**: ``q_i = g_iᵀ M g_i`` only decreases as rows are picked and the
  conflict is ≥ 0, so ``log(1 + α q_i)`` at the last refresh bounds row ``i``'s score.
  As in the numpy engine, a *frontier* of rows whose score is known exactly is kept
  on the device (their rows cached, updated by one small matvec per pick) and rows
  are admitted to it in bound order only while a bound can still reach the best
  exact score: the two engines do the same exact evaluations;
- **blocked refresh as a GEMM**: once the frontier's work since the last refresh
  has cost about as much as a refresh (at most ``refresh_every`` picks) every ``q_i``
  is brought up to date with one GEMM ``G_block @ U_pending`` per block of rows (the
  bandwidth-bound pass over ``G`` happens once per block of picks, not once per pick);
- **few device waits**: each step of the lazy search reads its verdict (best score,
  next bound, best row, how far to admit) back in one transfer, and each pick its
  products in one more; nothing else in the loop waits for the device (a dozen
  single values per pick did, each a full round trip on a GPU);
- **precision**: rows are stored in ``storage`` dtype (fp32 or bf16) and upcast per
  block; ``q``, ``U``, the running sum and every reduction are kept in ``accum`` dtype
  (fp64 by default), as the numpy engine keeps float64;
- **memory**: the rows live on the device when they fit in ``max_device_bytes``;
  otherwise they stay on the host (a memmap, a feature store's rows) and stream to
  the device block by block at each refresh, gathered rows travel alone.

Only the ``"exact"`` strategy exists here (``"lazy"`` has the same picks); the numpy
engine keeps the stochastic one.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from harp.core.errors import ParameterError
from harp.selectors.logdet import (
    _ADMIT_CHUNK,
    _MATVEC_PENALTY,
    _REFRESH_MIN,
    GreedyTrace,
    _Acc,
    _as_float,
    _bad_rows_error,
    _is_row_source,
    _PickBookkeeping,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["TorchGreedyLogDet"]

logger = logging.getLogger(__name__)

#: Scores within this relative band of the best count as tied (as in the numpy engine).
_TIE_RTOL = 1e-10
#: Default device memory the rows may take (the rest is for U, buffers, the GEMM).
_DEFAULT_DEVICE_FRACTION = 0.6


def _dtype(name: str) -> torch.dtype:
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
    if name not in table:
        raise ParameterError(
            f"dtype {name!r} is not allowed; expected one of {', '.join(table)}"
        )
    return table[name]


class _TorchRows:
    """Rows of a feature matrix for the engine: on the device if they fit, else
    streamed from the host in blocks; normalised per block when asked."""

    def __init__(
        self,
        data: Any,
        *,
        device: torch.device,
        storage: torch.dtype,
        accum: torch.dtype,
        normalize: bool,
        block_rows: int,
        max_device_bytes: int,
        name: str,
    ) -> None:
        import torch

        if isinstance(data, torch.Tensor):
            data = data.detach()
        elif not isinstance(data, np.ndarray) and not _is_row_source(data):
            data = np.asarray(data)
        if data.ndim != 2:
            raise ParameterError(
                f"{name} must be a 2-D array (rows × dim); got shape "
                f"{tuple(data.shape)}. Reshape a single row with x[None, :]."
            )
        self.n, self.dim = (int(s) for s in data.shape)
        self.device, self.storage, self.accum = device, storage, accum
        self.normalize = normalize
        self.block_rows = block_rows
        self.name = name
        self.source = data
        itemsize = torch.empty((), dtype=storage).element_size()
        self.resident: torch.Tensor | None = None
        if self.n * self.dim * itemsize <= max_device_bytes:
            self.resident = torch.empty(
                (self.n, self.dim), dtype=storage, device=device
            )
            for start in range(0, self.n, block_rows):
                stop = min(self.n, start + block_rows)
                self.resident[start:stop] = self._host_block(start, stop).to(
                    device=device, dtype=storage
                )

    def _host_block(self, start: int, stop: int) -> torch.Tensor:
        import torch

        part = self.source[start:stop]
        return (
            part
            if isinstance(part, torch.Tensor)
            else torch.as_tensor(np.asarray(part))
        )

    def _finish(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(device=self.device, dtype=self.accum)
        if not self.normalize:
            return rows
        norms = rows.square().sum(dim=1).sqrt()
        # Zero rows stay zero: they carry no information and are never picked.
        return rows / norms.clamp_min(1e-300)[:, None] * (norms > 0)[:, None]

    def block(self, start: int, stop: int) -> torch.Tensor:
        if self.resident is not None:
            return self._finish(self.resident[start:stop])
        return self._finish(self._host_block(start, stop).to(self.storage))

    def blocks(self) -> Any:
        for start in range(0, self.n, self.block_rows):
            stop = min(self.n, start + self.block_rows)
            yield start, stop, self.block(start, stop)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        import torch

        if self.resident is not None:
            return self._finish(self.resident[idx.to(self.device)])
        host = idx.cpu().numpy()
        order = np.argsort(host, kind="stable")
        part = self.source[host[order]]
        rows = (
            part
            if isinstance(part, torch.Tensor)
            else torch.as_tensor(np.asarray(part))
        )
        out = torch.empty_like(rows)
        out[torch.as_tensor(order)] = rows
        return self._finish(out.to(self.storage))


class _Frontier:
    """Rows whose gain is known exactly now, cached on the device in ``accum`` dtype.

    Each pick updates them with one small matvec; every other row is known only
    through its stale bound (the numpy engine's frontier, as tensors).
    """

    def __init__(self, dim: int, dtype: Any, device: Any) -> None:
        self.dim, self.dtype, self.device = dim, dtype, device
        self.clear()

    def clear(self) -> None:
        import torch

        self.size = 0
        self.idx = torch.empty(0, dtype=torch.int64, device=self.device)
        self.rows = torch.empty((0, self.dim), dtype=self.dtype, device=self.device)
        self.q = torch.empty(0, dtype=self.dtype, device=self.device)
        self.c = torch.empty(0, dtype=self.dtype, device=self.device)
        self.sq = torch.empty(0, dtype=self.dtype, device=self.device)

    def exact(self) -> tuple[Any, Any, Any]:
        """``(q, c, sq)`` of the frontier's rows."""
        n = self.size
        return self.q[:n], self.c[:n], self.sq[:n]

    def add(self, idx: Any, rows: Any, q: Any, c: Any, sq: Any) -> None:
        import torch

        need = self.size + len(idx)
        if need > len(self.idx):
            cap = max(need, 2 * len(self.idx), 64)
            for name in ("idx", "rows", "q", "c", "sq"):
                old = getattr(self, name)
                new = torch.empty(
                    (cap, *old.shape[1:]), dtype=old.dtype, device=old.device
                )
                new[: self.size] = old[: self.size]
                setattr(self, name, new)
        s, e = self.size, need
        self.idx[s:e] = idx
        self.rows[s:e] = rows
        self.q[s:e] = q
        self.c[s:e] = c
        self.sq[s:e] = sq
        self.size = need

    def remove(self, pos: int) -> None:
        # Swap with the last row: O(D) instead of compacting the cache.
        last = self.size - 1
        if pos != last:
            for name in ("idx", "rows", "q", "c", "sq"):
                arr = getattr(self, name)
                arr[pos] = arr[last]
        self.size = last

    def update(self, u: Any, g: Any, alpha: float) -> None:
        """Apply the new factor ``u`` (and, with the conflict, the new row ``g``).

        Rows whose ``q`` falls to 0 stay (their score is masked) until
        :meth:`compact`: finding them would make the host wait for the device.
        """
        import torch

        n = self.size
        rows = self.rows[:n]
        if g is None:
            self.q[:n] -= alpha * (rows @ u).square()
        else:
            p = rows @ torch.stack([u, g], dim=1)
            self.q[:n] -= alpha * p[:, 0].square()
            self.c[:n] += p[:, 1]

    def compact(self) -> None:
        """Drop the rows whose ``q`` is no longer positive."""
        n = self.size
        keep = self.q[:n] > 0
        m = int(keep.sum())
        for name in ("idx", "rows", "q", "c", "sq"):
            arr = getattr(self, name)
            arr[:m] = arr[:n][keep]
        self.size = m


class _Look:
    """The frontier's best row, found on the device and read back in one transfer.

    ``best`` is the frontier's best score (-inf when no row there is alive),
    ``bound`` the stale bound ``-q`` of the next outside row in bound order, ``pos``
    and ``x`` the best row's place in the frontier and its row index, ``reach`` the
    end of the outside rows whose bound can still reach the best score's tie band,
    ``dead`` how many frontier rows have ``q <= 0``; the row ``g`` stays on the
    device.
    """

    def __init__(self, values: list[float], g: Any) -> None:
        self.best, self.bound = values[0], values[1]
        self.pos, self.x, self.reach = int(values[2]), int(values[3]), int(values[4])
        self.dead = int(values[5])
        self.g = g


class TorchGreedyLogDet(_PickBookkeeping):
    """Stateful greedy maximiser of ``log det(I + α Σ g gᵀ)`` (+ SPICE) in torch.

    The parameters and the results are those of
    :class:`~harp.selectors.logdet.GreedyLogDet` (same picks, ties aside), plus where
    and in what precision the work runs.

    Parameters
    ----------
    dim : int
        Feature dimension ``D``.
    alpha : float
        Scale ``α > 0`` of the information matrix.
    conflict_weight : float, default 0.0
        SPICE's ``λ``.
    early_stop : float or None, default None
        SPICE+'s ``ω``.
    device : str or torch.device, default "cpu"
        Where the rows, ``U`` and the GEMMs live.
    storage : {"fp32", "bf16", "fp64"}, default "fp32"
        Dtype of the rows kept on the device.
    accum : {"fp64", "fp32"}, default "fp64"
        Dtype of ``q``, ``U``, the running sum and every reduction.
    block_rows : int, default 65536
        Rows per block of the refresh GEMM (and of a host→device transfer).
    refresh_every : int, default 256
        Most picks between two refreshes of every bound (they come earlier when
        the frontier's work reaches a refresh's cost).
    max_device_bytes : int or None, default None
        Most bytes the rows may take on the device; None: 60% of the free device
        memory (all of it on the CPU). Larger inputs stream from the host.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> TorchGreedyLogDet(2, alpha=1.0).select(g, 3).indices.tolist()
    [0, 2, 1]
    """

    def __init__(
        self,
        dim: int,
        *,
        alpha: float,
        conflict_weight: float = 0.0,
        early_stop: float | None = None,
        device: Any = "cpu",
        storage: str = "fp32",
        accum: str = "fp64",
        block_rows: int = 65536,
        refresh_every: int = 256,
        max_device_bytes: int | None = None,
    ) -> None:
        import torch

        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ParameterError(f"dim must be a positive int; got {dim!r}.")
        alpha = _as_float("alpha", alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ParameterError(f"alpha must be a finite number > 0; got {alpha!r}.")
        conflict_weight = _as_float("conflict_weight", conflict_weight)
        if not (conflict_weight >= 0 and math.isfinite(conflict_weight)):
            raise ParameterError(
                "conflict_weight must be a finite number >= 0; "
                f"got {conflict_weight!r}."
            )
        if early_stop is not None:
            early_stop = _as_float("early_stop", early_stop)
            if not 0 < early_stop <= 1:
                raise ParameterError(
                    f"early_stop must be in (0, 1] or None; got {early_stop!r}."
                )
        if accum not in ("fp64", "fp32"):
            raise ParameterError(f"accum={accum!r} is not allowed; expected fp64, fp32")
        for name, value in (
            ("block_rows", block_rows),
            ("refresh_every", refresh_every),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name} must be a positive int; got {value!r}.")
        self.dim = int(dim)
        self.alpha = alpha
        self.conflict_weight = conflict_weight
        self.early_stop = early_stop
        self.device = torch.device(device)
        self.storage = _dtype(storage)
        self.accum = _dtype(accum)
        self.block_rows = block_rows
        self.refresh_every = refresh_every
        self.max_device_bytes = max_device_bytes
        self._U = torch.empty((0, self.dim), dtype=self.accum, device=self.device)
        self._k = 0
        self._s = torch.zeros(self.dim, dtype=self.accum, device=self.device)
        self._objective = 0.0
        self._first_gain: float | None = None
        self._stopped = False

    def _device_budget(self) -> int:
        import torch

        if self.max_device_bytes is not None:
            return int(self.max_device_bytes)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(_DEFAULT_DEVICE_FRACTION * free)
        return 1 << 62

    # -- the greedy -------------------------------------------------------------------
    def select(
        self, candidates: Any, k: int, *, normalize: bool = False
    ) -> GreedyTrace:
        """Pick up to ``k`` rows of ``candidates`` given everything picked before.

        Parameters
        ----------
        candidates : array_like, torch.Tensor, numpy.memmap or row source
            ``(m, dim)`` rows.
        k : int
            Most picks (fewer when no row adds information or the ω rule fires).
        normalize : bool, default False
            L2-normalise each row as it is read (DPP's cosine kernel).

        Returns
        -------
        GreedyTrace
            As :meth:`harp.selectors.logdet.GreedyLogDet.select`.
        """
        import torch

        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ParameterError(f"k must be an int >= 0; got {k!r}.")
        src = _TorchRows(
            candidates,
            device=self.device,
            storage=self.storage,
            accum=self.accum,
            normalize=normalize,
            block_rows=self.block_rows,
            max_device_bytes=self._device_budget(),
            name="candidates",
        )
        if src.dim != self.dim:
            raise ParameterError(
                f"candidates have {src.dim} columns but the engine was built for "
                f"dim={self.dim}; project them to the same dimension."
            )
        q, c, sq = self._initial_pass(src)
        init_gains = torch.log1p(self.alpha * q).cpu().numpy()
        acc = _Acc()
        if k > 0 and not self._stopped and src.n > 0:
            with torch.no_grad():
                self._run(src, int(k), q, c, sq, acc)
        return acc.trace(self.alpha, self._stopped, init_gains)

    def _initial_pass(self, src: _TorchRows) -> tuple[Any, Any, Any]:
        import torch

        q = torch.empty(src.n, dtype=self.accum, device=self.device)
        c = torch.zeros(src.n, dtype=self.accum, device=self.device)
        sq = torch.empty(src.n, dtype=self.accum, device=self.device)
        bad: list[int] = []
        nbad = 0
        with torch.no_grad():
            for start, stop, blk in src.blocks():
                finite = torch.isfinite(blk).all(dim=1)
                if not bool(finite.all()):
                    where = torch.nonzero(~finite).flatten().cpu() + start
                    nbad += len(where)
                    bad.extend(int(i) for i in where[: max(0, 5 - len(bad))])
                    continue
                if nbad:
                    continue
                sq[start:stop] = blk.square().sum(dim=1)
                if self._k:
                    p = blk @ self._U[: self._k].T
                    q[start:stop] = sq[start:stop] - self.alpha * p.square().sum(dim=1)
                else:
                    q[start:stop] = sq[start:stop]
                if self.conflict_weight > 0 and self._k:
                    c[start:stop] = blk @ self._s
        if nbad:
            raise _bad_rows_error(bad, nbad, src.name)
        q.clamp_(min=0.0)
        q[sq == 0] = 0.0
        return q, c, sq

    def _scores(self, q: Any, c: Any, sq: Any) -> Any:
        import torch

        gain = torch.log1p(self.alpha * q)
        if self.conflict_weight == 0 or self._k == 0:
            return gain
        snorm = self._s.square().sum().sqrt()
        conf = (-c / (sq.sqrt() * snorm)).clamp(0.0, 1.0)
        # A zero running sum has no direction to conflict with (as numpy's engine).
        conf = torch.where(snorm > 0, conf, torch.zeros_like(conf))
        return gain - self.conflict_weight * conf

    def _look(self, frontier: _Frontier, negq: Any, ptr: int) -> _Look:
        """The frontier's best row and whether the search must go on, in one wait.

        A GPU pays a round trip for every value the host reads back, and the numpy
        engine's steps read a dozen per pick. Here the best score, the next outside
        bound, the best row (ties to the lowest row index, as numpy) and how far the
        admission would reach are computed on the device and read together; the
        pick's own products are read once more in :meth:`_commit` (not computed here:
        ``M g`` passes over all of ``U``, wasted when the search goes on).
        """
        import torch

        n = frontier.size
        q, c, sq = frontier.exact()
        dead = q <= 0
        score = self._scores(q, c, sq).masked_fill(dead, -math.inf)
        best = score.max()
        floor = best - _TIE_RTOL * best.abs().clamp(min=1.0)
        idx = frontier.idx[:n]
        # Positions stay 1-element tensors: indexing with a 0-d one reads it back.
        pos = torch.where(score >= floor, idx, torch.iinfo(idx.dtype).max).argmin()
        pos = pos.reshape(1)
        # Outside rows whose bound can still reach the floor end at `reach`.
        reach = torch.searchsorted(
            negq, (-torch.expm1(floor) / self.alpha).reshape(1), right=True
        )
        bound = negq[ptr : ptr + 1] if ptr < len(negq) else best.reshape(1)
        counts = torch.cat(
            [pos, idx.index_select(0, pos), reach, dead.sum().reshape(1)]
        )
        wide = torch.float64  # holds the counts exactly (below 2**53)
        values = torch.cat([best.reshape(1).to(wide), bound.to(wide), counts.to(wide)])
        return _Look(values.tolist(), frontier.rows.index_select(0, pos)[0])

    def _run(self, src: _TorchRows, k: int, q: Any, c: Any, sq: Any, acc: _Acc) -> None:
        """The exact strategy of the numpy engine, with its frontier on the device."""
        import torch

        alpha = self.alpha
        track = self.conflict_weight > 0
        alive = q > 0
        frontier = _Frontier(self.dim, self.accum, self.device)
        k_ref = self._k  # q and c are exact as of this many U columns ...
        s_ref = self._s.clone()  # ... and this running sum

        def rebuild() -> tuple[Any, Any]:
            idx = torch.nonzero(alive).flatten()
            negq, order = torch.sort(-q[idx], stable=True)
            return idx[order], negq

        order, negq = rebuild()
        ptr = 0
        picks = 0
        work = 0
        while picks < k:
            # Lazy search: admit outside rows in bound order until no outside bound can
            # reach the best exact score (within the tie band).
            while True:
                look = self._look(frontier, negq, ptr) if frontier.size else None
                if look is not None and look.dead:
                    frontier.compact()  # rows that lost all information: rare
                    continue
                if look is not None and look.best > -math.inf:
                    floor = look.best - _TIE_RTOL * max(1.0, abs(look.best))
                    if ptr >= len(order) or math.log1p(-alpha * look.bound) < floor:
                        break
                    new = max(look.reach, ptr + 1)
                elif ptr >= len(order):
                    break
                else:
                    new = ptr + _ADMIT_CHUNK
                new = min(new, len(order))
                idx = order[ptr:new]
                ptr = new
                rows = src.take(idx)
                qi = q[idx]
                if self._k > k_ref:
                    p = rows @ self._U[k_ref : self._k].T
                    qi = qi - alpha * p.square().sum(dim=1)
                ci = c[idx] + rows @ (self._s - s_ref) if track else c[idx]
                acc.evaluations += len(idx)
                # Rows that add nothing are dropped at the next look, which counts
                # them: selecting them out now would make the host wait here.
                frontier.add(idx, rows, qi, ci, sq[idx])
                alive[idx] = qi > 0
            if look is None or look.best == -math.inf:
                return  # every row left adds nothing
            x = look.x
            if not self._commit(look, acc):
                return
            picks += 1
            alive[x] = False
            frontier.remove(look.pos)
            # Ski rental (as the numpy engine): refresh once the frontier work since
            # the last refresh has cost about as much as a refresh would.
            work += frontier.size
            pending = self._k - k_ref
            if pending >= self.refresh_every or (
                pending >= _REFRESH_MIN and work * _MATVEC_PENALTY >= len(order)
            ):
                work = 0
                self._refresh(src, q, c, k_ref, s_ref, track)
                k_ref, s_ref = self._k, self._s.clone()
                alive &= q > 0
                frontier.clear()
                order, negq = rebuild()
                ptr = 0
            elif frontier.size:
                # Bring the frontier up to date with the new u (and the new row in s).
                acc.evaluations += frontier.size
                frontier.update(self._U[self._k - 1], look.g if track else None, alpha)

    def _refresh(
        self, src: _TorchRows, q: Any, c: Any, k_ref: int, s_ref: Any, track: bool
    ) -> None:
        """Apply the pending ``u`` columns to every ``q_i``: one GEMM per block."""
        import torch

        cols = self._U[k_ref : self._k].T
        if track:
            cols = torch.cat([cols, (self._s - s_ref)[:, None]], dim=1)
        npend = self._k - k_ref
        for start, stop, blk in src.blocks():
            p = blk @ cols
            q[start:stop] -= self.alpha * p[:, :npend].square().sum(dim=1)
            if track:
                c[start:stop] += p[:, npend]
        q.clamp_(min=0.0)

    def _commit(self, look: _Look, acc: _Acc) -> bool:
        """Add the look's row (unless the ω rule fires); return whether it was added.

        One read back: the products ``gᵀ(Mg)``, ``gᵀg``, ``sᵀs``, ``gᵀs``."""
        import torch

        g = look.g
        if self._k:
            U = self._U[: self._k]
            v = g - self.alpha * (U.T @ (U @ g))
        else:
            v = g
        dots = torch.stack([g @ v, g @ g, self._s @ self._s, g @ self._s]).tolist()
        q, gain, sq, conflict = self._terms(*dots)
        if self._omega_fires(gain, acc):
            return False
        u = v / math.sqrt(1.0 + self.alpha * q)
        if self._k == len(self._U):
            grown = torch.empty(
                (max(16, 2 * len(self._U)), self.dim),
                dtype=self.accum,
                device=self.device,
            )
            grown[: self._k] = self._U[: self._k]
            self._U = grown
        self._U[self._k] = u
        self._record(look.x, look.g, gain, conflict, sq, acc)
        return True
