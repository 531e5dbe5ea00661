"""`harp bench` end to end at a tiny size: rows, resume, torn lines, suites, errors."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from harp.app.cli import app  # noqa: E402
from harp.bench.harness import run_bench  # noqa: E402
from harp.bench.rows import read_results  # noqa: E402
from harp.bench.suites import BenchConfig, find_shared_data, load_suite  # noqa: E402
from harp.core.errors import HarpError  # noqa: E402
from harp.selectors import Selection  # noqa: E402

runner = CliRunner()

#: Like the demo's "tiny" preset.
TINY = dict(
    size=300,
    target_rows=30,
    skills={"n_pretrain": 600},
    pretrain={"steps": 40, "batch_size": 16},
    train={"steps": 8, "batch_size": 8},
)
TINY_YAML = """\
kind: skills
skills: {n_pretrain: 600}
size: 300
target_rows: 30
pretrain: {steps: 40, batch_size: 16}
train: {steps: 8, batch_size: 8}
methods: [random, dsir]
seeds: [0, 1]
"""
ROW_KEYS = {
    "key",
    "suite",
    "suite_fingerprint",
    "kind",
    "method",
    "budget",
    "seed",
    "params",
    "n_selected",
    "n_pool",
    "data_fraction",
    "domains",
    "score",
    "score_average",
    "score_name",
    "metrics",
    "metric_average",
    "select_seconds",
    "train_eval_calls",
    "gradient_passes",
    "peak_rss_mb",
    "train_eval_seconds",
    "harmful_fraction",
    "selection_file",
    "diagnostics_file",
}


def _tiny(out: Path, **overrides) -> BenchConfig:
    values = {**TINY, "methods": ["random", "dsir"], "seeds": [0, 1], **overrides}
    return load_suite("skills", out_dir=out, **values)


def _snapshot(out: Path) -> dict[str, int]:
    files = [*out.glob("cache/train-eval/*.json"), *out.glob("selections/*.json")]
    files += [out / "results.jsonl", out / "proxy" / "model.safetensors"]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = _tiny(out)
    rows = run_bench(cfg)
    return cfg, rows


def test_rows_cover_every_method_budget_seed_and_the_references(tiny_bench):
    cfg, rows = tiny_bench
    saved = read_results(cfg.out_dir / "results.jsonl")
    assert saved == rows
    labels = [(r.method, r.budget, r.seed) for r in rows]
    assert labels == [
        ("base", None, None),
        ("full data", "100%", 0),
        ("full data", "100%", 1),
        ("helpful only", "100%", 0),
        ("helpful only", "100%", 1),
        ("helpful+harmful", "100%", 0),
        ("helpful+harmful", "100%", 1),
        ("random", "10%", 0),
        ("random", "10%", 1),
        ("dsir", "10%", 0),
        ("dsir", "10%", 1),
    ]
    assert len({r.key for r in rows}) == len(rows)
    for row in rows:
        assert ROW_KEYS <= set(row.to_dict()), ROW_KEYS - set(row.to_dict())
        assert row.domains == ["cipher", "count", "shift"]
        assert row.score_name == "exact match"
        for est in row.score.values():
            assert 0.0 <= est["mean"] <= 1.0 and est["n"] == 30
        assert row.metric_average["loss"]["mean"] > 0
        assert row.n_pool == 300
    methods = [r for r in rows if r.kind == "method"]
    for row in methods:
        assert row.n_selected == 30 and row.data_fraction == pytest.approx(0.1)
        assert row.select_seconds >= 0 and row.peak_rss_mb > 10
        assert row.train_eval_calls == 0 and row.train_eval_seconds > 0
    full = [r for r in rows if r.method == "full data"]
    assert all(r.data_fraction == 1.0 and r.n_selected == 300 for r in full)
    helpful = [r for r in rows if r.method == "helpful only"]
    assert all(r.harmful_fraction == 0.0 for r in helpful)
    both = [r for r in rows if r.method == "helpful+harmful"]
    assert all(0.0 < r.harmful_fraction < 1.0 for r in both)
    assert rows[0].n_selected == 0 and rows[0].data_fraction == 0.0
    assert rows[0].harmful_fraction is None


def test_harmful_share_matches_the_saved_selection(tiny_bench):
    from harp.data.synthetic import make_skills_suite

    cfg, rows = tiny_bench
    suite = make_skills_suite(
        seed=0, n_pool=300, n_target_per_domain=30, n_pretrain=600
    )
    truth = json.loads((cfg.out_dir / "data" / "truth.json").read_text())
    assert [t["kind"] for t in truth["rows"]] == list(suite.kinds)
    seen = set()
    for row in rows:
        if row.kind != "method":
            continue
        selection = Selection.load(cfg.out_dir / row.selection_file)
        assert selection.method == row.method and selection.seed == row.seed
        assert len(selection) == row.n_selected
        expected = float(suite.harmful_mask[selection.indices].mean())
        assert row.harmful_fraction == pytest.approx(expected)
        seen.add(tuple(selection.indices))
    assert len(seen) >= 3  # random draws differ between seeds


def test_rerun_does_no_new_work(tiny_bench):
    cfg, rows = tiny_bench
    before = _snapshot(cfg.out_dir)
    text = (cfg.out_dir / "results.jsonl").read_bytes()
    again = run_bench(cfg)
    assert again == rows
    assert (cfg.out_dir / "results.jsonl").read_bytes() == text
    assert _snapshot(cfg.out_dir) == before


def test_finetunes_side_by_side_on_workers_give_the_same_rows(
    tiny_bench, tmp_path, caplog
):
    """The bench's finetunes mapped over two worker processes: the same table."""
    from harp.core.context import RunContext
    from harp.execution import LocalExecutor

    cfg, rows = tiny_bench
    out = tmp_path / "pooled"
    with (
        LocalExecutor(workers=2) as executor,
        caplog.at_level(logging.INFO, logger="harp.bench.harness"),
    ):
        pooled = run_bench(_tiny(out), RunContext(executor=executor))
    # Both seeds' finetunes in one map.
    assert caplog.text.count("finetuning and scoring 10 selections on 2 local") == 1

    def table(found):
        return [
            (r.key, r.method, r.seed, r.n_selected, r.score_average, r.metrics)
            for r in found
        ]

    assert table(pooled) == table(rows)


