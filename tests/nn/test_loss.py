"""The one loss: its three reductions agree with each other and with a manual NLL."""

from __future__ import annotations

import torch

from harp.nn import IGNORE_INDEX, causal_lm_loss, row_losses, token_losses


def _batch(seed=0, batch=3, length=7, vocab=11):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=gen)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[0, :3] = IGNORE_INDEX  # a prompt
    labels[1, 5:] = IGNORE_INDEX  # padding
    labels[2, :] = IGNORE_INDEX  # nothing to predict
    labels[2, 6] = 4
    return logits, labels


def _manual(logits, labels):
    """Next-token NLL by hand: position t is predicted from logits at t - 1."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll * keep, keep


def test_token_losses_match_a_manual_nll():
    logits, labels = _batch()
    nll, mask = token_losses(logits, labels)
    expected, keep = _manual(logits, labels)
    assert torch.equal(mask, keep)
    assert torch.allclose(nll.double(), expected, atol=1e-6)
    assert nll.dtype == torch.float32 and bool((nll[~mask] == 0).all())


def test_reductions_agree():
    logits, labels = _batch(1)
    nll, mask = token_losses(logits, labels)
    rows = row_losses(logits, labels)
    assert torch.allclose(rows, nll.sum(1) / mask.sum(1), atol=1e-6)
    assert torch.allclose(causal_lm_loss(logits, labels), nll.sum() / mask.sum())


def test_losses_are_fp32_for_bf16_logits():
    logits, labels = _batch(2)
    low = logits.to(torch.bfloat16)
    assert causal_lm_loss(low, labels).dtype == torch.float32
    assert row_losses(low, labels).dtype == torch.float32
    assert torch.allclose(
        row_losses(low, labels), row_losses(low.float(), labels), atol=0
    )
