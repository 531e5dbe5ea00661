"""Multiple-choice targets: the schema, FLAN's options, option scoring, the oracle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from harp.core.errors import DataError, ParameterError
from harp.core.hashing import sha256_hex, stable_json
from harp.core.records import resolve_options
from harp.data import ExampleSet, load_examples
from harp.data.options import flan_options
from harp.nn import format_prompt
from harp.training import EvalConfig, evaluate
from harp.training.config import METRIC_SPECS
from harp.training.evaluate import option_logprobs


@pytest.fixture(scope="module")
def shared_data():
    from harp.bench.suites import find_shared_data

    root = find_shared_data()
    if root is None:
        pytest.skip("the shared data folder is absent")
    return root


ROWS = [
    {"prompt": "2+2? (A) 4 (B) 5", "response": "(A)", "options": ["(A)", "(B)"]},
    {"prompt": "sky?", "response": "blue", "options": ["red", "blue", "green"]},
    {"prompt": "ok?", "response": "x", "options": ["yes", "no"], "gold": 1},
]


# -- the schema ------------------------------------------------------------------------
def test_resolve_options_takes_an_index_a_text_or_the_answer():
    assert resolve_options(["a", "b"], 1) == (("a", "b"), 1)
    assert resolve_options(["a", "b"], "a") == (("a", "b"), 0)
    assert resolve_options(["a", "b"], None, answer=" b ") == (("a", "b"), 1)


@pytest.mark.parametrize(
    ("options", "gold", "message"),
    [
        (["a"], 0, "at least 2"),
        (["a", "a"], 0, "distinct"),
        ("ab", 0, "list of non-empty strings"),
        (["a", ""], 0, "list of non-empty strings"),
        (["a", "b"], 2, "not an index"),
        (["a", "b"], True, "not a boolean"),
        (["a", "b"], "c", "neither an index nor the text"),
        (["a", "b"], None, "add 'gold'"),
    ],
)
def test_resolve_options_refuses_what_does_not_fit(options, gold, message):
    with pytest.raises(ValueError, match=message):
        resolve_options(options, gold, answer="zzz")


def test_rows_with_options_load_from_a_file(tmp_path):
    path = tmp_path / "target.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    rows = load_examples(path)
    assert [e.options for e in rows] == [tuple(r["options"]) for r in ROWS]
    assert [e.gold for e in rows] == [0, 1, 1]
    assert rows.has_options
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**ROWS[0], "gold": 7}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1.*not an index"):
        load_examples(bad)


def test_flan_cot_files_carry_their_options(shared_data):
    aqua = load_examples(shared_data / "flan_v2_cot" / "aqua_train.tsv")
    first = aqua[0]
    assert first.options == ("(A)", "(B)", "(C)", "(D)", "(E)") and first.gold == 2
    assert first.response.endswith("The answer is (C).")
    assert flan_options("How many?", "72") is None
    gsm = load_examples(shared_data / "gsm8k" / "test.jsonl")
    assert not any(e.options for e in gsm)


def test_content_hash_of_rows_without_options_is_unchanged():
    """Caches keyed on target hashes stay valid for every row without options."""
    rows = ExampleSet.from_records([{"prompt": "p", "response": "r", "domain": "d"}])
    e = rows[0]
    old = sha256_hex(stable_json([(e.id, e.prompt, e.response, e.domain)]), 32)
    assert rows.content_hash() == old
    with_options = ExampleSet.from_records(
        [{"prompt": "p", "response": "r", "domain": "d", "options": ["r", "s"]}]
    )
    assert with_options.content_hash() != old


# -- scoring ---------------------------------------------------------------------------
def _by_hand(model, tok, prompt, option):
    """Σ log p(option tokens | BOS + format_prompt(prompt)), no EOS."""
    prefix = tok(format_prompt(prompt))["input_ids"]
    full = tok(format_prompt(prompt) + option)["input_ids"]
    assert full[: len(prefix)] == prefix
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)
    return sum(float(logp[0, t - 1, full[t]]) for t in range(len(prefix), len(full)))


def test_option_scores_match_a_hand_computation(tiny):
    model, tok = tiny
    model.eval()
    rows = ExampleSet.from_records(ROWS + [{"prompt": "free", "response": "text"}])
    got = option_logprobs(model, tok, rows, batch_size=2)
    assert got[3].size == 0  # no options
    for row, values in zip(ROWS, got):
        sums = np.array(
            [_by_hand(model, tok, row["prompt"], o) for o in row["options"]]
        )
        want = sums - np.log(np.exp(sums).sum())
        np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-5)
        assert math.isclose(float(np.exp(values).sum()), 1.0, rel_tol=1e-9)


def test_evaluate_reports_option_metrics_per_domain(tiny):
    model, tok = tiny
    rows = ExampleSet.from_records([{**r, "domain": "mc"} for r in ROWS])
    report = evaluate(
        model, tok, rows, EvalConfig(metrics=("option_logprob", "option_accuracy"))
    )
    logprobs = option_logprobs(model, tok, rows)
    gold = np.array([lp[e.gold] for lp, e in zip(logprobs, rows)])
    right = np.array([float(np.argmax(lp) == e.gold) for lp, e in zip(logprobs, rows)])
    np.testing.assert_allclose(report.item_values("mc", "option_logprob"), gold)
    np.testing.assert_array_equal(report.item_values("mc", "option_accuracy"), right)
    assert report.estimate("mc", "option_accuracy").mean == pytest.approx(right.mean())
    assert METRIC_SPECS["option_logprob"].higher_is_better
    assert not METRIC_SPECS["option_logprob"].bounded


def test_a_multiple_choice_target_is_scored_by_its_options_unless_told(tiny):
    """Without named metrics a target whose every row has options gets the option
    metrics (the same values as when named); any other target keeps exact match
    and loss."""
    from harp.training.config import DEFAULT_METRICS, OPTION_METRICS

    model, tok = tiny
    choice = ExampleSet.from_records([{**r, "domain": "mc"} for r in ROWS])
    plain = evaluate(model, tok, choice)
    named = evaluate(model, tok, choice, EvalConfig(metrics=OPTION_METRICS))
    assert plain.metrics == OPTION_METRICS
    for metric in OPTION_METRICS:
        np.testing.assert_array_equal(
            plain.item_values("mc", metric), named.item_values("mc", metric)
        )
    mixed = ExampleSet.from_records(
        [{**ROWS[0], "domain": "mc"}, {"prompt": "p", "response": "r", "domain": "mc"}]
    )
    assert evaluate(model, tok, mixed, EvalConfig(max_new_tokens=2)).metrics == (
        DEFAULT_METRICS
    )


def test_option_metrics_refuse_a_domain_without_options(tiny):
    model, tok = tiny
    rows = ExampleSet.from_records(
        [
            {**ROWS[0], "domain": "mc"},
            {"prompt": "p", "response": "r", "domain": "free"},
        ]
    )
    with pytest.raises(ParameterError, match="'free' carry no options"):
        evaluate(model, tok, rows, EvalConfig(metrics=("option_accuracy",)))


# -- HARP's oracle on a multiple-choice target ---------------------------------------
@pytest.mark.parametrize("metric", ["option_logprob", "option_accuracy"])
def test_the_oracle_measures_option_gains(tiny_dir, tmp_path, metric):
    """The effect is the tuned model's option score minus the base's (higher is
    better), and only accuracy is clipped by the envelopes."""
    from harp.core.context import RunContext
    from harp.selectors.harp.oracle import LeafOracle
    from harp.training import TrainConfig, TrainEvalUtility

    target = ExampleSet.from_records(
        [{**r, "domain": "mc"} for r in ROWS]
        + [{**r, "domain": "mc2", "id": f"b{i}"} for i, r in enumerate(ROWS)]
    )
    utility = TrainEvalUtility(
        tiny_dir,
        target,
        TrainConfig(steps=3, batch_size=2, seed=0),
        EvalConfig(metrics=(metric,)),
        context=RunContext(cache_dir=tmp_path, device="cpu"),
    )
    oracle = LeafOracle(utility, metric=metric, bootstrap=20)
    assert oracle.bounded is (metric == "option_accuracy")
    leaf = ExampleSet.from_records(
        [{"prompt": r["prompt"], "response": r["options"][0]} for r in ROWS]
    )
    effect = oracle(leaf).effect
    base = utility.base_report
    tuned = utility(leaf)
    want = [
        tuned.estimate(d, metric).mean - base.estimate(d, metric).mean
        for d in ("mc", "mc2")
    ]
    np.testing.assert_allclose(effect, want, atol=1e-12)
    np.testing.assert_allclose(
        oracle.base_scores, [base.estimate(d, metric).mean for d in ("mc", "mc2")]
    )


def test_the_utility_names_the_targets_own_metrics_in_its_key(tiny_dir, tmp_path):
    """Left unnamed, the option metrics are fixed at construction: the utility's
    config names them, and a call is the same cached result as with them named."""
    from harp.core.context import RunContext
    from harp.training import TrainConfig, TrainEvalUtility
    from harp.training.config import OPTION_METRICS

    target = ExampleSet.from_records([{**r, "domain": "mc"} for r in ROWS])
    context = RunContext(cache_dir=tmp_path, device="cpu")
    recipe = TrainConfig(steps=2, batch_size=2, seed=0)
    leaf = ExampleSet.from_records([{"prompt": "a", "response": "b"}])
    named = TrainEvalUtility(
        tiny_dir, target, recipe, EvalConfig(metrics=OPTION_METRICS), context=context
    )
    first = named(leaf)
    unnamed = TrainEvalUtility(tiny_dir, target, recipe, context=context)
    assert unnamed.eval_config.metrics == OPTION_METRICS
    again = unnamed(leaf)
    assert (unnamed.calls, unnamed.hits) == (0, 1)
    assert again.average("option_logprob").mean == first.average("option_logprob").mean


def test_the_utility_refuses_option_metrics_without_options(tiny_dir, tmp_path):
    from harp.core.context import RunContext
    from harp.training import TrainConfig, TrainEvalUtility

    free = ExampleSet.from_records([{"prompt": "p", "response": "r"}])
    with pytest.raises(ParameterError, match="carry no options"):
        TrainEvalUtility(
            tiny_dir,
            free,
            TrainConfig(steps=1),
            EvalConfig(metrics=("option_logprob",)),
            context=RunContext(cache_dir=tmp_path, device="cpu"),
        )


def test_cli_evaluate_scores_option_metrics(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from harp.app.cli import app

    target = tmp_path / "mc.jsonl"
    target.write_text("".join(json.dumps({**r, "domain": "mc"}) + "\n" for r in ROWS))
    out = tmp_path / "report.json"
    args = ["evaluate", "--model", str(tiny_dir), "--target", str(target)]
    args += ["--metrics", "option_logprob,option_accuracy", "--out", str(out)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert json.dumps(report).count("option_logprob") >= 1
    bad = CliRunner().invoke(app, [*args[:4], "--metrics", "bleu"])
    assert bad.exit_code == 2 and "bleu" in bad.output
    # Without --metrics a multiple-choice target is scored by its options.
    plain = tmp_path / "plain.json"
    result = CliRunner().invoke(app, [*args[:5], "--out", str(plain), *args[-2:]])
    assert result.exit_code == 0, result.output
    assert set(json.loads(plain.read_text())["base"]["average"]) == {
        "option_logprob",
        "option_accuracy",
    }
