"""The real-text suite: multiple-choice targets, right and wrong in-domain rows, and
its tiny profile end to end on the CPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from harp.app.cli import app
from harp.bench.rows import read_results
from harp.bench.suites import (
    export_suite,
    find_shared_data,
    load_suite,
    prepare_suite,
)
from harp.core.errors import HarpError

needs_shared = pytest.mark.skipif(
    find_shared_data() is None, reason="the shared data folder is absent"
)
METHODS = ["random", "similarity", "cluster", "dsir", "rds", "less", "fisher"]
METHODS += ["spice", "harp-c", "harp-e"]


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    if find_shared_data() is None:
        pytest.skip("the shared data folder is absent")
    cfg = load_suite("realtext", size="tiny", out_dir=tmp_path_factory.mktemp("rt"))
    return cfg, prepare_suite(cfg)


def test_the_tiny_profile_replaces_the_suite_keys():
    full = load_suite("realtext")
    tiny = load_suite("realtext", size="tiny")
    assert (full.size, full.model) == (2000, "smollm2-135m-instruct")
    assert (tiny.size, tiny.model, tiny.budgets) == (240, "random-llama", ["10%"])
    # A mapping section is updated key by key: the recipe keeps the suite's lr.
    assert tiny.train["lr"] == full.train["lr"] and tiny.train["epochs"] == 1
    assert load_suite("realtext", size="100").size == 100
    with pytest.raises(HarpError, match="no size profile 'huge'.*tiny"):
        load_suite("realtext", size="huge")


@needs_shared
def test_the_suite_holds_out_its_targets_and_knows_its_wrong_rows(tiny_suite):
    cfg, suite = tiny_suite
    assert suite.target.has_options
    assert set(suite.target.domains) == {"creak", "ecqa", "sensemaking"}
    assert all(len(suite.target.by_domain()[d]) == 20 for d in suite.target.domains)
    pool_prompts = {e.prompt for e in suite.pool}
    assert not pool_prompts & {e.prompt for e in suite.target}
    harmful = suite.harmful_mask
    assert harmful is not None and harmful.sum() > 0
    # In-domain rows answer with an option: the right one, or (harmful) a wrong one.
    in_domain = [
        i
        for i, e in enumerate(suite.pool)
        if e.domain in suite.target.domains and "The answer is" not in e.response
    ]
    assert sorted(np.flatnonzero(harmful)) == sorted(i for i in in_domain if harmful[i])
    right = [i for i in in_domain if not harmful[i]]
    assert abs(len(right) - int(harmful.sum())) <= 3
    # A question is answered right or wrong, never both; the rows do not tell.
    wrong_prompts = {suite.pool[int(i)].prompt for i in np.flatnonzero(harmful)}
    assert not wrong_prompts & {suite.pool[i].prompt for i in right}
    assert not any("harmful" in row for row in suite.pool.rows)
    assert set(suite.references) == {"full data", "without wrong answers"}


@needs_shared
@pytest.mark.slow
def test_the_tiny_suite_runs_every_method_end_to_end(tmp_path):
    """`harp bench --suite realtext --size tiny`: every method, scored by the gold
    option's log-probability, with accuracy, harm share and costs recorded."""
    result = CliRunner().invoke(
        app,
        ["bench", "--suite", "realtext", "--size", "tiny", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    rows = read_results(tmp_path / "results.jsonl")
    methods = [r.method for r in rows if r.kind == "method"]
    assert methods == METHODS
    for row in rows:
        assert row.primary_metric == "option_logprob"
        assert row.domains == ["creak", "ecqa", "sensemaking"]
        avg = row.score_average["mean"]
        assert math.isfinite(avg) and avg <= 0.0
        accuracy = row.metric_average["option_accuracy"]["mean"]
        assert 0.0 <= accuracy <= 1.0
        if row.kind == "method":
            assert row.n_selected <= 24 and row.harmful_fraction is not None
    harp = [r for r in rows if r.method.startswith("harp")]
    assert all(r.train_eval_calls >= 1 for r in harp)
    # The claims these rows can check, one line each: HARP's two, SPICE's three.
    claims = [line for line in result.output.splitlines() if " vs " in line]
    assert [line.split(":")[0] for line in claims] == [
        "HARP ≥ the best baseline, at ≤ 1/7 of its rows"
    ] * 2 + ["SPICE ≥ full data", "SPICE ≥ LESS", "SPICE ≥ random"]
    report = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "report.md").read_text()
    assert "avg acc %" in text and "gold option's log-probability" in text
    assert "## The papers' claims" in text
    config = json.loads((tmp_path / "bench-config.json").read_text())
    assert config["config"]["model"] == "random-llama"


@needs_shared
def test_an_exported_suite_holds_the_same_rows_and_knowledge(tiny_suite, tmp_path):
    """The copy that travels to a GPU machine: same rows, options and harmful
    rows, readable as a suite of the user's own files."""
    cfg, suite = tiny_suite
    path = export_suite(cfg, tmp_path / "export", model="random-llama")
    copy = prepare_suite(load_suite(path, out_dir=tmp_path / "out"))
    key = lambda e: (e.prompt, e.response, e.domain)  # noqa: E731
    assert sorted(map(key, copy.pool)) == sorted(map(key, suite.pool))
    assert [(key(e), e.options, e.gold) for e in copy.target] == [
        (key(e), e.options, e.gold) for e in suite.target
    ]
    wrong = {key(suite.pool[int(i)]) for i in np.flatnonzero(suite.harmful_mask)}
    assert {key(copy.pool[int(i)]) for i in np.flatnonzero(copy.harmful_mask)} == wrong
    assert copy.eval["metrics"] == ["option_logprob", "option_accuracy"]
    assert set(copy.references) == {"full data", "without wrong answers"}
    # Without eval.metrics, a multiple-choice target's own are the option metrics:
    # the same suite, fingerprint included.
    unnamed = load_suite(path, out_dir=tmp_path / "unnamed")
    del unnamed.eval["metrics"]
    same = prepare_suite(unnamed)
    assert same.eval == copy.eval and same.primary_metric == "option_logprob"
    assert same.fingerprint == copy.fingerprint
