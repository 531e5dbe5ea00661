"""`harp report` on a hand-written bench folder: table numbers, HTML, plots, CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from harp.app.cli import app  # noqa: E402
from harp.bench.report import aggregate, write_report  # noqa: E402
from harp.bench.rows import BenchRow  # noqa: E402

runner = CliRunner()
DOMAINS = ["cipher", "count"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(kind, method, budget, seed, scores, fraction, **extra):
    score = {d: {"mean": s, "stderr": 0.05, "n": 30} for d, s in zip(DOMAINS, scores)}
    return {
        "key": f"{method}-{budget}-{seed}",
        "suite": "skills",
        "suite_fingerprint": "fp1",
        "kind": kind,
        "method": method,
        "budget": budget,
        "seed": seed,
        "params": {},
        "n_pool": 200,
        "n_selected": int(round(200 * fraction)),
        "data_fraction": fraction,
        "domains": DOMAINS,
        "score_name": "exact match",
        "primary_metric": "exact_match",
        "score": score,
        "score_average": {"mean": float(np.mean(scores)), "stderr": 0.04, "n": 60},
        "metric_average": {"exact_match": None, "loss": {"mean": 1.0, "stderr": 0.1}},
        "harmful_fraction": extra.pop("harmful", 0.1),
        "select_seconds": extra.pop("seconds", 0.5),
        "train_eval_calls": extra.pop("calls", 0),
        "gradient_passes": 0,
        "peak_rss_mb": 500.0,
        "diagnostics_file": extra.pop("diagnostics", None),
        **extra,
    }


HARP_DIAG = {
    "kind": "harp",
    "domains": DOMAINS,
    "leaves": [
        {
            "leaf": i,
            "parent": i // 3,
            "node": 0,
            "size": 10 + i,
            "measured": i % 3 == 0,
            "mean": [0.05 * (i - 3), -0.02 * i],
            "sd": [0.02 if i % 3 == 0 else 0.06, 0.03],
            "chosen": i in (0, 4),
        }
        for i in range(9)
    ],
    "greedy": {"order": [0, 4, 2], "gains": [0.2, 0.1, -0.01], "prefix": 2},
}
LOGDET_DIAG = {
    "kind": "logdet",
    "gains": [5.0, 3.0, 2.0, 1.2, 0.8, 0.5, 0.3],
    "epsilons": [0.0] * 7,
    "conflicts": [0.0, 0.1, 0.0, 0.2, 0.0, 0.0, 0.1],
    "objective": list(np.cumsum([5.0, 3.0, 2.0, 1.2, 0.8, 0.5, 0.3])),
}


@pytest.fixture
def bench_dir(tmp_path):
    rows = [
        _row("base", "base", None, None, [0.0, 0.2], 0.0, harmful=0.0, seconds=0.0),
        _row("reference", "full data", "100%", 0, [0.3, 0.5], 1.0, harmful=0.2),
        _row("reference", "full data", "100%", 1, [0.4, 0.5], 1.0, harmful=0.2),
        _row("method", "random", "10%", 0, [0.1, 0.3], 0.1),
        _row("method", "random", "10%", 1, [0.3, 0.3], 0.1, harmful=0.3),
        _row("method", "random", "5%", 0, [0.05, 0.25], 0.05),
        _row(
            "method",
            "harp-e",
            "10%",
            0,
            [0.5, 0.4],
            0.02,
            calls=12,
            seconds=30.0,
            diagnostics="diagnostics/harp.json",
        ),
        _row(
            "method",
            "spice",
            "10%",
            0,
            [0.35, 0.3],
            0.1,
            seconds=3.0,
            diagnostics="diagnostics/spice.json",
        ),
    ]
    (tmp_path / "diagnostics").mkdir()
    (tmp_path / "diagnostics" / "harp.json").write_text(json.dumps(HARP_DIAG))
    (tmp_path / "diagnostics" / "spice.json").write_text(json.dumps(LOGDET_DIAG))
    text = "".join(json.dumps(r) + "\n" for r in rows)
    # A crash left a torn last line: the report must ignore it.
    (tmp_path / "results.jsonl").write_text(text + text.splitlines()[3][:40])
    return tmp_path, rows


def _table_line(md: str, label: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no table line {label!r} in:\n{md}")


def test_report_table_numbers_match_the_results(bench_dir):
    directory, rows = bench_dir
    result = write_report(directory)
    md = (directory / "report.md").read_text()
    header = [c.strip() for c in md.split("\n| method")[1].split("\n")[0].split("|")]
    header = ["method", *[h for h in header if h]]
    line = _table_line(md, "random @ 10%")
    cell = dict(zip(header, line))
    # Two seeds: mean of the seeds' averages ± their standard error, in %.
    avgs = [r["score_average"]["mean"] for r in rows[3:5]]
    se = np.std(avgs, ddof=1) / math.sqrt(2)
    assert cell["avg"] == f"{100 * np.mean(avgs):.1f} ± {100 * se:.1f}"
    cipher = [r["score"]["cipher"]["mean"] for r in rows[3:5]]
    assert cell["cipher"].startswith(f"{100 * np.mean(cipher):.1f} ± ")
    assert cell["data %"] == "10.0" and cell["rows"] == "20"
    assert cell["harm %"] == f"{100 * np.mean([0.1, 0.3]):.1f}"
    assert cell["seeds"] == "2"
    # One seed: the item-level stderr of that row.
    single = dict(zip(header, _table_line(md, "random @ 5%")))
    assert single["avg"] == "15.0 ± 4.0" and single["data %"] == "5.0"
    harp = dict(zip(header, _table_line(md, "harp-e @ 10%")))
    assert harp["calls"] == "12" and harp["data %"] == "2.0"
    assert harp["sel s"] == "30.00"
    # References on top, in brackets; base first.
    labels = [e["label"] for e in result["entries"]]
    assert labels[:2] == ["base", "full data"]
    assert md.index("| (base) |") < md.index("| (full data) |") < md.index("| random")
    assert len(result["rows"]) == len(rows)  # the torn line was ignored


def test_report_html_is_self_contained_and_plots_are_pngs(bench_dir):
    directory, _ = bench_dir
    result = write_report(directory)
    names = sorted(p.name for p in result["plots"])
    assert names == [
        "cost_vs_score.png",
        "gain_decay.png",
        "harp_posterior_harp-e_10__s0.png",
        "score_vs_fraction.png",
    ]
    import matplotlib.image as mpimg

    for png in result["plots"]:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert mpimg.imread(png).shape[0] > 100
        assert png.parent == directory / "plots"
    page = (directory / "report.html").read_text()
    assert not re.search(r"""src=["']?(https?:|//|file:)""", page)
    assert "<link" not in page and "<script" not in page
    assert page.count("src='data:image/png;base64,") == len(result["plots"])
    for png in result["plots"]:
        assert f"plots/{png.name}" in (directory / "report.md").read_text()