def test_a_torn_last_line_is_dropped_and_the_row_redone(tiny_bench, tmp_path, caplog):
    cfg, rows = tiny_bench
    out = tmp_path / "copy"
    shutil.copytree(cfg.out_dir, out)
    path = out / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    with caplog.at_level(logging.WARNING, logger="harp.bench.rows"):
        assert len(read_results(path)) == len(rows) - 1
    assert "torn" in caplog.text
    again = run_bench(_tiny(out))
    assert [r.key for r in again] == [r.key for r in rows]
    saved = read_results(path)
    assert len(saved) == len(rows)
    assert path.read_text().count("\n") == len(rows)
    # The selection and the finetune were cached: the redone row has the same numbers.
    assert saved[-1].score == rows[-1].score


def test_selector_diagnostics_are_saved(tiny_bench, tmp_path, monkeypatch):
    from harp.selectors import DSIRSelector, HARPDiagnostics

    harp_like = {
        "kind": "harp",
        "domains": ["cipher"],
        "leaves": [
            {
                "leaf": 0,
                "parent": 0,
                "node": 0,
                "size": 3,
                "measured": True,
                "mean": np.array([0.1]),
                "sd": [float("nan")],
                "chosen": np.bool_(True),
            }
        ],
        "greedy": {"order": np.arange(1), "gains": [np.float32(0.5)], "prefix": 1},
    }
    monkeypatch.setattr(
        DSIRSelector,
        "diagnostics",
        lambda self: HARPDiagnostics.from_dict(harp_like),
        raising=False,
    )
    cfg, _ = tiny_bench
    out = tmp_path / "copy"
    shutil.copytree(cfg.out_dir, out)
    rows = run_bench(_tiny(out, methods=["dsir"], budgets=["5%"], seeds=[0]))
    row = rows[-1]
    assert row.method == "dsir" and row.budget == "5%" and row.n_selected == 15
    assert row.diagnostics_file == f"diagnostics/{row.key}.json"
    saved = json.loads((out / row.diagnostics_file).read_text())
    assert saved["leaves"][0]["mean"] == [0.1] and saved["leaves"][0]["sd"] == [None]
    assert saved["leaves"][0]["chosen"] is True and saved["greedy"]["order"] == [0]
    # Nothing else was redone: the references and 10% rows were found in the file.
    assert len(read_results(out / "results.jsonl")) == 11 + 1


