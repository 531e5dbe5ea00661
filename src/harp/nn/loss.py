"""The one loss of harp: next-token cross-entropy over labelled (response) tokens.

Position ``t`` of a row is predicted from the logits at ``t - 1``; positions labelled
:data:`~harp.nn.encode.IGNORE_INDEX` (the prompt, padding) carry no loss. The logits
are upcast to fp32 first, whatever the model's dtype.

A model's forward is run by :func:`forward_losses`, which has the output layer compute
logits only at the positions that carry a loss: a response is a fraction of its row
(a scored option a few tokens of a hundred), and with a large vocabulary (SmolLM2's
49,152 tokens) the logits of every position are a large share of a step's work and
most of its memory. Its losses are those of the whole logits (tested), in a flat
:class:`TokenLosses` whose reductions are the token-weighted mean (training), the
per-row mean (per-example gradients, scoring rows) and the per-row sum (scoring
options). :func:`token_losses`, :func:`row_losses` and :func:`causal_lm_loss` are the
same losses of logits already computed, dense, so that ``torch.func.vmap`` can map
them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from harp.nn.encode import IGNORE_INDEX

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "TokenLosses",
    "causal_lm_loss",
    "forward_losses",
    "output_positions",
    "row_losses",
    "token_losses",
]


class TokenLosses(NamedTuple):
    """The loss of every labelled token of a batch, and where each one is.

    The reductions go through a dense ``(batch, length - 1)`` array (each token
    written once, then summed along rows) rather than a scatter-add, so that they
    are deterministic on a GPU too. ``coords`` is ``mask.nonzero()``, kept so that
    no reduction has to find the tokens again (a boolean index waits for the
    device).

    Attributes
    ----------
    nll : torch.Tensor
        ``(tokens,)`` fp32 negative log-likelihoods, row-major (row by row, left to
        right).
    mask : torch.Tensor
        ``(batch, length - 1)`` bool: the positions the tokens were predicted from
        (``labels[:, 1:] != IGNORE_INDEX``).
    coords : torch.Tensor
        ``(tokens, 2)`` int64: each token's (row, position), row-major.
    """

    nll: torch.Tensor
    mask: torch.Tensor
    coords: torch.Tensor

    @property
    def batch(self) -> int:
        """Rows in the batch (rows without a labelled token included)."""
        return int(self.mask.shape[0])

    def mean(self) -> torch.Tensor:
        """The training loss: the mean over every labelled token (a scalar)."""
        return self.nll.mean()

    def dense(self) -> torch.Tensor:
        """``(batch, length - 1)`` the losses in place, 0 at unlabelled positions."""
        import torch

        out = torch.zeros(self.mask.shape, dtype=self.nll.dtype, device=self.nll.device)
        out[self.coords[:, 0], self.coords[:, 1]] = self.nll
        return out

    def row_sums(self) -> torch.Tensor:
        """``(batch,)`` each row's summed loss (nats; 0 without a labelled token)."""
        return self.dense().sum(dim=1)

    def row_counts(self) -> torch.Tensor:
        """``(batch,)`` each row's number of labelled tokens."""
        return self.mask.sum(dim=1)

    def row_means(self) -> torch.Tensor:
        """``(batch,)`` each row's mean loss (0 for a row without a labelled token)."""
        count = self.row_counts().clamp_min(1).to(self.nll.dtype)
        return self.row_sums() / count

    def group_means(self, width: int) -> torch.Tensor:
        """The mean over every labelled token of each group of ``width`` consecutive
        rows: ``(batch // width,)``, the training loss of each group."""
        groups = self.batch // width
        sums = self.row_sums()[: groups * width].view(groups, width).sum(dim=1)
        count = self.row_counts()[: groups * width].view(groups, width).sum(dim=1)
        return sums / count.clamp_min(1).to(self.nll.dtype)


class _Positions:
    """What :func:`output_positions` did: whether the output layer was narrowed."""

    def __init__(self) -> None:
        self.applied = False


def _output_layer(model: Any) -> Any:
    """The model's output layer when it may be narrowed, else None.

    Not when it (or a module inside it, such as a LoRA factor) carries forward hooks:
    per-example gradient hooks and stacked adapters read whole ``(batch, length)``
    rows there.
    """
    import torch

    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module):
        return None
    for module in head.modules():
        # torch has no public way to list a module's hooks.
        if module._forward_hooks or module._forward_pre_hooks:
            return None
    return head


