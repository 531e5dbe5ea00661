"""A real kill (SIGKILL) in the middle of `harp demo`, then the same command again.

The rerun must finish with the same numbers as an uninterrupted run and must not redo
any step that had finished before the kill (its cache file is left untouched).
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

DEMO = ["-m", "harp", "demo", "--size", "tiny", "--methods", "random,dsir"]


def _run(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *DEMO, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _numbers(out: Path) -> dict:
    result = json.loads((out / "results.json").read_text())
    return {row["method"]: (row["n_selected"], row["score"]) for row in result["rows"]}


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text:
            found.append(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its new parent reaps it


def test_killed_demo_resumes_without_redoing_finished_steps(tmp_path):
    reference = tmp_path / "uninterrupted"
    assert _run(reference).returncode == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, *DEMO, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cache = out / "cache" / "train-eval"
    deadline = time.monotonic() + 300
    # Kill once at least two steps are cached (base report + a finetune).
    while time.monotonic() < deadline and proc.poll() is None:
        if cache.exists() and len(list(cache.glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the demo finished before it could be killed"
    workers = _children(proc.pid)  # the demo's finetuning pool
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Its worker processes end with it, not left waiting for work forever.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert workers and not any(_alive(pid) for pid in workers)
    assert not (out / "results.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.json")}
    assert finished

    rerun = _run(out)
    assert rerun.returncode == 0, rerun.stderr
    assert _numbers(out) == _numbers(reference)
    for name, mtime in finished.items():
        assert (cache / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
