"""The one training loop: a single step equals a loop step; the loop is seeded."""

from __future__ import annotations

import pytest
import torch

from harp.core.errors import NumericalError, ParameterError
from harp.data import ExampleSet
from harp.nn import Trainer, TrainStep, encode_examples, pad_token_id, train_loop

ROWS = [{"prompt": f"up: {w}", "response": w.upper()} for w in ("ab", "cd", "ef")]


def _rows(tok):
    enc = encode_examples(tok, ExampleSet.from_records(ROWS), max_length=64)
    return list(zip(enc.input_ids, enc.labels)), [f"r{i}" for i in enc.indices]


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_single_steps_equal_a_loop_over_the_same_batches(tiny_config):
    from harp.models import build_proxy

    a, tok = build_proxy(tiny_config, seed=0)
    b, _ = build_proxy(tiny_config, seed=0)
    rows, ids = _rows(tok)
    seen: list[TrainStep] = []
    losses = train_loop(
        a,
        rows,
        ids,
        pad_id=pad_token_id(tok),
        steps=3,
        batch_size=len(rows),
        lr=1e-2,
        warmup_ratio=0.0,
        schedule="constant",
        weight_decay=0.0,
        max_grad_norm=None,
        seed=0,
        progress=False,
        description="t",
        on_step=seen.append,
    )
    assert [s.step for s in seen] == [1, 2, 3] and seen[-1].total == 3
    assert not a.training  # the loop leaves the model in eval mode
    # The same batches by hand (a batch holding every row, in the loop's order).
    generator = torch.Generator().manual_seed(0)
    trainer = Trainer(b, pad_id=pad_token_id(tok), lr=1e-2)
    manual = []
    for _ in range(3):
        order = torch.randperm(len(rows), generator=generator).tolist()
        manual.append(trainer.step([rows[i] for i in order], [ids[i] for i in order]))
    assert manual == losses and trainer.steps_done == 3
    assert all(torch.equal(x, y) for x, y in zip(_params(a), _params(b)))
    assert not b.training  # a step restores the mode it found


def test_schedule_warms_up_then_decays(tiny):
    model, tok = tiny
    trainer = Trainer(
        model,
        pad_id=pad_token_id(tok),
        lr=1.0,
        steps=4,
        warmup_ratio=0.5,
        schedule="linear",
    )
    rows, ids = _rows(tok)
    lrs = []
    for _ in range(4):
        lrs.append(trainer.lr)
        trainer.step(rows, ids)
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5])


def test_nan_loss_names_the_batch(tiny):
    model, tok = tiny
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("nan"))
    rows, ids = _rows(tok)
    trainer = Trainer(model, pad_id=pad_token_id(tok), lr=1e-3, description="demo")
    with pytest.raises(NumericalError, match=r"demo: the loss became nan at step 1"):
        trainer.step(rows, ids)


def test_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ParameterError, match="schedule='exp'"):
        Trainer(model, pad_id=0, lr=1e-3, schedule="exp")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ParameterError, match="no trainable parameters"):
        Trainer(model, pad_id=0, lr=1e-3)
    with pytest.raises(ParameterError, match="no training rows"):
        train_loop(
            model,
            [],
            [],
            pad_id=0,
            steps=1,
            batch_size=1,
            lr=1e-3,
            warmup_ratio=0.0,
            schedule="constant",
            weight_decay=0.0,
            max_grad_norm=None,
            seed=0,
            progress=False,
            description="t",
        )
