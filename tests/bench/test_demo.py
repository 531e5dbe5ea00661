"""The demo end to end at a tiny size, its resume, and `harp evaluate` on its proxy."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from harp.app.cli import app  # noqa: E402
from harp.bench.demo import demo_config, run_demo  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = demo_config("tiny", out_dir=out, methods=["random", "dsir"])
    start = time.perf_counter()
    result = run_demo(cfg)
    return cfg, result, time.perf_counter() - start


def test_demo_is_a_bench_preset_with_a_full_table(demo_run):
    cfg, result, _ = demo_run
    assert cfg.kind == "skills" and cfg.budgets == ["10%"] and cfg.seeds == [0]
    assert result.domains == ["cipher", "count", "shift"]
    assert [r.method for r in result.methods] == ["random", "dsir"]
    assert [r.method for r in result.references] == [
        "full data",
        "helpful only",
        "helpful+harmful",
    ]
    for row in result.methods:
        assert row.n_selected == 30  # 10% of the tiny pool of 300
        assert 0.0 <= row.harmful_fraction <= 1.0
        for est in row.score.values():
            assert 0.0 <= est["mean"] <= 1.0 and est["n"] == 30 and est["stderr"] >= 0
    assert result.references[1].harmful_fraction == 0.0
    saved = json.loads((cfg.out_dir / "results.json").read_text())
    assert saved["rows"] == [r.to_dict() for r in result.rows]
    md = (cfg.out_dir / "results.md").read_text()
    assert "| random | 30 |" in md and "(helpful only)" in md
    for name in ("pool.jsonl", "target.jsonl", "pretrain.jsonl", "truth.json"):
        assert (cfg.out_dir / "data" / name).exists()
    # The bench's own files: the demo's rows can be reported like any bench.
    assert (cfg.out_dir / "results.jsonl").exists()


def test_rerun_resumes_from_the_cache_with_identical_numbers(demo_run):
    cfg, first, _ = demo_run
    cached = sorted((cfg.out_dir / "cache").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in cached}
    weights = cfg.out_dir / "proxy" / "model.safetensors"
    weights_mtime = weights.stat().st_mtime_ns
    second = run_demo(cfg)
    assert second.rows == first.rows
    # Nothing was retrained, re-evaluated or re-selected: no step file was rewritten.
    after = {p: p.stat().st_mtime_ns for p in (cfg.out_dir / "cache").rglob("*.json")}
    assert after == before
    assert weights.stat().st_mtime_ns == weights_mtime


def test_evaluate_command_on_the_demo_proxy(demo_run, tmp_path):
    cfg, _, _ = demo_run
    data = cfg.out_dir / "data"
    report = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(cfg.out_dir / "proxy"),
            "--train",
            str(data / "pool.jsonl"),
            "--target",
            str(data / "target.jsonl"),
            "--steps",
            "3",
            "--out",
            str(report),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(report.read_text())
    assert set(saved["base"]["scores"]) == {"cipher", "count", "shift"}
    assert saved["tuned"]["scores"]["cipher"]["exact_match"]["n"] == 30
    assert saved["train_rows"] == 300 and saved["train_config"]["steps"] == 3


def test_evaluate_command_rejects_a_folder_without_weights(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    target = tmp_path / "t.jsonl"
    target.write_text('{"prompt": "a", "response": "b"}\n')
    result = runner.invoke(
        app, ["evaluate", "--model", str(tmp_path / "m"), "--target", str(target)]
    )
    assert result.exit_code == 2
    assert "no model weights" in result.output


def test_demo_rejects_unknown_size_and_method(tmp_path):
    bad_size = runner.invoke(app, ["demo", "--size", "huge", "--out", str(tmp_path)])
    assert bad_size.exit_code == 2 and "size='huge'" in bad_size.output
    bad_method = runner.invoke(
        app, ["demo", "--size", "tiny", "--methods", "magic", "--out", str(tmp_path)]
    )
    assert bad_method.exit_code == 2 and "unknown method 'magic'" in bad_method.output
    for bad in ("none", "0", "-2"):
        result = runner.invoke(
            app, ["demo", "--size", "tiny", "--workers", bad, "--out", str(tmp_path)]
        )
        assert result.exit_code == 2
        assert "expected a count >= 1 or 'auto'" in result.output
    assert not any(tmp_path.iterdir())  # refused before any work
