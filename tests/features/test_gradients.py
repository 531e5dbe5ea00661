"""Batched exact per-example gradients agree with one backward per example."""

from __future__ import annotations

import numpy as np
import pytest

from harp.core.errors import DataError, NumericalError, ParameterError
from harp.data import ExampleSet
from harp.features.gradients import (
    adam_direction,
    gradient_dim,
    per_sample_gradients,
    per_sample_gradients_loop,
    trainable_names,
)
from harp.features.projection import RandomProjector

torch = pytest.importorskip("torch")


def _examples(n: int = 11) -> ExampleSet:
    # mixed lengths, so batches carry padding
    return ExampleSet.from_records(
        [
            {"prompt": "what is " + "x" * (i % 7), "response": "ab" * (i % 5 + 1)}
            for i in range(n)
        ]
    )


@pytest.fixture
def lora(tiny):
    from harp.models import attach_lora

    model, tok = tiny
    torch.manual_seed(0)
    model = attach_lora(model, r=4)
    with torch.no_grad():  # non-zero B, so that A's gradient is non-zero too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    return model, tok


def _collect(gen):
    rows, feats = zip(*gen)
    return np.concatenate(rows), np.concatenate(feats)


def _close(a, b, rel=1e-5):
    scale = float(np.abs(b).max())
    assert scale > 0
    assert float(np.abs(a - b).max()) <= rel * scale


def test_names_and_dim(lora):
    model, _ = lora
    names = trainable_names(model)
    assert names == sorted(names) and all("lora_" in n for n in names)
    assert gradient_dim(model) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_batched_equals_loop_and_batch_size_invariant(lora, method):
    model, tok = lora
    ex = _examples()
    ref_rows, ref = _collect(per_sample_gradients_loop(model, tok, ex, max_length=64))
    assert ref.shape == (len(ex), gradient_dim(model)) and ref.dtype == np.float32
    sizes = (1, 3, 8) if method == "hooks" else (3,)
    for bs in sizes:
        rows, got = _collect(
            per_sample_gradients(
                model, tok, ex, batch_size=bs, max_length=64, method=method
            )
        )
        np.testing.assert_array_equal(rows, ref_rows)
        _close(got, ref)


def test_projected_equals_loop(lora):
    model, tok = lora
    ex = _examples()
    proj = RandomProjector(gradient_dim(model), 64, seed=3, block_size=1000)
    _, ref = _collect(
        per_sample_gradients_loop(model, tok, ex, max_length=64, projector=proj)
    )
    for project_rows in (None, 1, 5):
        chunks = list(
            per_sample_gradients(
                model,
                tok,
                ex,
                batch_size=4,
                max_length=64,
                projector=proj,
                project_rows=project_rows,
            )
        )
        if project_rows == 5:  # groups of whole batches, at least 5 rows
            assert [len(r) for r, _ in chunks] == [8, 3]
        rows, got = _collect(iter(chunks))
        np.testing.assert_array_equal(rows, np.arange(len(ex)))
        assert got.shape == (len(ex), 64)
        _close(got, ref)
    _, raw = _collect(per_sample_gradients(model, tok, ex, batch_size=4, max_length=64))
    _close(got, proj.project(torch.from_numpy(raw)).numpy())


def test_model_state_untouched(lora):
    model, tok = lora
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    list(per_sample_gradients(model, tok, _examples(4), max_length=64))
    assert model.training
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None


def test_adam_direction_by_hand():
    g = torch.tensor([[0.5, -2.0]])
    m = torch.tensor([0.1, 0.2])
    v = torch.tensor([0.01, 0.04])
    out = adam_direction(g, m, v, beta1=0.9, beta2=0.999, eps=1e-8)
    expect = []
    for gi, mi, vi in zip([0.5, -2.0], [0.1, 0.2], [0.01, 0.04]):
        mt = 0.9 * mi + 0.1 * gi
        vt = 0.999 * vi + 0.001 * gi * gi
        expect.append(mt / (vt**0.5 + 1e-8))
    np.testing.assert_allclose(out.numpy()[0], expect, rtol=1e-6)


