"""A factored (two-sided, per-parameter) random projection of per-example gradients.

The gradient of a linear layer ``y = W x`` for one example is a sum of outer products,
``G = Σ_t δ_t x_tᵀ`` (``δ_t`` the output gradient, ``x_t`` the input, per token). A
dense projection of ``vec(G)`` costs ``out · in · dim`` per example and a random matrix
of ``in_dim × dim`` entries for the whole model (231 GiB at D = 8192 for a 0.37B model
with rank-16 LoRA). :class:`FactoredProjector` instead gives every parameter block its
own pair of small random matrices and projects both sides (LoGra, bergson)::

    P_outᵀ G P_in = Σ_t (P_outᵀ δ_t)(P_inᵀ x_t)ᵀ

so the per-example gradient is never formed: each token's two sides are projected first
(``T · (out · k_out + in · k_in)`` multiply-adds) and only a ``k_out × k_in`` block is
summed. The feature of an example is the concatenation of its blocks, in
:func:`~harp.features.gradients.trainable_names` order.

Guarantee (Johnson–Lindenstrauss for a Kronecker map). Every entry of ``P_out`` and
``P_in`` is ±1 (Rademacher), scaled by ``1/sqrt(k)`` of its side, so for any block ``G``
``E ‖P_outᵀ G P_in‖²_F = ‖G‖²_F`` and the same holds for inner products
(``E ⟨P_outᵀ A P_in, P_outᵀ B P_in⟩ = ⟨A, B⟩``): the projection is unbiased, and its
relative variance falls as ``1/k`` per side. The concatenation over independent blocks
preserves the whole gradient's norm and inner products in expectation, with a
variance that is the sum of the blocks'. Each block gets an equal share of ``dim``,
split about evenly between its sides (:func:`factored_block_shape`); a side no larger
than its share is kept whole (no projection, no error on that side), as the LoRA rank
side is once the budget allows it.

The small matrices are drawn on the CPU from ``SeedSequence(seed, spawn_key=(block,
side))`` and moved to the device once, so the same seed gives the same matrices, and
the same features up to float rounding, on any device, shard and batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harp.core.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["FactoredProjector", "factored_block_shape"]


def factored_block_shape(out: int, inp: int, budget: int) -> tuple[int, int]:
    """The ``(k_out, k_in)`` of a block ``out × in`` given ``budget`` features.

    The product is at most ``budget`` (at least 1 × 1). Both sides get about
    ``sqrt(budget)``: for a gradient dominated by one token, ``‖P_outᵀ δ‖² ‖P_inᵀ x‖²``
    has a relative variance of about ``2/k_out + 2/k_in``, smallest when the sides are
    equal; a side smaller than its share is kept whole (no error on it) and leaves
    the rest of the budget to the other.

    Examples
    --------
    >>> factored_block_shape(16, 1024, 256)  # LoRA A: the rank side is kept whole
    (16, 16)
    >>> factored_block_shape(16, 128, 32)
    (5, 6)
    >>> factored_block_shape(8, 8, 100)  # small enough: unprojected
    (8, 8)
    >>> factored_block_shape(1024, 1024, 256)
    (16, 16)
    >>> factored_block_shape(3, 4096, 96)  # a small side leaves its budget to the other
    (3, 32)
    """
    budget = max(1, int(budget))
    if out * inp <= budget:
        return out, inp
    k_out = max(1, min(out, math.isqrt(budget)))
    k_in = max(1, min(inp, budget // k_out))
    # A side that hit its size leaves budget to the other.
    k_out = max(1, min(out, budget // k_in))
    return k_out, k_in


@dataclass(frozen=True)
class _Block:
    name: str
    out: int
    inp: int
    k_out: int
    k_in: int
    start: int  # offset in the flattened gradient
    offset: int  # offset in the projected feature

    @property
    def size(self) -> int:
        return self.out * self.inp

    @property
    def width(self) -> int:
        return self.k_out * self.k_in


def _partner_is_zero(name: str, params: dict[str, Any]) -> bool:
    """Whether ``name`` is a LoRA factor whose other factor is all zeros."""
    for this, other in (("lora_A", "lora_B"), ("lora_B", "lora_A")):
        if this in name:
            partner = params.get(name.replace(this, other))
            return partner is not None and not bool(partner.detach().any())
    return False


def _rademacher(seed: int, block: int, side: int, rows: int, cols: int) -> torch.Tensor:
    import torch

    state = np.random.SeedSequence(seed, spawn_key=(block, side)).generate_state(
        1, dtype=np.uint64
    )
    gen = torch.Generator(device="cpu").manual_seed(int(state[0] >> np.uint64(1)))
    out = torch.randint(0, 2, (rows, cols), generator=gen, dtype=torch.float32)
    return out.mul_(2.0).sub_(1.0).div_(math.sqrt(cols))


class FactoredProjector:
    """Per-parameter two-sided Rademacher projection of gradients (see the module).

    Parameters
    ----------
    shapes : sequence of (name, shape)
        The trainable parameters in flattening order; a matrix is ``(out, in)``, a
        vector (a bias) ``(n,)`` is a block ``n × 1``.
    dim : int
        Target feature dimension: each block gets ``dim // n_blocks`` features (at
        least one); :attr:`out_dim` is the sum actually used (at most ``dim``
        unless there are more blocks than ``dim``).
    seed : int, default 0
        Root seed of the small matrices.
    zero : iterable of str, default ()
        Parameters whose gradient is zero by construction: they get no features
        (a block of width 0) and ``dim`` is shared among the others.

    Examples
    --------
    >>> import torch
    >>> p = FactoredProjector([("a", (4, 64)), ("b", (64, 4))], dim=32, seed=1)
    >>> p.out_dim, p.in_dim
    (32, 512)
    >>> p.project(torch.ones(2, 512)).shape
    torch.Size([2, 32])
    """

    kind = "factored"

    def __init__(
        self,
        shapes: Sequence[tuple[str, Sequence[int]]],
        dim: int,
        *,
        seed: int = 0,
        zero: Iterable[str] = (),
    ) -> None:
        if isinstance(dim, bool) or int(dim) < 1:
            raise ParameterError(f"dim={dim!r} is not allowed; expected >= 1")
        if int(seed) < 0:
            raise ParameterError(f"seed={seed!r} is not allowed; expected >= 0")
        shapes = list(shapes)
        if not shapes:
            raise ParameterError("a factored projection needs at least one parameter")
        self.dim = int(dim)
        self.seed = int(seed)
        zero = set(zero)
        unknown = zero - {name for name, _ in shapes}
        if unknown:
            raise ParameterError(f"zero={sorted(unknown)[:3]} names no parameter")
        live = len(shapes) - len(zero)
        budget = max(1, self.dim // max(1, live))
        blocks = []
        start = offset = 0
        for name, shape in shapes:
            dims = tuple(int(s) for s in shape)
            if len(dims) == 1:
                dims = (dims[0], 1)
            if len(dims) != 2 or min(dims) < 1:
                raise ParameterError(
                    f"parameter {name!r} has shape {tuple(shape)}; a factored "
                    "projection takes matrices and vectors"
                )
            k_out, k_in = (
                (0, 0)
                if name in zero
                else factored_block_shape(dims[0], dims[1], budget)
            )
            block = _Block(name, dims[0], dims[1], k_out, k_in, start, offset)
            blocks.append(block)
            start += block.size
            offset += block.width
        self.blocks: tuple[_Block, ...] = tuple(blocks)
        self._by_name = {b.name: i for i, b in enumerate(self.blocks)}
        self.in_dim = start
        self.out_dim = offset
        self._sides: dict[Any, list[tuple[Any, Any]]] = {}

    @classmethod
    def for_model(cls, model: Any, dim: int, *, seed: int = 0) -> FactoredProjector:
        """The projector of a model's trainable parameters (sorted-name order).

        A LoRA factor whose partner is all zeros (``lora_A`` of a fresh adapter, whose
        ``lora_B`` starts at zero) has a gradient that is zero by construction: it
        gets no features, and its share of ``dim`` goes to the others.
        """
        params = dict(model.named_parameters())
        names = sorted(n for n, p in params.items() if p.requires_grad)
        return cls(
            [(n, tuple(params[n].shape)) for n in names],
            dim,
            seed=seed,
            zero=[n for n in names if _partner_is_zero(n, params)],
        )

    def __repr__(self) -> str:
        return (
            f"FactoredProjector(blocks={len(self.blocks)}, in_dim={self.in_dim}, "
            f"out_dim={self.out_dim}, seed={self.seed})"
        )

    def params(self) -> dict[str, Any]:
        """What defines the projection (for manifests and fingerprints)."""
        return {
            "kind": self.kind,
            "dim": self.dim,
            "seed": self.seed,
            "blocks": [[b.name, b.out, b.inp, b.k_out, b.k_in] for b in self.blocks],
        }

    # -- the small matrices -----------------------------------------------------------
    def sides(self, index: int, device: Any) -> tuple[Any, Any]:
        """``(P_out, P_in)`` of block ``index`` on ``device`` (None: a kept side)."""
        import torch

        device = torch.device(device)
        cached = self._sides.get(device)
        if cached is None:
            cached = []
            for i, b in enumerate(self.blocks):
                if b.width == 0:
                    cached.append((None, None))
                    continue
                p_out = (
                    None
                    if b.k_out == b.out
                    else _rademacher(self.seed, i, 0, b.out, b.k_out).to(device)
                )
                p_in = (
                    None
                    if b.k_in == b.inp
                    else _rademacher(self.seed, i, 1, b.inp, b.k_in).to(device)
                )
                cached.append((p_out, p_in))
            self._sides[device] = cached
        return cached[index]

    def index(self, name: str) -> int:
        """The block number of parameter ``name``."""
        return self._by_name[name]

    # -- projecting -------------------------------------------------------------------
    def project_block(self, index: int, grad: torch.Tensor) -> torch.Tensor:
        """``P_outᵀ G P_in`` of formed gradients ``(n, out, in)``, as ``(n, width)``."""
        b = self.blocks[index]
        if b.width == 0:
            return grad.new_zeros((grad.shape[0], 0)).float()
        grad = grad.reshape(grad.shape[0], b.out, b.inp).float()
        p_out, p_in = self.sides(index, grad.device)
        if p_in is not None:
            grad = grad @ p_in
        if p_out is not None:
            grad = p_out.transpose(0, 1) @ grad
        return grad.reshape(grad.shape[0], -1)

    def project_sides(
        self, index: int, grad_out: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        """The projected gradient of one example batch, without forming it.

        Parameters
        ----------
        index : int
            The block (:meth:`index`).
        grad_out : torch.Tensor
            ``(b, T, out)`` output gradients per token.
        inputs : torch.Tensor
            ``(b, T, in)`` inputs per token (``(b, T, 1)`` ones for a bias).

        Returns
        -------
        torch.Tensor
            ``(b, k_out · k_in)`` fp32: ``Σ_t (P_outᵀ δ_t)(P_inᵀ x_t)ᵀ``, flattened.
        """
        import torch

        if self.blocks[index].width == 0:
            return grad_out.new_zeros((grad_out.shape[0], 0)).float()
        grad_out, inputs = grad_out.float(), inputs.float()
        p_out, p_in = self.sides(index, grad_out.device)
        a = grad_out if p_out is None else grad_out @ p_out
        c = inputs if p_in is None else inputs @ p_in
        return torch.einsum("bto,bti->boi", a, c).reshape(a.shape[0], -1)

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """Project flattened full gradients ``(n, in_dim)`` → ``(n, out_dim)``.

        The reference for :meth:`project_sides` (the same map, from the formed
        gradient), and the path of preconditioned gradients.
        """
        import torch

        if flat.ndim != 2 or flat.shape[1] != self.in_dim:
            raise ParameterError(
                f"expected a (n, {self.in_dim}) tensor, got shape {tuple(flat.shape)}"
            )
        parts = [
            self.project_block(i, flat[:, b.start : b.start + b.size])
            for i, b in enumerate(self.blocks)
        ]
        return torch.cat(parts, dim=1)

    def blocks_of(self, names: Iterable[str]) -> list[int]:
        """Block numbers of ``names`` (raises for a name the projector lacks)."""
        missing = [n for n in names if n not in self._by_name]
        if missing:
            raise ParameterError(
                f"the factored projection has no block for {missing[:3]}; build it "
                "with FactoredProjector.for_model on the same model"
            )
        return [self._by_name[n] for n in names]