def test_cli_bench_reuses_a_finished_folder(tiny_bench, tmp_path):
    cfg, rows = tiny_bench
    out = tmp_path / "copy"
    shutil.copytree(cfg.out_dir, out)
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_YAML)
    result = runner.invoke(
        app, ["bench", "--suite", str(suite), "--out", str(out), "--budgets", "10%"]
    )
    assert result.exit_code == 0, result.output
    assert "11 rows" in result.output
    assert len(read_results(out / "results.jsonl")) == len(rows)
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert (out / "report.html").exists()


# -- the text suite --------------------------------------------------------------------
needs_shared = pytest.mark.skipif(
    find_shared_data() is None, reason="the shared data folder is absent"
)


@needs_shared
def test_text_suite_runs_end_to_end_and_records_a_finite_loss(tmp_path):
    cfg = load_suite(
        "text",
        out_dir=tmp_path,
        size=60,
        target_rows=10,
        methods=["random"],
        pretrain={"steps": 3, "batch_size": 8},
        train={"steps": 3, "batch_size": 4, "max_length": 128},
        eval={"metrics": ["loss"], "batch_size": 16, "max_length": 128},
    )
    rows = run_bench(cfg)
    assert [r.method for r in rows] == ["base", "full data", "random"]
    for row in rows:
        assert row.domains == ["gsm8k", "strategyqa"]
        assert row.score_name == "loss reduction vs base (nats/token)"
        loss = row.metric_average["loss"]["mean"]
        assert math.isfinite(loss) and loss > 0
        assert row.metric_average.get("exact_match") is None
        assert row.harmful_fraction is None
        assert math.isfinite(row.score_average["mean"])
    assert rows[0].score_average["mean"] == 0.0
    assert rows[1].n_pool == 60 and rows[2].n_selected == 6
    # Target rows are held out of the pool.
    selection = Selection.load(tmp_path / rows[2].selection_file)
    assert selection.n_pool == 60


def test_text_suite_paths_resolve():
    cfg = load_suite("text")
    assert cfg.kind == "files" and cfg.data_root == "auto"
    assert cfg.eval["metrics"] == ["loss"]
    if find_shared_data() is None:
        with pytest.raises(HarpError, match="text.yaml: data_root: auto"):
            from harp.bench.suites import _data_root

            _data_root(cfg)


# -- errors ----------------------------------------------------------------------------
def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_unknown_keys_are_refused_with_the_file_and_key(tmp_path):
    data = tmp_path / "pool.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    cases = {
        "colour: red\npool: [pool.jsonl]\ntarget: [pool.jsonl]\n": (
            "unknown key 'colour'"
        ),
        "pool: [{path: pool.jsonl, sampel: 3}]\ntarget: [pool.jsonl]\n": (
            "unknown key 'sampel'"
        ),
        "pool: [pool.jsonl]\ntarget: [pool.jsonl]\ntrain: {stepz: 3}\n": (
            "unknown key 'train.stepz'"
        ),
        "kind: skills\nskills: {n_poool: 3}\n": "unknown key 'n_poool'",
    }
    for text, message in cases.items():
        path = _yaml(tmp_path, text)
        with pytest.raises(HarpError) as err:
            run_bench(load_suite(path, out_dir=tmp_path / "out"))
        assert message in str(err.value) and str(path) in str(err.value)
        assert "\n" not in str(err.value)


