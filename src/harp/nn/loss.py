"""The one loss of harp: next-token cross-entropy over labelled (response) tokens.

Position ``t`` of a row is predicted from the logits at ``t - 1``; positions labelled
:data:`~harp.nn.encode.IGNORE_INDEX` (the prompt, padding) carry no loss. The logits
are upcast to fp32 first, whatever the model's dtype. Three reductions of the same
per-token losses: the token-weighted batch mean (training), the per-row mean
(per-example gradients, scoring rows) and the per-token values themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harp.nn.encode import IGNORE_INDEX

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["causal_lm_loss", "row_losses", "token_losses"]


def _shifted(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits of positions ``0..T-2`` and the labels they predict."""
    return logits[:, :-1, :].float(), labels[:, 1:]


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

    shift_logits, shift_labels = _shifted(logits, labels)
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
    import torch.nn.functional as F

    shift_logits, shift_labels = _shifted(logits, labels)
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
