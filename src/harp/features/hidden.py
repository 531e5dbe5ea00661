"""Hidden-state embeddings of a causal language model (RDS+'s row representation).

A row is read by the model exactly as finetuning reads it
(:func:`harp.nn.encode_examples`: BOS, ``format_prompt(prompt)``, response, EOS); its
last-layer hidden states (the input of the LM head) are averaged with weights
proportional to the token position ``1..T`` over the row's own tokens, so that later
tokens, which have read more of the row, count more (SGPT's weighted mean pooling,
which RDS+ uses), and the result is scaled to unit length. Padding never enters: its
weight is zero, and right padding under a causal mask does not change the states of
the tokens before it.

Nothing here imports torch at import time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from harp.core.errors import DataError, NumericalError, ParameterError
from harp.core.progress import ProgressBar
from harp.nn.encode import (
    collate,
    encode_examples,
    fit_max_length,
    length_batches,
    model_device,
    pad_token_id,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

    from harp.core.records import ExampleSet

__all__ = ["final_hidden_states", "hidden_state_embeddings", "position_weighted_mean"]

log = logging.getLogger(__name__)


def position_weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` over tokens, weighted by position among the unmasked ones.

    Parameters
    ----------
    hidden : torch.Tensor
        ``(batch, length, width)`` hidden states (any float dtype).
    mask : torch.Tensor
        ``(batch, length)`` attention mask: 1 for a token of the row, 0 for padding.

    Returns
    -------
    torch.Tensor
        ``(batch, width)`` float32: :math:`\\sum_t w_t h_t` with
        :math:`w_t = p_t / \\sum_s p_s`, where :math:`p_t` is the 1-based position of
        token :math:`t` among the row's tokens and 0 on padding (either side).

    Examples
    --------
    >>> import torch
    >>> h = torch.tensor([[[1.0], [4.0], [9.0]]])
    >>> position_weighted_mean(h, torch.tensor([[1, 1, 0]])).tolist()
    [[3.0]]
    """
    import torch

    keep = mask.to(torch.long)
    # Counting the row's own tokens makes the weights independent of the padding side.
    positions = (keep.cumsum(dim=-1) * keep).to(torch.float32)
    weights = positions / positions.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return (weights.unsqueeze(-1) * hidden.float()).sum(dim=1)


def final_hidden_states(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The last layer's hidden states, the input of the LM head: ``(b, T, width)``.

    The model's backbone (``model.base_model``) is run alone when it returns them, so
    the ``(b, T, vocabulary)`` logits are never formed; otherwise the whole model runs
    with ``output_hidden_states=True`` and the last entry is taken (the same tensor:
    transformers' causal LMs feed the backbone's ``last_hidden_state`` to the head).
    """
    base = getattr(model, "base_model", None)
    if base is not None and base is not model:
        out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        states = getattr(out, "last_hidden_state", None)
        if states is not None:
            return states
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        use_cache=False,
    )
    return out.hidden_states[-1]


def hidden_state_embeddings(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: ExampleSet,
    *,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
) -> np.ndarray:
    """Unit-length, position-weighted mean last-layer hidden states of ``examples``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM, placed on its device (:func:`harp.models.load_model`); run in
        eval mode without gradients, and left as it was found.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer (with a pad or EOS token).
    examples : ExampleSet
        Rows with ``prompt`` and ``response``.
    batch_size : int, default 16
        Rows per forward pass (grouped by length, so little padding is computed).
    max_length : int, default 512
        Most tokens per row, capped by the model's position limit; longer rows are
        truncated as for finetuning (:func:`harp.nn.encode_examples`).
    progress : bool, default False
        Show a progress bar.

    Returns
    -------
    numpy.ndarray
        ``(len(examples), width)`` float32 rows of unit L2 norm, in input order.

    Raises
    ------
    harp.core.errors.NumericalError
        When a row's hidden states are NaN or infinite (ids named).
    harp.core.errors.DataError
        When a row keeps no token within ``max_length``.
    harp.core.errors.ParameterError
        For a ``batch_size`` or ``max_length`` below 1 or 2.

    Examples
    --------
    >>> from harp.models import ProxyConfig, build_proxy
    >>> from harp.core.records import ExampleSet
    >>> model, tok = build_proxy(ProxyConfig(hidden_size=16, num_layers=1,
    ...                                      num_heads=2, intermediate_size=32))
    >>> rows = ExampleSet.from_records([{"prompt": "2+2=", "response": "4"}])
    >>> z = hidden_state_embeddings(model, tok, rows)
    >>> z.shape, round(float((z**2).sum()), 5)
    ((1, 16), 1.0)
    """
    import torch

    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ParameterError(f"batch_size={batch_size!r} is not allowed; expected >= 1")
    limit = fit_max_length(model, int(max_length))
    enc = encode_examples(tokenizer, examples, max_length=limit)
    if enc.dropped:
        ids = [examples[i].id for i in enc.dropped]
        raise DataError(
            f"{len(ids)} row(s) keep no token within max_length={limit}: ids "
            f"{ids[:10]}; raise max_length or shorten them"
        )
    rows = list(zip(enc.input_ids, enc.labels))
    batches = length_batches([len(ids) for ids, _ in rows], batch_size)
    pad = pad_token_id(tokenizer)
    device = model_device(model)
    out: np.ndarray | None = None
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            ProgressBar(progress, "hidden states", len(batches), unit="batch") as bar,
        ):
            for batch in batches:
                input_ids, mask, _ = collate([rows[i] for i in batch], pad, device)
                states = final_hidden_states(model, input_ids, mask)
                pooled = position_weighted_mean(states, mask).cpu().numpy()
                if out is None:
                    out = np.empty((len(rows), pooled.shape[1]), dtype=np.float64)
                out[np.asarray(batch)] = pooled
                bar.advance()
    finally:
        model.train(was_training)
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        ids = [examples[enc.indices[i]].id for i in np.flatnonzero(bad)]
        raise NumericalError(
            f"non-finite hidden states for {len(ids)} row(s): ids {ids[:10]}; try "
            "dtype='fp32' (--dtype fp32)"
        )
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    unit = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    return np.ascontiguousarray(unit, dtype=np.float32)