def test_missing_data_is_one_clear_error(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    for text, message in (
        ("pool: [missing.jsonl]\ntarget: [a.jsonl]\n", "'missing.jsonl' does not"),
        ("pool: [a.jsonl]\ntarget: [also/*.jsonl]\n", "'also/*.jsonl' matches no"),
    ):
        path = _yaml(tmp_path, text)
        with pytest.raises(HarpError) as err:
            run_bench(load_suite(path, out_dir=tmp_path / "out"))
        assert str(path) in str(err.value) and message in str(err.value)
    root = _yaml(tmp_path, "data_root: nowhere\npool: [a.jsonl]\ntarget: [a.jsonl]\n")
    with pytest.raises(HarpError, match="data_root 'nowhere' is not a folder"):
        run_bench(load_suite(root, out_dir=tmp_path / "out"))
    model = tmp_path / "m.yaml"
    (tmp_path / "b.jsonl").write_text('{"prompt": "c", "response": "d"}\n')
    model.write_text("model: no-model\npool: [b.jsonl]\ntarget: [a.jsonl]\n")
    with pytest.raises(HarpError, match="m.yaml: model: .*no-model"):
        run_bench(load_suite(model, out_dir=tmp_path / "out"))


def test_cli_errors_are_one_line(tmp_path):
    bad = _yaml(tmp_path, "pool: [nope.jsonl]\ntarget: [nope.jsonl]\nfoo: 1\n")
    result = runner.invoke(app, ["bench", "--suite", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown key 'foo'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    for args, message in (
        (["--suite", "nosuch"], "neither a built-in suite"),
        (["--methods", "magic"], "unknown method 'magic'"),
        (["-p", "dim=3"], "METHOD.KEY=VALUE"),
        (["-p", "random.dim=3"], "has no parameter 'dim'"),
        (["--budgets", "0%"], "budget='0%'"),
        (["--seeds", "a"], "--seeds"),
    ):
        result = runner.invoke(app, ["bench", "--out", str(tmp_path), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


def test_bench_help():
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "results.jsonl" in result.output


def test_an_empty_selection_scores_as_the_base_model(tiny_bench, tmp_path, monkeypatch):
    """HARP selects nothing when no leaf is expected to help: the row is the base's."""
    from harp.selectors import DSIRSelector

    monkeypatch.setattr(
        DSIRSelector,
        "_select",
        lambda self, pool, target, budget, rng: (np.zeros(0, np.int64), None, None, {}),
    )
    cfg, rows = tiny_bench
    out = tmp_path / "copy"
    shutil.copytree(cfg.out_dir, out)
    row = run_bench(_tiny(out, methods=["dsir"], budgets=["7%"], seeds=[0]))[-1]
    base = next(r for r in rows if r.kind == "base")
    assert row.n_selected == 0 and row.data_fraction == 0.0
    assert row.score == base.score


def test_common_param_reaches_only_methods_that_have_it():
    cfg = load_suite("skills", methods=["random", "harp-c", "harp-e"])
    cfg = cfg.with_overrides(params={"harp-e": {"evals": 5}})
    out = cfg.with_common_param("evals", 0.3)
    assert out.params == {"harp-c": {"evals": 0.3}, "harp-e": {"evals": 5}}


def test_row_key_follows_every_setting_defaults_included(monkeypatch):
    """A changed default makes a new row; spelling out a default does not."""
    from harp.bench.harness import method_settings, row_key
    from harp.selectors import get_selector_class

    key = row_key("suite", "harp-c", "10%", 0, {})
    assert key == row_key("suite", "harp-c", "10%", 0, {"target_fit_weight": 0.5})
    assert key != row_key("suite", "harp-c", "10%", 0, {"target_fit_weight": 0.0})
    # What the harness sets itself, and how the work runs, are not settings.
    settings = method_settings("harp-c", {})
    assert not {"model", "context", "seed", "budget"} & set(settings)
    # A component's settings are flattened, defaults included.
    assert settings["features"] == "TextFeatures"
    assert settings["features__encoder"] == "auto"
    assert key != row_key("suite", "harp-c", "10%", 0, {"encoder": "tfidf"})
    # The same call after a default changed in the code: another key.
    cls = get_selector_class("harp-c")
    monkeypatch.setitem(cls.__init__.__kwdefaults__, "target_fit_weight", 0.25)
    assert row_key("suite", "harp-c", "10%", 0, {}) != key
    # Reference rows keep their plain params.
    assert method_settings("full data", {}) == {}


def test_a_sample_larger_than_its_file_says_so(tmp_path, caplog):
    from harp.bench.suites import _draw_files

    def write(name, n, offset=0):
        rows = [
            {"prompt": f"q{i}", "response": f"a{i}", "domain": "d"}
            for i in range(offset, offset + n)
        ]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("pool.jsonl", 12)
    write("target.jsonl", 4, offset=100)
    suite = _yaml(
        tmp_path,
        "kind: files\ndata_root: .\n"
        "pool: [{path: pool.jsonl, sample: 50}]\n"
        "target: [{path: target.jsonl, sample: 3}]\n",
    )
    with caplog.at_level(logging.WARNING, logger="harp.bench.suites"):
        pool, target, *_ = _draw_files(load_suite(suite, out_dir=tmp_path / "out"))
    assert len(pool) == 12 and len(target) == 3
    assert "pool[0]: sample: 50 asked for, but the entry has 12 usable rows" in (
        caplog.text
    )
    assert "target[0]" not in caplog.text  # 3 of 4 rows: as asked
