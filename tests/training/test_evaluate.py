"""Evaluation: answer extraction, estimates, batched generation, reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from harp.core.errors import ParameterError
from harp.data import ExampleSet
from harp.models import load_model
from harp.training import (
    Estimate,
    EvalConfig,
    EvalReport,
    TrainConfig,
    evaluate,
    extract_answer,
    finetune,
    format_prompt,
    generate_greedy,
    is_correct,
)

GSM_REF = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = 72\n#### 72"


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("She sold 72 in total.\n#### 72", GSM_REF, True),
        ("#### 72.00", GSM_REF, True),
        ("#### $72", GSM_REF, True),
        ("#### 71", GSM_REF, False),
        ("The answer is 72.", GSM_REF, True),
        ("48 + 24 = 72", GSM_REF, True),  # no marker: last number
        ("72 clips, not 48", GSM_REF, False),
        ("", GSM_REF, False),
        ("#### 1,234", "so\n#### 1234", True),
        ("#### -5", "#### -5", True),
        ("So the answer is yes.", "Birds fly. So the answer is yes.", True),
        ("the answer is (B)", "So the answer is (B).", True),
        ("yes", "So the answer is yes.", True),
        ("So the answer is no.", "So the answer is yes.", False),
        (" cab\n", "cab", True),
        ("Cab", "cab", False),
        ("cab d", "cabd", False),
    ],
)
def test_is_correct(prediction, reference, expected):
    assert is_correct(prediction, reference) is expected


def test_extract_answer():
    assert extract_answer(GSM_REF) == ("gsm8k", "72")
    assert extract_answer("#### 1,000,000") == ("gsm8k", "1000000")
    assert extract_answer("x\n#### 3\n#### 4") == ("gsm8k", "4")
    assert extract_answer("So the answer is: Paris.") == ("answer_is", "paris")
    assert extract_answer("plain") is None


def test_estimate():
    e = Estimate.from_values([1, 0, 1, 1])
    assert e.mean == 0.75 and e.n == 4
    assert math.isclose(e.var, np.var([1, 0, 1, 1], ddof=1) / 4)
    assert math.isclose(e.stderr, math.sqrt(e.var))
    assert math.isnan(Estimate.from_values([]).mean)
    assert math.isnan(Estimate.from_values([1.0]).var)
    merged = Estimate.from_values([1, 1]).merge(Estimate.from_values([0, 0, 0, 0]))
    assert math.isclose(merged.mean, 1 / 3) and merged.n == 6
    with pytest.raises(AttributeError):
        e.mean = 0.5  # frozen


def _prompts(n=12):
    return [format_prompt(f"copy: {w}") for w in ["ab", "abcde", "b", "bcd"] * (n // 4)]


def test_batched_generation_equals_one_at_a_time(tiny):
    model, tok = tiny
    with torch.no_grad():  # a sharper random model: fewer near-ties in argmax
        for p in model.parameters():
            p.mul_(8.0)
    prompts = _prompts()
    batched = generate_greedy(model, tok, prompts, max_new_tokens=6, batch_size=5)
    single = [
        generate_greedy(model, tok, [p], max_new_tokens=6, batch_size=1)[0]
        for p in prompts
    ]
    assert batched == single
    assert any(batched)


def test_generation_stops_at_eos(tiny):
    model, tok = tiny
    with torch.no_grad():  # make EOS the argmax everywhere
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_token_id] = 1.0
        model.model.norm.weight.fill_(1.0)
        model.model.embed_tokens.weight.abs_()
    out = generate_greedy(model, tok, _prompts(4), max_new_tokens=5)
    assert out == [""] * 4


def test_max_new_tokens_past_the_models_positions_is_capped(tiny, caplog):
    model, tok = tiny
    positions = model.config.max_position_embeddings
    with caplog.at_level("WARNING", logger="harp.training.evaluate"):
        out = generate_greedy(model, tok, _prompts(4), max_new_tokens=10**9)
    assert len(out) == 4
    assert all(len(tok(o)["input_ids"]) < positions for o in out)
    assert f"does not fit the model's {positions} positions" in caplog.text


def _task(n, offset=0):
    words = ["abcd", "bcda", "cdab", "dabc", "abdc", "badc", "cadb", "dcba"]
    return ExampleSet.from_records(
        [
            {"prompt": f"rev {w}", "response": w[::-1], "domain": d}
            for d, w in zip(["x", "y"] * n, (words * 4)[offset : offset + n])
        ]
    )


def test_evaluate_memorised_task_beats_base(tiny_dir):
    data = _task(8)
    config = EvalConfig(batch_size=4)
    base, tok = load_model(tiny_dir)
    before = evaluate(base, tok, data, config)
    # Long and gentle enough to memorise on every seed (5 of 5 checked): at lr 1e-2
    # and 120 steps the result hung on the rounding of one trajectory.
    tuned = finetune(
        base, tok, data, TrainConfig(method="full", steps=300, batch_size=8, lr=3e-3)
    )
    after = evaluate(tuned, tok, data, config)
    assert after.domains == ("x", "y") and after.metrics == ("exact_match", "loss")
    assert after.average("exact_match").mean > before.average("exact_match").mean
    assert after.average("exact_match").mean >= 0.75
    assert after.average("loss").mean < before.average("loss").mean
    assert after.meta["max_new_tokens"] == 6  # 4 characters + 2
    assert len(after.item_values("x", "exact_match")) == 4
    assert after.predictions["x"][0] == data[0].response


def test_report_round_trip_and_average(tiny):
    model, tok = tiny
    data = _task(6)
    report = evaluate(model, tok, data, EvalConfig(max_new_tokens=3))
    assert set(report.ids) == {"x", "y"} and len(report.ids["x"]) == 3
    as_json = json.dumps(report.to_dict(include_items=True))
    back = EvalReport.from_dict(json.loads(as_json))
    assert back.scores == report.scores
    assert back.predictions == report.predictions
    np.testing.assert_array_equal(back.items["x"]["loss"], report.items["x"]["loss"])
    avg = report.average("loss")
    means = [report[d]["loss"].mean for d in ("x", "y")]
    assert math.isclose(avg.mean, sum(means) / 2)
    assert avg.n == 6
    summary = report.to_dict()
    assert "items" not in summary and "average" in summary
    with pytest.raises(KeyError, match="domain"):
        report.estimate("z", "loss")


def test_loss_only_and_bootstrap(tiny):
    model, tok = tiny
    data = _task(8)
    plain = evaluate(model, tok, data, EvalConfig(metrics=("loss",)))
    boot = evaluate(model, tok, data, EvalConfig(metrics=("loss",), bootstrap=400))
    assert plain.metrics == ("loss",) and not plain.predictions
    for d in ("x", "y"):
        assert boot[d]["loss"].mean == plain[d]["loss"].mean
        assert 0.2 < boot[d]["loss"].var / plain[d]["loss"].var < 2.0
    again = evaluate(model, tok, data, EvalConfig(metrics=("loss",), bootstrap=400))
    assert again.scores == boot.scores
    with pytest.raises(ParameterError, match="empty"):
        evaluate(model, tok, ExampleSet(()), EvalConfig())


def test_greedy_generation_equals_a_whole_sequence_argmax(tiny):
    """The cached decoding (its prompt pass narrowed to the last position) picks the
    tokens that a plain argmax over the whole sequence's logits picks."""
    model, tok = tiny
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    prompts = _prompts(3)
    out = generate_greedy(model, tok, prompts, max_new_tokens=5, batch_size=3)
    for prompt, text in zip(prompts, out):
        ids = tok(format_prompt(prompt))["input_ids"]
        new: list[int] = []
        with torch.no_grad():
            for _ in range(5):
                logits = model(input_ids=torch.tensor([ids + new])).logits
                token = int(logits[0, -1].argmax())
                if token == tok.eos_token_id:
                    break
                new.append(token)
        assert text == tok.decode(new, skip_special_tokens=True)