@contextlib.contextmanager
def output_positions(model: Any, positions: torch.Tensor) -> Iterator[_Positions]:
    """Within the block, the model's output layer reads only ``positions``.

    ``positions`` index the flattened ``(batch, length)`` hidden states of the next
    forward: its logits are then ``(len(positions), vocab)``, one row per position,
    instead of ``(batch, length, vocab)``. The yielded object's ``applied`` says
    whether that happened: a model without a usable output layer
    (``get_output_embeddings``), one whose output layer is hooked, or one that
    computes its logits some other way returns the whole logits as usual.
    """
    state = _Positions()
    head = _output_layer(model)
    if head is None:
        yield state
        return

    def narrow(module: Any, args: tuple) -> tuple | None:
        if not args or args[0].dim() != 3:
            return None
        hidden = args[0]
        state.applied = True
        # .to: a no-op unless the model's layers are spread over devices.
        keep = positions.to(hidden.device)
        flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
        return (flat, *args[1:])

    handle = head.register_forward_pre_hook(narrow)
    try:
        yield state
    finally:
        handle.remove()


def forward_losses(
    model: Any, input_ids: torch.Tensor, labels: torch.Tensor
) -> TokenLosses:
    """Run ``model`` on a right-padded batch; the loss of every labelled token.

    The output layer computes logits at the labelled positions only (see
    :func:`output_positions`), which gives the losses of the whole logits. The
    forward runs without an attention mask: with right padding no real token attends
    to a later pad, so the batch takes the fast path.

    Parameters
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
        A causal LM (with ``get_output_embeddings``, or its whole logits are used).
    input_ids, labels : torch.Tensor
        ``(batch, length)``, on the model's device (:func:`harp.nn.collate`).

    Returns
    -------
    TokenLosses
    """
    import torch.nn.functional as F

    mask = labels[:, 1:] != IGNORE_INDEX
    # The labelled positions, found once, before the forward, while the device has
    # nothing queued; everything after indexes with them (no further wait).
    coords = mask.nonzero()
    rows, cols = coords[:, 0], coords[:, 1]
    targets = labels[:, 1:][rows, cols]
    with output_positions(model, rows * int(labels.shape[1]) + cols) as narrowed:
        logits = model(input_ids=input_ids, use_cache=False).logits
    if not narrowed.applied or logits.dim() != 2:  # the whole logits came back
        logits = logits[:, :-1][rows, cols]
    nll = F.cross_entropy(logits.float(), targets, reduction="none")
    return TokenLosses(nll, mask, coords)


def token_losses(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihoods and the mask of labelled positions.

    Parameters
    ----------
    logits : torch.Tensor
        ``(batch, length, vocab)``.
    labels : torch.Tensor
        ``(batch, length)`` token ids, :data:`IGNORE_INDEX` where no loss is taken.

    Returns
    -------
    nll : torch.Tensor
        ``(batch, length - 1)`` fp32 losses, 0 at unlabelled positions.
    mask : torch.Tensor
        ``(batch, length - 1)`` bool, True at labelled positions.
    """
    import torch.nn.functional as F

    # Dense (no data-dependent shape), so that torch.func.vmap can map it.
    shift_logits, shift_labels = logits[:, :-1, :].float(), labels[:, 1:]
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    return nll, shift_labels != IGNORE_INDEX


def row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean loss over its labelled tokens: ``(batch,)`` fp32.

    A row without a labelled token gets 0 (callers drop such rows before).
    """
    nll, mask = token_losses(logits, labels)
    count = mask.sum(dim=1).clamp_min(1)
    return nll.sum(dim=1) / count.to(nll.dtype)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss: mean over every labelled token of the batch (a scalar).

    Parameters
    ----------
    logits : torch.Tensor
        ``(batch, length, vocab)``.
    labels : torch.Tensor
        ``(batch, length)``; position ``t`` is predicted from logits at ``t - 1``;
        :data:`IGNORE_INDEX` positions carry no loss.

    Returns
    -------
    torch.Tensor
        Scalar loss (token-weighted mean over the batch).
    """
    nll, mask = token_losses(logits, labels)
    return nll.sum() / mask.sum()
