"""bench stage: the demo, the benchmark harness and its report.

``run_bench(load_suite("skills"))`` runs every method × budget × seed of a suite and
appends its rows to ``results.jsonl``; ``write_report(out_dir)`` turns them into
Markdown, HTML and plots (needs matplotlib). Imports are lazy: ``import harp.bench``
loads neither torch nor matplotlib.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_suite", "run_bench", "write_report"]


def __getattr__(name: str) -> Any:
    if name == "run_bench":
        from harp.bench.harness import run_bench

        return run_bench
    if name == "load_suite":
        from harp.bench.suites import load_suite

        return load_suite
    if name == "write_report":
        from harp.bench.report import write_report

        return write_report
    raise AttributeError(f"module 'harp.bench' has no attribute {name!r}")
