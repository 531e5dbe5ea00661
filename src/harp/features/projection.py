"""Seeded random projections (Johnson–Lindenstrauss) that any process can rebuild.

:class:`RandomProjector` maps ``(n, in_dim)`` rows to ``(n, dim)`` with
``x @ P / sqrt(dim)``. The matrix ``P`` (``in_dim × dim``, entries ±1 or N(0, 1)) is
never drawn in one go: its input rows are cut into blocks of ``block_size`` rows, and
block ``b`` comes from its own CPU :class:`torch.Generator` seeded with a child seed of
``seed`` (``numpy.random.SeedSequence(seed, spawn_key=(b,))``, the same child that
``SeedSequence(seed).spawn(b + 1)[b]`` gives). Hence

- the same ``(seed, kind, block_size, dim)`` gives the bit-identical ``P`` in any
  process, shard or machine (CPU generators are platform independent);
- any block can be generated alone, so shards that hold different slices of the
  input coordinates can project their slice and the partial results sum to the whole;
- memory stays bounded: when ``P`` would exceed ``max_cache_bytes`` it is regenerated
  block by block on every call instead of being kept.

torch is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from harp.core.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "PROJECTION_KINDS",
    "RandomProjector",
    "estimate_bytes",
    "make_projector",
]

logger = logging.getLogger(__name__)

#: Entry distributions of the dense projection matrix.
PROJECTION_KINDS: tuple[str, ...] = ("rademacher", "gaussian")

#: Default cap on the bytes of a cached projection matrix (256 MiB).
DEFAULT_MAX_CACHE_BYTES = 256 * 1024**2


def estimate_bytes(in_dim: int, dim: int | None, *, itemsize: int = 4) -> int:
    """Bytes of a dense ``in_dim × dim`` projection matrix.

    Parameters
    ----------
    in_dim : int
        Input dimension (e.g. the number of trainable parameters).
    dim : int or None
        Output dimension; None or 0 means no projection (0 bytes).
    itemsize : int, default 4
        Bytes per entry (4 for float32).

    Returns
    -------
    int
        ``in_dim * dim * itemsize``.

    Examples
    --------
    >>> estimate_bytes(32768, 8192) / 2**30
    1.0
    """
    if not dim:
        return 0
    return int(in_dim) * int(dim) * int(itemsize)


def _block_seed(seed: int, block: int) -> int:
    """63-bit torch seed of block ``block`` (child ``block`` of ``SeedSequence``)."""
    state = np.random.SeedSequence(seed, spawn_key=(block,)).generate_state(
        1, dtype=np.uint64
    )
    return int(state[0] >> np.uint64(1))


class RandomProjector:
    """A seeded ``in_dim → dim`` random projection, generated block by block.

    Parameters
    ----------
    in_dim : int
        Input dimension.
    dim : int or None, default 8192
        Output dimension. None or 0 means the identity (no projection).
    kind : {"rademacher", "gaussian"}, default "rademacher"
        Entries of ``P``: ±1 with equal probability, or standard normal.
    seed : int, default 0
        Root seed; block ``b`` uses ``SeedSequence(seed, spawn_key=(b,))``.
    block_size : int, default 16384
        Input rows of ``P`` per generated block. Part of the matrix's identity: a
        different ``block_size`` gives a different (equally valid) ``P``.
    dtype : torch.dtype or None, default None
        Dtype of ``P`` and of the computation; None means float32.
    max_cache_bytes : int, default 256 MiB
        Keep the generated blocks between calls when the whole ``P`` takes at most
        this many bytes; otherwise regenerate them on every call (memory bounded by
        one block, ``block_size * dim`` entries).

    Notes
    -----
    ``project(x)`` is ``x @ P / sqrt(dim)``, so ``E ||project(x)||² = ||x||²``.
    Blocks are generated on the CPU and moved to ``x``'s device, so results do not
    depend on the device's random generator; on CUDA the transfer of each block costs
    time when the matrix is too large to cache.

    Examples
    --------
    >>> import torch
    >>> proj = RandomProjector(100, 16, seed=3)
    >>> proj.project(torch.ones(2, 100)).shape
    torch.Size([2, 16])
    >>> bool((proj.matrix() == RandomProjector(100, 16, seed=3).matrix()).all())
    True
    """

    def __init__(
        self,
        in_dim: int,
        dim: int | None = 8192,
        *,
        kind: str = "rademacher",
        seed: int = 0,
        block_size: int = 16384,
        dtype: Any = None,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
    ) -> None:
        if int(in_dim) < 1:
            raise ParameterError(f"in_dim={in_dim!r} is not allowed; expected >= 1")
        if dim is not None and int(dim) < 0:
            raise ParameterError(
                f"dim={dim!r} is not allowed; expected >= 1, or None/0 for no "
                "projection"
            )
        if kind not in PROJECTION_KINDS:
            raise ParameterError(
                f"kind={kind!r} is not allowed; expected one of {PROJECTION_KINDS}"
            )
        if int(block_size) < 1:
            raise ParameterError(
                f"block_size={block_size!r} is not allowed; expected >= 1"
            )
        if int(seed) < 0:
            raise ParameterError(f"seed={seed!r} is not allowed; expected >= 0")
        self.in_dim = int(in_dim)
        self.dim = int(dim) if dim else 0
        self.kind = kind
        self.seed = int(seed)
        self.block_size = int(block_size)
        self.dtype = dtype
        self.max_cache_bytes = int(max_cache_bytes)
        self._cache: dict[Any, list[torch.Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"RandomProjector(in_dim={self.in_dim}, dim={self.dim}, "
            f"kind={self.kind!r}, seed={self.seed}, block_size={self.block_size})"
        )

    @property
    def identity(self) -> bool:
        """True when ``dim`` is None/0: :meth:`project` returns its input."""
        return self.dim == 0

    @property
    def out_dim(self) -> int:
        """Dimension of projected rows (``in_dim`` for the identity)."""
        return self.in_dim if self.identity else self.dim

    @property
    def n_blocks(self) -> int:
        """Number of input-row blocks of ``P``."""
        return -(-self.in_dim // self.block_size)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole matrix ``P``."""
        return estimate_bytes(self.in_dim, self.dim, itemsize=self._itemsize())

    @property
    def cached(self) -> bool:
        """Whether generated blocks are kept between calls."""
        return not self.identity and self.nbytes <= self.max_cache_bytes

    def params(self) -> dict[str, Any]:
        """The parameters that define ``P`` (for manifests and fingerprints)."""
        return {
            "in_dim": self.in_dim,
            "dim": self.dim,
            "kind": self.kind,
            "seed": self.seed,
            "block_size": self.block_size,
        }

    def _torch_dtype(self) -> torch.dtype:
        import torch

        return torch.float32 if self.dtype is None else self.dtype

    def _itemsize(self) -> int:
        import torch

        return torch.empty((), dtype=self._torch_dtype()).element_size()

    def block_rows(self, block: int) -> slice:
        """Input coordinates covered by ``block``.

        Parameters
        ----------
        block : int
            Block number in ``[0, n_blocks)``.

        Returns
        -------
        slice
            ``slice(block * block_size, min((block + 1) * block_size, in_dim))``.
        """
        if not 0 <= block < self.n_blocks:
            raise ParameterError(
                f"block={block!r} is out of range; expected 0..{self.n_blocks - 1}"
            )
        start = block * self.block_size
        return slice(start, min(start + self.block_size, self.in_dim))

    def block(self, block: int) -> torch.Tensor:
        """Generate block ``block`` of ``P`` (unscaled), on the CPU.

        Parameters
        ----------
        block : int
            Block number in ``[0, n_blocks)``.

        Returns
        -------
        torch.Tensor
            ``(rows, dim)`` entries ±1 (rademacher) or N(0, 1) (gaussian), where
            ``rows`` is the size of :meth:`block_rows`.
        """
        import torch

        if self.identity:
            raise ParameterError("an identity projector (dim=0) has no matrix")
        rows = self.block_rows(block)
        shape = (rows.stop - rows.start, self.dim)
        gen = torch.Generator(device="cpu").manual_seed(_block_seed(self.seed, block))
        dtype = self._torch_dtype()
        if self.kind == "gaussian":
            return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
        out = torch.randint(0, 2, shape, generator=gen, dtype=torch.float32)
        return out.mul_(2.0).sub_(1.0).to(dtype)

    def _blocks(self, device: Any) -> Iterable[tuple[int, torch.Tensor]]:
        """All blocks on ``device``, from the cache when the matrix fits in it."""
        import torch

        device = torch.device(device)
        if self.cached:
            cached = self._cache.get(device)
            if cached is None:
                cached = [self.block(b).to(device) for b in range(self.n_blocks)]
                self._cache[device] = cached
            yield from enumerate(cached)
            return
        for b in range(self.n_blocks):
            yield b, self.block(b).to(device)

    def matrix(self) -> torch.Tensor:
        """The whole unscaled matrix ``P`` (``in_dim × dim``); small sizes only.

        Returns
        -------
        torch.Tensor
            The concatenated blocks, on the CPU.
        """
        import torch

        if self.nbytes > 4 * 1024**3:
            raise ParameterError(
                f"the projection matrix takes {self.nbytes / 2**30:.1f} GiB; "
                "matrix() is meant for small sizes — use project()"
            )
        return torch.cat([self.block(b) for b in range(self.n_blocks)], dim=0)

    def clear_cache(self) -> None:
        """Forget the cached blocks."""
        self._cache.clear()

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ParameterError(
                f"expected a (n, {self.in_dim}) tensor, got shape {tuple(x.shape)}"
            )
        return x.to(self._torch_dtype())

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project rows: ``x @ P / sqrt(dim)``.

        Parameters
        ----------
        x : torch.Tensor
            ``(n, in_dim)`` rows, on any device.

        Returns
        -------
        torch.Tensor
            ``(n, dim)`` in the projector's dtype, on ``x``'s device (``x`` itself,
            cast, for the identity).
        """
        return self.project_blocks(x, range(self.n_blocks))

    def project_blocks(self, x: torch.Tensor, blocks: Iterable[int]) -> torch.Tensor:
        """Partial projection using only some input blocks of ``P``.

        The partial results of disjoint block sets add up to :meth:`project` (up to
        float rounding of the sum), so shards holding different input coordinates
        can project independently.

        Parameters
        ----------
        x : torch.Tensor
            ``(n, in_dim)`` rows; coordinates outside ``blocks`` are ignored.
        blocks : iterable of int
            Block numbers to use.

        Returns
        -------
        torch.Tensor
            ``(n, dim)``: ``sum_b x[:, rows_b] @ P_b / sqrt(dim)``.
        """
        import torch

        x = self._check_input(x)
        if self.identity:
            return x
        wanted = sorted(set(int(b) for b in blocks))
        for b in wanted:
            self.block_rows(b)  # range check
        out = torch.zeros((x.shape[0], self.dim), dtype=x.dtype, device=x.device)
        if not wanted:
            return out
        if self.cached or len(wanted) == self.n_blocks:
            keep = set(wanted)
            source: Iterable[tuple[int, torch.Tensor]] = (
                (b, p) for b, p in self._blocks(x.device) if b in keep
            )
        else:
            source = ((b, self.block(b).to(x.device)) for b in wanted)
        for b, p_block in source:
            rows = self.block_rows(b)
            out.addmm_(x[:, rows], p_block)
        return out.mul_(1.0 / math.sqrt(self.dim))


def make_projector(
    model: Any, dim: int, *, kind: str = "factored", seed: int = 0
) -> Any:
    """The projection of a model's gradients: factored, dense, or none (``dim=0``).

    Parameters
    ----------
    model : torch.nn.Module
        The model whose trainable parameters are differentiated.
    dim : int
        Target dimension; 0 keeps the gradients whole (returns None).
    kind : {"factored", "rademacher", "gaussian"}, default "factored"
        :class:`~harp.features.factored.FactoredProjector` (per parameter block,
        both sides; never forms the gradient) or a dense :class:`RandomProjector`.
    seed : int, default 0
        Seed of the random matrices.

    Returns
    -------
    FactoredProjector, RandomProjector or None
    """
    from harp.features.factored import FactoredProjector
    from harp.features.gradients import gradient_dim

    if not dim:
        return None
    if kind == "factored":
        return FactoredProjector.for_model(model, dim, seed=seed)
    projector = RandomProjector(gradient_dim(model), dim, kind=kind, seed=seed)
    if not projector.cached:
        # Measured on an H200: 629 s per batch of 16 rows at 7.57M x 8192 (the
        # factored projection of the same rows: 0.015 s). Say so before it starts.
        logger.warning(
            "the dense %s projection is %.1f GiB, over its %.0f MiB cache: it is "
            "regenerated on the CPU for every batch of gradients (at 7.6M x 8192 "
            "that took 629 s per 16 rows on an H200); projection='factored' never "
            "forms it",
            kind,
            projector.nbytes / 2**30,
            projector.max_cache_bytes / 2**20,
        )
    return projector
