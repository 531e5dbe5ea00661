"""A real kill (SIGKILL) in the middle of a HARP run, then the same command again.

The rerun must select exactly what an uninterrupted run selects and must not repeat
any leaf evaluation that had finished before the kill (its cache file is untouched).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harp.data.synthetic import make_skills_suite

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")


def _command(tiny_dir: Path, data: Path, cache: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harp",
        "select",
        "--method",
        "harp-c",
        "--pool",
        str(data / "pool.jsonl"),
        "--target",
        str(data / "target.jsonl"),
        "--model",
        str(tiny_dir),
        "--budget",
        "60",
        "--evals",
        "8",
        "--out",
        str(out),
        *("-p", "encoder=tfidf", "-p", "leaf_size=10", "-p", "train_steps=3"),
        *("-p", "bootstrap=20", "--cache-dir", str(cache)),
    ]


def _selected(out: Path) -> tuple[list[str], dict]:
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    return meta["ids"], meta["diagnostics"]


def test_killed_harp_run_resumes_without_repeating_leaf_evaluations(tiny_dir, tmp_path):
    suite = make_skills_suite(n_pool=160, n_target_per_domain=6, n_pretrain=10)
    data = tmp_path / "data"
    suite.save(data)

    reference = tmp_path / "reference.jsonl"
    done = subprocess.run(
        _command(tiny_dir, data, tmp_path / "cache-ref", reference),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr

    cache = tmp_path / "cache"
    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(
        _command(tiny_dir, data, cache, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    oracle = cache / "train-eval"
    deadline = time.monotonic() + 300
    # Kill once the target fit, the base report and at least two leaf evaluations
    # are on disk.
    while time.monotonic() < deadline and proc.poll() is None:
        if oracle.exists() and len(list(oracle.glob("*.json"))) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    finished = {p.name: p.stat().st_mtime_ns for p in oracle.glob("*.json")}

    rerun = subprocess.run(
        _command(tiny_dir, data, cache, out),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    ids, diag = _selected(out)
    ref_ids, ref_diag = _selected(reference)
    assert ids == ref_ids
    assert [x["mean"] for x in diag["leaves"]] == [
        x["mean"] for x in ref_diag["leaves"]
    ]
    for name, mtime in finished.items():
        assert (oracle / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    # The rerun ran only the calls the killed run had not finished. (The target
    # fit and the base report are cached too, but are not leaf calls: the base is
    # scored when the first round's results are read, so it may not be there.)
    leaf_calls = [
        name
        for name in finished
        if json.loads((oracle / name).read_text())["value"].get("rows", 0) > 0
    ]
    assert len(leaf_calls) >= 2
    assert diag["oracle"]["cache_hits"] == len(leaf_calls)
    assert diag["oracle"]["calls"] + diag["oracle"]["cache_hits"] == sum(
        x["measured"] for x in diag["leaves"]
    ) + len(diag["oracle"]["replicated_leaves"])
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