def test_preconditioned_rows(lora):
    model, tok = lora
    ex = _examples(5)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    pre = {
        n: (
            torch.randn(params[n].shape, generator=gen) * 1e-3,
            torch.rand(params[n].shape, generator=gen) * 1e-6,
        )
        for n in trainable_names(model)
    }
    _, raw = _collect(per_sample_gradients(model, tok, ex, max_length=64))
    _, got = _collect(
        per_sample_gradients(model, tok, ex, max_length=64, preconditioner=pre)
    )
    m = torch.cat([pre[n][0].reshape(-1) for n in trainable_names(model)])
    v = torch.cat([pre[n][1].reshape(-1) for n in trainable_names(model)])
    _close(got, adam_direction(torch.from_numpy(raw), m, v).numpy())
    _, loop = _collect(
        per_sample_gradients_loop(model, tok, ex, max_length=64, preconditioner=pre)
    )
    _close(got, loop, rel=1e-4)
    with pytest.raises(ParameterError, match="preconditioner"):
        next(per_sample_gradients(model, tok, ex, preconditioner={}))


def test_nan_gradient_names_the_examples(lora):
    model, tok = lora
    ex = _examples(3)
    name = trainable_names(model)[0]
    with torch.no_grad():
        dict(model.named_parameters())[name].fill_(float("nan"))
    with pytest.raises(NumericalError, match=ex.ids[0]):
        next(per_sample_gradients(model, tok, ex, max_length=64))
    with pytest.raises(NumericalError, match=ex.ids[0]):
        next(per_sample_gradients_loop(model, tok, ex, max_length=64))


def test_truncated_rows_raise_or_skip(lora, monkeypatch):
    # encode_examples keeps a response token whenever it can (EOS at least), so a
    # fully truncated row is simulated: the encoder reports row 1 as dropped.
    import dataclasses
    import importlib

    gradients = importlib.import_module("harp.features.gradients")

    real = gradients.encode_examples

    def dropping(tokenizer, examples, **kwargs):
        enc = real(tokenizer, examples, **kwargs)
        keep = [j for j, e in enumerate(examples) if not e.prompt.startswith("pp")]
        gone = tuple(j for j in range(len(examples)) if j not in keep)
        return dataclasses.replace(
            enc,
            indices=tuple(enc.indices[j] for j in keep),
            input_ids=tuple(enc.input_ids[j] for j in keep),
            labels=tuple(enc.labels[j] for j in keep),
            n_prompt=tuple(enc.n_prompt[j] for j in keep),
            dropped=gone,
        )

    monkeypatch.setattr(gradients, "encode_examples", dropping)
    ex = ExampleSet.from_records(
        [
            {"prompt": "hi", "response": "yo"},
            {"prompt": "pp", "response": "r"},
            {"prompt": "ok", "response": "fine"},
        ]
    )
    with pytest.raises(DataError, match=ex.ids[1]):
        list(per_sample_gradients(lora[0], lora[1], ex, max_length=16))
    rows, feats = _collect(
        per_sample_gradients(lora[0], lora[1], ex, max_length=16, skip_empty=True)
    )
    np.testing.assert_array_equal(rows, [0, 2])
    assert feats.shape[0] == 2


def test_bad_arguments(lora):
    model, tok = lora
    ex = _examples(2)
    with pytest.raises(ParameterError):
        next(per_sample_gradients(model, tok, ex, batch_size=0))
    with pytest.raises(ParameterError, match="in_dim"):
        next(per_sample_gradients(model, tok, ex, projector=RandomProjector(5, 2)))
    with pytest.raises(ParameterError, match="method"):
        next(per_sample_gradients(model, tok, ex, method="magic"))


def test_a_batch_out_of_memory_is_halved_and_one_row_too_big_is_named(monkeypatch):
    """A batch that runs out of device memory is split until it fits; a row that
    alone does not fit stops with one message naming it."""
    from harp.core.errors import NumericalError
    from harp.features import gradients

    ex = _examples(6)
    calls: list[int] = []

    def compute(rows, encoded):
        calls.append(len(rows))
        if len(rows) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")
        return torch.ones(len(rows), 3) * torch.tensor(rows)[:, None]

    encoded = [((1, 2), (1, 2))] * 6
    parts = list(
        gradients._halving_on_oom(compute, list(range(6)), encoded, ex, "cuda:0")
    )
    assert [r for r, _ in parts] == [[0], [1, 2], [3], [4, 5]]
    assert calls == [6, 3, 1, 2, 3, 1, 2]
    assert torch.equal(torch.cat([g for _, g in parts])[:, 0], torch.arange(6.0))

    def never(rows, encoded):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(NumericalError, match=f"example {ex.ids[0]} .* alone"):
        list(gradients._halving_on_oom(never, [0], encoded[:1], ex, "cuda:0"))

    def other(rows, encoded):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        list(gradients._halving_on_oom(other, [0, 1], encoded[:2], ex, "cuda:0"))
