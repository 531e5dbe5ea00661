"""Several LoRA adapters on one base model, trained together in one batched forward.

HARP's oracle finetunes many small adapters (one per leaf) of the same base model.
On a GPU a 100-row finetune of a small model leaves the device mostly idle: a batch of
8 rows is too small to fill it, and the time goes to kernel launches. Stacking K
adapters runs one forward of ``K x b`` rows: the base weights are read once for all
of them, and each group of ``b`` rows passes through its own adapter (a batched
matrix product), so K finetunes cost little more than one.

The adapters attach by forward hooks on the base model's linear layers: the model's
modules and weights are never replaced or changed, and :meth:`StackedAdapters.remove`
leaves it as it was. Each adapter keeps its own parameters, so its optimiser, its
schedule, its gradient clipping and its batches are its own, exactly those of a single
finetune (:func:`harp.nn.train_stacked`).

torch is imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harp.core.errors import ParameterError

__all__ = ["StackedAdapters"]

#: Initial ``(A, B)`` weights of every adapted linear layer.
LayerWeights = Mapping[Any, tuple[Any, Any]]


class StackedAdapters:
    """K LoRA adapters of one shape on a base model's linear layers.

    Every adapter starts from the same initial weights (``A`` drawn as peft draws it,
    ``B`` zero), so the K runs differ only in their rows, unless each is given its
    own (runs of different seeds). In training (:meth:`train_groups`) the rows of a
    batch are split into equal consecutive groups, one per listed adapter; in use
    (:meth:`use`) one adapter applies to every row, with the same arithmetic as
    peft's LoRA layer.

    Parameters
    ----------
    initial : mapping of torch.nn.Linear to (A, B), or a sequence of them
        The base model's linear layers to adapt and each one's initial ``A``
        ``(r, in)`` and ``B`` ``(out, r)`` weights (:func:`harp.models.stacked_lora`
        reads them from peft): one mapping for every adapter, or ``count`` mappings
        of the same layers and shapes, one per adapter.
    count : int
        How many adapters.
    scaling : float
        The LoRA scale ``alpha / r``.
    dropout : float, default 0.0
        Dropout on each adapter's input (drawn per row, as in peft).

    Examples
    --------
    >>> import torch
    >>> layer = torch.nn.Linear(4, 3)
    >>> adapters = StackedAdapters(
    ...     {layer: (torch.ones(2, 4), torch.zeros(3, 2))}, count=2, scaling=1.0)
    >>> x = torch.randn(2, 5, 4)
    >>> adapters.train_groups([0, 1])
    >>> torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    True
    >>> adapters.remove()
    """

    def __init__(
        self,
        initial: LayerWeights | Sequence[LayerWeights],
        *,
        count: int,
        scaling: float,
        dropout: float = 0.0,
    ) -> None:
        import torch

        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ParameterError(f"count={count!r} must be a positive int")
        starts = _per_adapter(initial, count)
        self.count = count
        self.scaling = float(scaling)
        self.dropout = float(dropout)
        self._layers: list[tuple[Any, list[Any], list[Any]]] = []
        self._handles: list[Any] = []
        self._groups: list[int] | None = None
        self._only = 0
        for layer in starts[0]:
            if not isinstance(layer, torch.nn.Linear):
                raise ParameterError(
                    f"stacked adapters adapt linear layers only, not "
                    f"{type(layer).__name__}"
                )
            a_list = [torch.nn.Parameter(s[layer][0].detach().clone()) for s in starts]
            b_list = [torch.nn.Parameter(s[layer][1].detach().clone()) for s in starts]
            self._layers.append((layer, a_list, b_list))
            self._handles.append(
                layer.register_forward_hook(
                    self._hook(a_list, b_list), with_kwargs=True
                )
            )

    def parameters(self, k: int) -> list[Any]:
        """Adapter ``k``'s trainable tensors (its ``A`` and ``B`` of every layer)."""
        self._check_index(k)
        out = []
        for _, a_list, b_list in self._layers:
            out += [a_list[k], b_list[k]]
        return out

    def train_groups(self, adapters: Sequence[int]) -> None:
        """The next batches hold one equal group of rows per adapter, in this order."""
        groups = [int(k) for k in adapters]
        if not groups:
            raise ParameterError("train_groups needs at least one adapter")
        for k in groups:
            self._check_index(k)
        self._groups = groups

    def use(self, k: int) -> None:
        """Apply adapter ``k`` to every row (scoring, generation)."""
        self._check_index(k)
        self._groups = None
        self._only = k

    def remove(self) -> None:
        """Detach every hook: the base model computes what it did before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> StackedAdapters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _check_index(self, k: int) -> None:
        if not 0 <= int(k) < self.count:
            raise ParameterError(f"adapter {k} does not exist (count={self.count})")

    def _hook(self, a_list: list[Any], b_list: list[Any]) -> Any:
        import torch
        import torch.nn.functional as F

        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> Any:
            x = args[0] if args else kwargs["input"]
            x = x.to(a_list[0].dtype)
            if self.dropout:
                x = F.dropout(x, p=self.dropout, training=module.training)
            groups = self._groups
            if groups is None or len(groups) == 1:
                k = self._only if groups is None else groups[0]
                # peft's arithmetic: B(A(x)) * scaling, added, cast back.
                delta = F.linear(F.linear(x, a_list[k]), b_list[k]) * self.scaling
            else:
                a = torch.stack([a_list[k] for k in groups])  # (G, r, in)
                b = torch.stack([b_list[k] for k in groups])  # (G, out, r)
                if x.shape[0] % len(groups):
                    raise ParameterError(
                        f"a batch of {x.shape[0]} rows does not split into "
                        f"{len(groups)} equal groups"
                    )
                grouped = x.reshape(len(groups), -1, x.shape[-1])
                inner = torch.bmm(grouped, a.transpose(1, 2))
                delta = torch.bmm(inner, b.transpose(1, 2)).reshape(*out.shape[:-1], -1)
                delta = delta * self.scaling
            return (out + delta).to(out.dtype)

        return hook


def _per_adapter(
    initial: LayerWeights | Sequence[LayerWeights], count: int
) -> list[LayerWeights]:
    """Every adapter's initial weights, checked to cover the same layers and shapes."""
    starts = [initial] * count if isinstance(initial, Mapping) else list(initial)
    if len(starts) != count:
        raise ParameterError(
            f"{len(starts)} sets of initial weights for {count} adapters; give one "
            "set, or one per adapter"
        )
    if not starts[0]:
        raise ParameterError("no layer to adapt")
    layers = list(starts[0])
    for start in starts[1:]:
        if list(start) != layers or any(
            tuple(start[layer][i].shape) != tuple(starts[0][layer][i].shape)
            for layer in layers
            for i in (0, 1)
        ):
            raise ParameterError(
                "every adapter's initial weights must cover the same layers with the "
                "same shapes"
            )
    return starts