def test_report_of_a_loss_suite_says_what_the_score_is(tmp_path):
    rows = []
    for kind, method, budget, seed, s in (
        ("base", "base", None, None, [0.0, 0.0]),
        ("method", "dsir", "10%", 0, [0.12, -0.02]),
    ):
        row = _row(kind, method, budget, seed, s, 0.1 if seed is not None else 0.0)
        row.update(
            primary_metric="loss",
            score_name="loss reduction vs base (nats/token)",
            harmful_fraction=None,
        )
        rows.append(row)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "loss reduction vs base (nats/token)" in md and "higher is better" in md
    assert "harm %" not in md
    assert "| dsir @ 10% |" in md and "0.050 ± 0.040" in md


def test_aggregate_groups_seeds():
    rows = [
        BenchRow.from_dict(_row("method", "random", "10%", s, [0.1 * s, 0.2], 0.1))
        for s in range(3)
    ]
    (entry,) = aggregate(rows)
    assert entry["seeds"] == [0, 1, 2]
    assert entry["score"]["cipher"][0] == pytest.approx(0.1)
    assert entry["score"]["cipher"][1] == pytest.approx(0.1 / math.sqrt(3))


def test_report_cli(bench_dir, tmp_path):
    directory, _ = bench_dir
    ok = runner.invoke(app, ["report", str(directory)])
    assert ok.exit_code == 0, ok.output
    assert "report.md" in ok.output and (directory / "report.html").exists()
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "no such folder" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    no_results = runner.invoke(app, ["report", str(empty)])
    assert no_results.exit_code == 2 and "results.jsonl" in no_results.output


def test_report_help():
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0 and "self-contained" in result.output


def test_report_checks_the_papers_claims_it_can(bench_dir):
    directory, _ = bench_dir
    write_report(directory)
    md = (directory / "report.md").read_text()
    assert "## The papers' claims" in md
    # At 10%, SPICE (mean 0.325) is the best method besides HARP; seed 0 is shared.
    harp = _table_line(md, "HARP ≥ the best baseline, at ≤ 1/7 of its rows")
    assert harp[1:5] == [
        "harp-e @ 10%",
        "spice @ 10%",
        "+12.5 ± 5.7 (1 seed, error over items)",
        "4 / 20",
    ]
    assert harp[5].startswith("contradicted") and "not met" in harp[5]
    assert _table_line(md, "SPICE ≥ full data")[5].startswith("inconclusive")
    assert _table_line(md, "SPICE ≥ random")[5].startswith("supported")
    page = (directory / "report.html").read_text()
    assert "<h2>The papers' claims</h2>" in page and "SPICE ≥ random" in page
