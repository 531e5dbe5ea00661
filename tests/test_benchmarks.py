"""The on-demand benchmarks still run on the library as it is (their quick modes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_benchmark(
    name: str, args: list[str], cwd: Path, *, fails: bool = False
) -> subprocess.CompletedProcess:
    """``benchmarks/<name>`` run from the source tree (skipped when not beside);
    it must succeed, or fail when ``fails``."""
    script = ROOT / "benchmarks" / name
    if not script.exists():
        pytest.skip("the benchmarks are not beside the tests")
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert (result.returncode != 0) == fails, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_gpu_suite_quick_runs_on_the_cpu(tmp_path):
    """``benchmarks/gpu_suite.py --quick``: every part at toy size, in one run."""
    out = tmp_path / "gs.json"
    result = _run_benchmark(
        "gpu_suite.py", ["--quick", "--device", "cpu", "--out", str(out)], tmp_path
    )
    numbers = json.loads(out.read_text())
    assert numbers["device"] == "cpu" and numbers["grads_ex_s"] > 0
    assert numbers["logdet"]["picks"] > 0
    assert numbers["leaves"]["leaf_seconds"] > 0
    # The round with its adapters trained together scores as the calls in turn.
    assert numbers["leaves"]["adapters_at_once"] > 1
    assert numbers["leaves"]["stacked_max_rel_diff"] < 1e-3
    assert numbers["failed"] == {}
    # The torch engine on the same data as numpy's: the same picks.
    assert numbers["compare"]["same_position_picks"] > 0.99
    assert numbers["compare"]["objective_rel_diff"] < 1e-6
    assert "x bound" in result.stdout


def test_gpu_suite_refuses_a_part_it_does_not_have(tmp_path):
    """A misspelt ``--skip`` would measure the part anyway, on lent device time."""
    result = _run_benchmark(
        "gpu_suite.py", ["--skip", "dense,grad"], tmp_path, fails=True
    )
    assert "--skip: no part grad; the parts are bound, grads, loop" in result.stderr


@pytest.mark.slow
def test_output_layer_benchmark_runs_and_both_ways_agree(tmp_path, tiny_dir):
    """``benchmarks/output_layer.py`` on the tiny model and an exported suite's rows:
    the whole logits and the labelled positions give the same losses."""
    data = tmp_path / "suite"
    data.mkdir()
    words = ["abc", "bcd", "cde", "def"]
    pool = [{"prompt": f"up: {w}", "response": w.upper()} for w in words]
    target = [
        {
            "prompt": f"first of {w}?",
            "response": w[0],
            "options": [w[0], w[1]],
            "gold": 0,
        }
        for w in words
    ]
    for name, rows in (("pool.jsonl", pool), ("target.jsonl", target)):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _run_benchmark(
        "output_layer.py",
        ["--model", str(tiny_dir), "--data", str(data), "--device", "cpu"]
        + ["--batch", "4", "--pairs", "8", "--repeat", "1"],
        tmp_path,
    )
    lines = {
        line.split("|")[1].strip(): line.split("|")
        for line in result.stdout.splitlines()
        if line.startswith("| training") or line.startswith("| option")
    }
    assert set(lines) == {"training step", "option scoring"}
    for cells in lines.values():
        assert float(cells[5]) < 1e-4  # the largest loss difference
        assert cells[4].strip().endswith("x")


@pytest.mark.slow
def test_finetune_schedule_benchmark_counts_fewer_forwards_for_the_same_losses(
    tmp_path,
):
    """``benchmarks/finetune_schedule.py`` at toy size: per seed, a 40-row reference
    (5 steps), a 36-row one (5) and two selections (2 and 4 rows: 1 step each), four
    adapters at once. Stacks per seed: 5 forwards a seed; one stack: the two seeds'
    four references side by side (5), then the four selections (1)."""
    args = ["--pool", "40", "--methods", "1", "--seeds", "2", "--at-once", "4"]
    result = _run_benchmark(
        "finetune_schedule.py", [*args, "--target", "8", "--device", "cpu"], tmp_path
    )
    out = result.stdout
    assert "| stacks per seed | 10 |" in out
    assert "| one stack, slots | 6 |" in out
    assert "largest relative difference of a target loss" in out


@pytest.mark.slow
def test_realtext_gpu_joins_the_parts_converts_and_benches(tmp_path):
    """``benchmarks/realtext_gpu.py``'s device calls on the CPU: a tiny GGUF cut in
    two parts and the tiny realtext suite exported beside them (what ``pack``
    makes), then ``stage`` and ``run --quick`` as the two device calls run them."""
    pytest.importorskip("gguf")
    import importlib.util

    from gguf_writer import write_tiny_gguf
    from harp.bench.rows import read_results
    from harp.bench.suites import find_shared_data, load_suite

    if find_shared_data() is None:
        pytest.skip("the shared data folder is absent")
    spec = importlib.util.spec_from_file_location(
        "realtext_gpu", ROOT / "benchmarks" / "realtext_gpu.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    carry, staged, out = tmp_path / "carry", tmp_path / "stage", tmp_path / "out"
    carry.mkdir()
    data = write_tiny_gguf(tmp_path / "tiny.Q8_0.gguf").read_bytes()
    suite = load_suite("realtext", size="tiny")
    script.cut(data, "tiny.Q8_0.gguf", suite, carry, model=str(staged / script.MODEL))
    assert (carry / "part1").stat().st_size + (carry / "part2").stat().st_size == len(
        data
    )
    paths = ["--carry", str(carry), "--stage", str(staged)]
    _run_benchmark("realtext_gpu.py", ["stage", *paths], tmp_path)
    result = _run_benchmark(
        "realtext_gpu.py", ["run", *paths, "--quick", "--out", str(out)], tmp_path
    )
    assert (staged / script.MODEL / "config.json").is_file()
    rows = read_results(out / "results.jsonl")
    assert {(r.method, r.seed) for r in rows} == {("random", 0), ("harp-e", 0)}
    assert all(r.budget == "5%" and r.primary_metric == "option_logprob" for r in rows)
    table = (out / "table.md").read_text()
    assert "harp-e" in table and table in result.stdout
    # HARP-E against random (the best other method there): the claim is checked.
    assert "| HARP ≥ the best baseline, at ≤ 1/7 of its rows | harp-e @ 5% |" in table
    assert "cpu: conversion" in result.stdout
    # A part that does not match the manifest is refused before any work.
    damaged = bytearray((staged / "part1").read_bytes())
    damaged[-1] ^= 0xFF
    (staged / "part1").write_bytes(bytes(damaged))
    result = _run_benchmark(
        "realtext_gpu.py", ["run", *paths, "--quick", "--out", str(out)], tmp_path,
        fails=True,
    )  # fmt: skip
    assert "the two parts do not make the packed GGUF file" in result.stderr
