"""Finetuning: determinism, LoRA vs full, NaN guard, the caller's RNG."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from harp.core.errors import NumericalError, ParameterError
from harp.data import ExampleSet
from harp.models import load_model
from harp.training import TrainConfig, finetune

WORDS = ["abcd", "bcda", "cdab", "dabc", "abdc", "badc", "cadb", "dcba"]


def _train(n=16):
    return ExampleSet.from_records(
        [
            {"prompt": f"rev: {w}", "response": w[::-1], "domain": "rev"}
            for w in (WORDS * 4)[:n]
        ]
    )


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_same_seed_identical_weights_different_seed_different(tiny_dir):
    config = TrainConfig(steps=6, batch_size=4, lr=1e-2, seed=1)
    a = _params(finetune(tiny_dir, None, _train(), config))
    b = _params(finetune(tiny_dir, None, _train(), config))
    c = _params(
        finetune(
            tiny_dir, None, _train(), TrainConfig(**{**config.to_dict(), "seed": 2})
        )
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lora = [k for k in a if "lora_" in k]
    assert lora and any(not torch.equal(a[k], c[k]) for k in lora)


def test_lora_changes_only_adapter_and_model_is_peft(tiny_dir):
    base, tok = load_model(tiny_dir)
    before = _params(base)
    tuned = finetune(base, tok, _train(), TrainConfig(steps=4, batch_size=4, lr=1e-2))
    from peft import PeftModel

    assert isinstance(tuned, PeftModel) and not tuned.training
    after = _params(tuned.get_base_model())
    changed = {k for k in after if k in before and not torch.equal(before[k], after[k])}
    assert not changed  # the frozen base weights are untouched
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)


def test_full_finetune_changes_weights(tiny_dir):
    base, tok = load_model(tiny_dir)
    before = _params(base)
    tuned = finetune(
        base, tok, _train(), TrainConfig(method="full", steps=3, batch_size=4, lr=1e-2)
    )
    assert tuned is base
    after = _params(tuned)
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_finetune_lowers_response_loss(tiny_dir):
    from harp.training.evaluate import response_losses

    base, tok = load_model(tiny_dir)
    before = response_losses(base, tok, _train()).mean()
    tuned = finetune(base, tok, _train(), TrainConfig(steps=20, batch_size=8, lr=1e-2))
    assert response_losses(tuned, tok, _train()).mean() < before - 0.1


def test_nan_loss_raises_numerical_error_with_ids(tiny_dir):
    base, tok = load_model(tiny_dir)
    with torch.no_grad():
        base.model.embed_tokens.weight.fill_(float("nan"))
    data = _train(4)
    with pytest.raises(NumericalError) as info:
        finetune(base, tok, data, TrainConfig(steps=2, batch_size=4))
    assert "nan" in str(info.value)
    assert all(ex.id in str(info.value) for ex in data)


def test_bad_inputs(tiny_dir, tiny):
    model, tok = tiny
    with pytest.raises(ParameterError, match="empty"):
        finetune(model, tok, ExampleSet(()), TrainConfig(steps=1))
    with pytest.raises(ParameterError, match="tokenizer"):
        finetune(model, None, _train(), TrainConfig(steps=1))
    with pytest.raises(ParameterError, match="TrainConfig"):
        finetune(model, tok, _train(), {"steps": 1})


def test_caller_rng_untouched_and_epochs(tiny_dir, caplog):
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    with caplog.at_level(logging.DEBUG, logger="harp.nn.loop"):
        finetune(tiny_dir, None, _train(8), TrainConfig(epochs=1.0, batch_size=4))
    assert torch.equal(torch.rand(1), expected)
    assert any("2 steps" in r.getMessage() for r in caplog.records)


def test_rows_longer_than_the_models_positions_are_cut_to_them(
    tiny_dir, caplog, monkeypatch
):
    import harp.nn.encode
    from harp.training.evaluate import response_losses

    monkeypatch.setattr(harp.nn.encode, "_CAPPED", set())  # warned once per process

    model, tok = load_model(tiny_dir)
    cap = model.config.max_position_embeddings
    rows = ExampleSet.from_records(
        [{"prompt": "x" * (2 * cap), "response": "abcd", "domain": "d"}] * 2
        + [{"prompt": "rev: abcd", "response": "dcba", "domain": "d"}] * 2
    )
    too_long = TrainConfig(steps=1, batch_size=4, max_length=4 * cap)
    with caplog.at_level(logging.WARNING):
        finetune(model, tok, rows, too_long)
        losses = response_losses(model, tok, rows, max_length=4 * cap)
    assert f"longer than the model's {cap} positions" in caplog.text
    # Cut to the model's positions (the prompt gives way, the response stays),
    # every row is scored.
    assert np.isfinite(losses).all() and (losses > 0).all()
