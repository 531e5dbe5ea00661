"""A real kill (SIGKILL) in the middle of `harp bench`, then the same command again.

The rerun must end with the same rows as an uninterrupted bench, keep every row that
was finished before the kill byte for byte, and not redo their finetunes.
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

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")

TINY_YAML = """\
kind: skills
skills: {n_pretrain: 600}
size: 300
target_rows: 30
pretrain: {steps: 40, batch_size: 16}
train: {steps: 8, batch_size: 8}
methods: [random, dsir, cluster]
budgets: ["10%"]
seeds: [0, 1]
"""

#: Fields that depend on timing or on where the bench ran, not on what it computed.
VOLATILE = {"finished_at", "select_seconds", "train_eval_seconds", "peak_rss_mb"}
VOLATILE |= {"rss_before_mb"}


def _command(suite: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "harp", "bench", "--suite", str(suite)] + [
        "--out",
        str(out),
    ]


def _rows(out: Path) -> dict[str, dict]:
    rows = [
        json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()
    ]
    return {r["key"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}


def test_killed_bench_resumes_with_the_same_rows(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_YAML)
    reference = tmp_path / "reference"
    done = subprocess.run(
        _command(suite, reference), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(suite, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 600
    # Kill once the references and at least one method row are in.
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the bench finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = results.read_text().splitlines()
    finished = [line for line in before if line.endswith("}")]
    steps = {p.name: p.stat().st_mtime_ns for p in (out / "cache" / "steps").glob("*")}

    rerun = subprocess.run(
        _command(suite, out), capture_output=True, text=True, timeout=900
    )
    assert rerun.returncode == 0, rerun.stderr
    assert _rows(out) == _rows(reference)
    after = results.read_text().splitlines()
    assert after[: len(finished)] == finished  # finished rows kept byte for byte
    for name, mtime in steps.items():
        path = out / "cache" / "steps" / name
        assert path.stat().st_mtime_ns == mtime, f"{name} was recomputed"
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
