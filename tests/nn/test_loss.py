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


# -- forward_losses: logits at the labelled positions only -------------------------


def _model_batch(tiny, lora=True):
    from harp.data import ExampleSet
    from harp.models import attach_lora
    from harp.nn import collate, encode_examples, pad_token_id

    model, tok = tiny
    if lora:
        model = attach_lora(model, r=4, alpha=8, dropout=0.0)
        with torch.no_grad():  # a non-zero B, so every LoRA factor has a gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05)
    rows = ExampleSet.from_records(
        [
            {"prompt": "up: ab", "response": "AB"},
            {"prompt": "a longer prompt: xyz", "response": "a longer answer"},
            {"prompt": "q", "response": "r"},
            {"prompt": "count: abc", "response": "3"},
        ]
    )
    enc = encode_examples(tok, rows, max_length=64)
    ids, _, labels = collate(
        list(zip(enc.input_ids, enc.labels)), pad_token_id(tok), torch.device("cpu")
    )
    return model, ids, labels


def _whole(model, ids, labels):
    return token_losses(model(input_ids=ids, use_cache=False).logits, labels)


def test_forward_losses_equal_the_whole_logits_losses(tiny):
    from harp.nn import forward_losses, output_positions

    model, ids, labels = _model_batch(tiny)
    with torch.no_grad():
        nll, mask = _whole(model, ids, labels)
        flat = forward_losses(model, ids, labels)
        positions = torch.arange(3)
        with output_positions(model, positions) as narrowed:
            logits = model(input_ids=ids, use_cache=False).logits
    assert narrowed.applied and logits.shape[0] == 3 and logits.dim() == 2
    assert flat.batch == 4 and flat.nll.shape == (int(mask.sum()),)
    assert torch.equal(flat.mask, mask) and torch.equal(flat.row_counts(), mask.sum(1))
    assert torch.equal(flat.dense()[~mask], torch.zeros(int((~mask).sum())))
    assert torch.allclose(flat.nll, nll[mask], atol=1e-6)
    assert torch.allclose(flat.mean(), nll.sum() / mask.sum(), atol=1e-6)
    assert torch.allclose(flat.row_sums(), nll.sum(1), atol=1e-6)
    assert torch.allclose(flat.row_means(), nll.sum(1) / mask.sum(1), atol=1e-6)
    halves = [nll[:2].sum() / mask[:2].sum(), nll[2:].sum() / mask[2:].sum()]
    pairs = torch.stack(halves)
    assert torch.allclose(flat.group_means(2), pairs, atol=1e-6)


def test_forward_losses_give_the_whole_logits_gradients(tiny):
    from harp.nn import forward_losses

    model, ids, labels = _model_batch(tiny)
    params = [p for p in model.parameters() if p.requires_grad]
    nll, mask = _whole(model, ids, labels)
    expected = torch.autograd.grad(nll.sum() / mask.sum(), params)
    got = torch.autograd.grad(forward_losses(model, ids, labels).mean(), params)
    assert all(g.abs().max() > 0 for g in expected)
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, rtol=1e-5, atol=1e-8)


def test_a_hooked_output_layer_gets_the_whole_logits(tiny):
    """Per-example gradient hooks and stacked adapters read whole rows there."""
    from harp.nn import forward_losses, output_positions

    model, ids, labels = _model_batch(tiny, lora=False)
    shapes = []
    handle = model.lm_head.register_forward_hook(
        lambda module, args, out: shapes.append(tuple(out.shape))
    )
    try:
        with torch.no_grad():
            flat = forward_losses(model, ids, labels)
            with output_positions(model, torch.arange(2)) as narrowed:
                model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    assert not narrowed.applied
    assert shapes[0] == (*ids.shape, model.config.vocab_size)
    with torch.no_grad():
        nll, mask = _whole(model, ids, labels)
    assert torch.allclose(flat.row_sums(), nll.sum(1), atol=1e-6)


def test_a_model_without_an_output_layer_gets_the_whole_logits(tiny):
    from harp.nn import forward_losses

    model, ids, labels = _model_batch(tiny, lora=False)

    class Wrapped(torch.nn.Module):  # a causal LM that hides its output layer
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    with torch.no_grad():
        flat = forward_losses(Wrapped(model), ids, labels)
        nll, mask = _whole(model, ids, labels)
    assert torch.allclose(flat.nll, nll[mask], atol=1e-6)
