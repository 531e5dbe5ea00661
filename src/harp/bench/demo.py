"""``harp demo``: a preset of the benchmark harness on the synthetic skills suite.

The demo is ``harp bench`` with one budget and one seed on a sized skills suite: it
generates the suite, pretrains the proxy (cached), scores the base, and for each
method selects, finetunes the proxy on the selection and scores the target; the
reference rows (full data, the known-helpful rows, the helpful rows plus the harmful
ones) put the numbers in context. Every finished step is cached under ``out_dir``,
so an interrupted demo resumes where it stopped. The rows are the bench's
(``results.jsonl``); ``results.json`` and ``results.md`` add the demo's table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from harp.bench.harness import run_bench
from harp.bench.rows import BenchRow, jsonable
from harp.bench.suites import BenchConfig
from harp.core.context import RunContext
from harp.core.errors import ParameterError
from harp.core.io import atomic_write_json, atomic_write_text

__all__ = ["DEMO_MODEL_METHODS", "DEMO_SIZES", "DemoResult", "demo_config", "run_demo"]

log = logging.getLogger(__name__)

#: The demo's sizes: suite, proxy pretraining and finetuning recipe. Calibrated on
#: 2 CPU cores: pretraining ~80 s, one finetune + evaluation of 600 target rows ~9 s.
DEMO_SIZES: dict[str, dict[str, Any]] = {
    "default": {
        "skills": {"n_pool": 2000, "n_target_per_domain": 200, "n_pretrain": 6000},
        "pretrain": {"steps": 1000, "batch_size": 32},
        "train": {},
    },
    "tiny": {
        "skills": {"n_pool": 300, "n_target_per_domain": 30, "n_pretrain": 600},
        "pretrain": {"steps": 40, "batch_size": 16},
        "train": {"steps": 8, "batch_size": 8},
    },
}

#: Model-based methods the demo runs by default: HARP measures leaves on the demo's
#: own proxy (13 train-evaluate calls of a few seconds each); the gradient methods'
#: warm-ups would double the demo's time, so they are opt-in (``--methods``).
DEMO_MODEL_METHODS = ("harp-c", "harp-e")


def _default_methods() -> list[str]:
    from harp.selectors import available_methods, get_selector_class

    free = [m for m in available_methods() if not get_selector_class(m).uses_model]
    return free + list(DEMO_MODEL_METHODS)


def demo_config(
    size: str = "default",
    *,
    out_dir: str | Path = "harp-runs/demo",
    seed: int = 0,
    methods: list[str] | None = None,
    budget: str = "10%",
) -> BenchConfig:
    """The bench configuration of ``harp demo`` at ``size`` (``default`` or ``tiny``).

    Parameters
    ----------
    size : {"default", "tiny"}, default "default"
        ``default``: a 2000-row pool, 200 target rows per domain, a 1000-step proxy
        (about 5.5 minutes on 2 CPU cores); ``tiny``: a one-minute smoke run.
    out_dir : str or Path, default "harp-runs/demo"
        Folder of the data, the proxy, the cache and the results.
    seed : int, default 0
        Seed of the suite, the proxy, the selections and the finetunes.
    methods : list of str or None, default None
        Methods to compare; None: every method that needs no model, plus HARP-C and
        HARP-E.
    budget : str, default "10%"
        Rows each method may select.

    Raises
    ------
    ParameterError
        For an unknown size or method.
    """
    from harp.selectors import get_selector_class

    if size not in DEMO_SIZES:
        raise ParameterError(
            f"size={size!r} is not allowed; expected one of " + ", ".join(DEMO_SIZES)
        )
    chosen = list(methods) if methods is not None else _default_methods()
    for method in chosen:
        get_selector_class(method)  # unknown names fail before any work
    preset = DEMO_SIZES[size]
    return BenchConfig(
        name="demo",
        kind="skills",
        out_dir=Path(out_dir),
        methods=chosen,
        budgets=[budget],
        seeds=[seed],
        seed=seed,
        references=True,
        skills=dict(preset["skills"]),
        pretrain=dict(preset["pretrain"]),
        train=dict(preset["train"]),
    )


class DemoResult:
    """The rows of a demo run and where its tables were written.

    Attributes
    ----------
    rows : list of BenchRow
        The base row, the references, then one row per method.
    config : BenchConfig
        What ran.
    seconds : float
        Wall time of the run.
    paths : dict
        ``{"json": ..., "markdown": ..., "results": ...}``.
    """

    def __init__(
        self,
        rows: list[BenchRow],
        config: BenchConfig,
        seconds: float,
        paths: dict[str, Path],
    ) -> None:
        self.rows = rows
        self.config = config
        self.seconds = seconds
        self.paths = paths

    @property
    def base(self) -> BenchRow:
        """The base model's row."""
        return next(r for r in self.rows if r.kind == "base")

    @property
    def methods(self) -> list[BenchRow]:
        """The selections' rows, in method order."""
        return [r for r in self.rows if r.kind == "method"]

    @property
    def references(self) -> list[BenchRow]:
        """The reference rows."""
        return [r for r in self.rows if r.kind == "reference"]

    @property
    def domains(self) -> list[str]:
        """Target domains."""
        return list(self.base.domains)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``results.json`` holds)."""
        return {
            "domains": self.domains,
            "rows": [r.to_dict() for r in self.rows],
            "config": jsonable(self.config.to_dict()),
            "total_seconds": round(self.seconds, 2),
        }


def run_demo(config: BenchConfig, context: RunContext | None = None) -> DemoResult:
    """Run the demo described by ``config`` (see :func:`demo_config`).

    Returns
    -------
    DemoResult
        The rows, also written to ``results.jsonl``, and the demo's table in
        ``results.json`` and ``results.md`` of ``config.out_dir``.
    """
    from harp.bench.tables import demo_markdown

    start = time.perf_counter()
    rows = run_bench(config, context)
    out_dir = Path(config.out_dir)
    paths = {
        "results": out_dir / "results.jsonl",
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
    }
    result = DemoResult(rows, config, time.perf_counter() - start, paths)
    atomic_write_json(paths["json"], result.to_dict())
    atomic_write_text(paths["markdown"], demo_markdown(result))
    return result
