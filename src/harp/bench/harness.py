"""``harp bench``: every method × budget × seed, one fixed finetuning recipe, one table.

For each combination the harness selects from the suite's pool; then it finetunes the
suite's base model on every selection with the suite's one
:class:`~harp.training.TrainConfig` (through :class:`~harp.training.TrainEvalUtility`,
the train-and-score utility every part of harp shares; side by side on the run
context's executor when it has worker processes), scores the target per domain and
appends one :class:`~harp.bench.rows.BenchRow` per combination to ``results.jsonl``.
Reference rows (the base model, full data and, on the skills suite, the known-helpful
rows) put the numbers in context. A row is appended only once it is complete; a rerun
skips every row whose key is already there and reuses the saved selections and
cached finetunes of the others, so an interrupted bench resumes. ``harp demo`` is a
preset of this harness (:mod:`harp.bench.demo`).

Layout of the output folder::

    results.jsonl          one JSON row per finished (method, budget, seed)
    bench-config.json      the resolved configuration of the last run
    selections/<key>.json  each Selection (harp.selectors.Selection.load reads it)
    diagnostics/<key>.json what a selector's diagnostics() returned, if it has one
    cache/                 the run context's cache: finetune results (train-eval/),
                           the proxy, warm-ups, feature stores
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harp._version import __version__
from harp.bench.rows import (
    RESULTS_FILE,
    SCORE_NAMES,
    BenchRow,
    append_row,
    jsonable,
    read_results,
    repair_tail,
)
from harp.bench.suites import BenchConfig, PreparedSuite, load_suite, prepare_suite
from harp.core.context import RunContext
from harp.core.errors import ParameterError
from harp.core.hashing import fingerprint
from harp.core.io import atomic_write_json
from harp.training.config import METRIC_SPECS, EvalConfig, TrainConfig
from harp.training.evaluate import Estimate, EvalReport
from harp.training.utility import TrainEvalUtility

__all__ = [
    "BenchConfig",
    "load_suite",
    "method_settings",
    "row_key",
    "run_bench",
]

log = logging.getLogger(__name__)


def row_key(
    suite_fingerprint: str,
    method: str,
    budget: Any,
    seed: int | None,
    params: dict[str, Any] | None = None,
) -> str:
    """Key of a result row: suite fingerprint, method, budget, seed and settings.

    A registered method's settings are all its hyper-parameters, defaults included
    (those the harness fills in, and how the work runs, left out), so a row made
    before a default changed is not mistaken for one made after; an explicit
    default and an omitted one give the same key.
    """
    return fingerprint(
        "bench-row",
        content=suite_fingerprint,
        params={
            "method": method,
            "budget": str(budget),
            "params": method_settings(method, params or {}),
        },
        seed=seed,
    )[:24]


def method_settings(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Every computation setting of ``method`` with ``params``, defaults included.

    Components are flattened (``features__dim``); the settings the harness fills in
    for every row (seed, budget, the suite's model) are left out. A reference row
    ("base", "full data") has no method: its ``params`` are returned as they are.
    """
    from harp.selectors import get_selector_class, make_selector

    try:
        get_selector_class(method)
    except ParameterError:  # a reference row: nothing to resolve
        return dict(params)
    settings = make_selector(method, **params).computation_params()
    for name in ("seed", "budget", "model"):
        settings.pop(name, None)
    return jsonable(settings)


# -- memory --------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        import resource

        # Peak since start (KiB on Linux): the best available without /proc.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _PeakRSS:
    """Samples the resident set size in a thread while the block runs."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.before = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakRSS:
        self.before = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


# -- scores --------------------------------------------------------------------------
def _est(mean: float, var: float, n: int) -> dict[str, Any]:
    stderr = math.sqrt(var) if var is not None and var >= 0 else math.nan
    return {"mean": mean, "stderr": stderr, "n": n}


def _scores(tuned: EvalReport, base: EvalReport, primary: str) -> dict[str, Any]:
    """Per-domain score (higher is better), its average and the raw metrics."""
    domains = list(tuned.domains)
    metrics = {
        m: {d: tuned.estimate(d, m).to_dict() for d in domains} for m in tuned.metrics
    }
    averages = {m: tuned.average(m).to_dict() for m in tuned.metrics}
    per_domain: dict[str, Estimate] = {}
    for d in domains:
        if METRIC_SPECS[primary].higher_is_better:
            per_domain[d] = tuned.estimate(d, primary)
            continue
        # A lower-is-better metric (the loss) scores as its reduction vs the base,
        # paired over target items when they align.
        t_items = tuned.items.get(d, {}).get(primary)
        b_items = base.items.get(d, {}).get(primary)
        if t_items is not None and b_items is not None and len(t_items) == len(b_items):
            per_domain[d] = Estimate.from_values(
                np.asarray(b_items) - np.asarray(t_items)
            )
        else:
            t, b = tuned.estimate(d, primary), base.estimate(d, primary)
            per_domain[d] = Estimate(b.mean - t.mean, t.var + b.var, t.n)
    k = len(domains)
    average = Estimate(
        float(sum(e.mean for e in per_domain.values()) / k),
        float(sum(e.var for e in per_domain.values()) / k**2),
        sum(e.n for e in per_domain.values()),
    )
    return {
        "domains": domains,
        "score": {d: _est(e.mean, e.var, e.n) for d, e in per_domain.items()},
        "score_average": _est(average.mean, average.var, average.n),
        "metrics": metrics,
        "metric_average": averages,
    }


# -- the run -------------------------------------------------------------------------
def _check_methods(config: BenchConfig) -> list[str]:
    from harp.selectors import available_methods, get_selector_class, make_selector
    from harp.selectors.registry import route_params

    methods = list(config.methods) if config.methods else available_methods()
    where = f"{config.source}: " if config.source else ""
    for method in methods:
        cls = get_selector_class(method)  # unknown names fail before any work
        given = dict(config.params.get(method, {}))
        fixed = sorted({"budget", "seed", "context"} & set(given))
        if fixed:
            raise ParameterError(
                f"{where}params: method {method!r}: {', '.join(fixed)} is set by "
                "the bench for every row (budgets, seeds, the run context)"
            )
        try:
            route_params(cls, given)
        except ParameterError as exc:
            raise ParameterError(f"{where}params: {exc}") from None
        # Values too (evals=-3, dim='x'): a bad one fails now, not after the
        # references and the methods before it have run.
        make_selector(method, **given).check_params()
    registered = set(available_methods())
    for method in config.params:
        if method not in registered:
            raise ParameterError(
                f"{where}params: unknown method {method!r}; registered methods: "
                + ", ".join(sorted(registered))
            )
    if len(set(methods)) != len(methods):
        raise ParameterError(f"{where}methods={methods!r} repeats a method")
    return methods


def run_bench(config: BenchConfig, context: RunContext | None = None) -> list[BenchRow]:
    """Run the benchmark described by ``config``; return its result rows.

    Parameters
    ----------
    config : BenchConfig
        Suite, methods, budgets, seeds, recipe and output folder
        (:func:`harp.bench.suites.load_suite` reads one from YAML).
    context : RunContext or None, default None
        Device, dtype and progress display of the selections, finetunes and
        scoring. The bench keeps its cache in ``config.out_dir / "cache"`` whatever
        the context's ``cache_dir``; seeds come from the config.

    Returns
    -------
    list of BenchRow
        One row per reference and per (method, budget, seed), in run order: rows
        found in ``results.jsonl`` are returned as stored, new rows as appended.

    Raises
    ------
    harp.core.errors.HarpError
        For unknown methods or parameters, bad budgets, missing data or models,
        before any selection or finetuning starts.
    """
    from harp.core.amount import parse_budget

    methods = _check_methods(config)
    for budget in config.budgets:
        parse_budget(budget)
    out_dir = Path(config.out_dir)
    context = (RunContext() if context is None else context).replace(
        cache_dir=out_dir / "cache", seed=config.seed
    )
    context.check()  # a missing GPU fails here, before any data is made
    executor = context.executor
    if executor is not None and not executor.runs_here(executor.n_workers):
        log.info(
            "finetunes and HARP's leaf calls run on %d %s worker processes",
            executor.n_workers,
            executor.name,
        )
    suite = prepare_suite(config, context=context)
    results_path = out_dir / RESULTS_FILE
    repair_tail(results_path)
    done = {row.key: row for row in read_results(results_path)}
    atomic_write_json(
        out_dir / "bench-config.json",
        jsonable(
            {
                "config": config.to_dict(),
                "methods": methods,
                "suite_fingerprint": suite.fingerprint,
                "context": context.describe(),
                "harp_version": __version__,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        ),
    )
    runner = _Runner(config, suite, out_dir, context)
    jobs: list[tuple[str, Any, int | None, dict[str, Any]]] = []
    if config.references:
        jobs.append(("base", None, None, {}))
        for name in suite.references:
            jobs += [(name, "100%", seed, {}) for seed in config.seeds]
    for method in methods:
        params = dict(config.params.get(method, {}))
        for budget in config.budgets:
            jobs += [(method, budget, seed, params) for seed in config.seeds]
    keys = [row_key(suite.fingerprint, *job) for job in jobs]
    todo = [(job, key) for job, key in zip(jobs, keys) if key not in done]
    if len(todo) < len(jobs):
        log.info("%d of %d rows done already", len(jobs) - len(todo), len(jobs))
    n_select = sum(
        job[0] != "base" and job[0] not in suite.references for job, _ in todo
    )
    # First every selection, one after another (each selector spreads its own work:
    # HARP's calls run on the context's executor), then every finetune of the rows
    # at once, so the executor's workers finetune side by side. A crash in between
    # loses nothing: selections are saved as they are made, finetunes cached.
    planned: list[_Planned] = []
    for job, key in todo:
        method, budget, seed, params = job
        if method == "base":
            planned.append(_Planned(key, "base", "base", None, None, {}, _NO_ROWS))
        elif method in suite.references:
            assert seed is not None
            planned.append(runner.reference_plan(key, method, seed))
        else:
            assert seed is not None
            log.info(
                "[%d/%d] selecting: %s @ %s, seed %d",
                sum(p.kind == "method" for p in planned) + 1,
                n_select,
                method,
                budget,
                seed,
            )
            planned.append(runner.method_plan(key, method, budget, seed, params))
    runner.finetune(planned)
    for plan in planned:
        row = runner.row(plan)
        append_row(results_path, row)
        done[plan.key] = row
    rows = [done[key] for key in keys]
    log.info("%d rows -> %s", len(rows), results_path)
    return rows


#: The rows of the base model's row: none.
_NO_ROWS = np.array([], dtype=np.int64)


@dataclass
class _Planned:
    """A row waiting for its finetune: what was selected, and the facts so far."""

    key: str
    kind: str
    method: str
    budget: Any
    seed: int | None
    params: dict[str, Any]
    indices: np.ndarray
    facts: dict[str, Any] = field(default_factory=dict)
    tuned: EvalReport | None = None
    seconds: float = 0.0


class _Runner:
    """The steps of one bench: base evaluation, finetunes, selections."""

    def __init__(
        self,
        config: BenchConfig,
        suite: PreparedSuite,
        out_dir: Path,
        context: RunContext,
    ) -> None:
        self.config = config
        self.suite = suite
        self.out_dir = out_dir
        self.context = context
        self.eval_config = EvalConfig(seed=config.seed, **suite.eval)
        self.primary = suite.primary_metric
        self._utility: TrainEvalUtility | None = None

    # -- shared pieces ----------------------------------------------------------------
    @property
    def utility(self) -> TrainEvalUtility:
        """The train-and-score utility of the suite's recipe (a row's seed is given
        per call: :meth:`TrainEvalUtility.recipe`)."""
        if self._utility is None:
            self._utility = TrainEvalUtility(
                self.suite.model_dir,
                self.suite.target,
                TrainConfig(seed=self.config.seed, **self.suite.train),
                self.eval_config,
                context=self.context,
            )
        return self._utility

    @property
    def base_report(self) -> EvalReport:
        """The base model's report (independent of the recipe's seed)."""
        return self.utility.base_report

    def finetune(self, planned: list[_Planned]) -> None:
        """Finetune on every planned row's selection and score it (cached).

        Every finetune goes to the utility in one map, each with its recipe seed: a
        pool of workers (the context's executor) runs them side by side, or on a GPU
        stacks of adapters of any seed train together. An empty selection (HARP
        when no leaf is expected to help) trains nothing and scores as the base
        model.
        """
        for plan in planned:
            if not len(plan.indices):
                plan.tuned, plan.seconds = self.base_report, 0.0
        group = [p for p in planned if p.tuned is None]
        if not group:
            return
        utility = self.utility
        subsets = [self.suite.pool.subset(p.indices) for p in group]
        seeds = [p.seed for p in group]
        cached = sum(utility.is_cached(r, s) for r, s in zip(subsets, seeds))
        executor = self.context.executor
        where = ""
        together = self.context.adapters_at_once_count
        if executor is not None and not executor.runs_here(len(group) - cached):
            where = f" on {executor.n_workers} {executor.name} workers"
        elif together > 1 and utility.train_config.method == "lora":
            where = f", up to {together} adapters trained at once"
        if len(group) > cached:
            log.info(
                "finetuning and scoring %d selection%s%s",
                len(group) - cached,
                "s" if len(group) - cached != 1 else "",
                where,
            )
        results = utility.map(subsets, executor, seeds=seeds, desc="bench finetunes")
        for plan, result in zip(group, results):
            plan.tuned, plan.seconds = result.report, result.seconds

    # -- rows -------------------------------------------------------------------------
    def reference_plan(self, key: str, name: str, seed: int) -> _Planned:
        """A reference row (the suite's known rows at 100%), before its finetune."""
        indices = np.asarray(self.suite.references[name], dtype=np.int64)
        return _Planned(key, "reference", name, "100%", seed, {}, indices)

    def method_plan(
        self, key: str, method: str, budget: Any, seed: int, params: dict[str, Any]
    ) -> _Planned:
        """Select with ``method`` (or read the saved selection); the row's plan."""
        from harp.core.selection import Selection

        sel_path = self.out_dir / "selections" / f"{key}.json"
        diag_path = self.out_dir / "diagnostics" / f"{key}.json"
        selection = None
        memory: dict[str, Any] = {}
        if sel_path.exists():
            try:
                selection = Selection.load(sel_path)
                memory = json.loads(sel_path.read_text(encoding="utf-8")).get(
                    "bench", {}
                )
                log.info("reusing the saved selection %s", sel_path)
            except Exception as exc:  # a torn file from a crash: select again
                log.warning("%s: unreadable (%s); selecting again", sel_path, exc)
                selection = None
        if selection is None:
            selection, memory = self._select(method, budget, seed, params, diag_path)
            selection.save(sel_path, extra={"bench": memory})
        cost = selection.cost
        return _Planned(
            key,
            "method",
            method,
            budget,
            seed,
            params,
            np.asarray(selection.indices, dtype=np.int64),
            facts=dict(
                budget_rows=int(selection.budget),
                select_seconds=cost.wall_seconds,
                train_eval_calls=cost.train_eval_calls,
                gradient_passes=cost.gradient_passes,
                rows_scored=cost.rows_scored,
                device=cost.device,
                peak_rss_mb=memory.get("peak_rss_mb"),
                rss_before_mb=memory.get("rss_before_mb"),
                selection_file=str(sel_path.relative_to(self.out_dir)),
                diagnostics_file=(
                    str(diag_path.relative_to(self.out_dir))
                    if diag_path.exists()
                    else None
                ),
                selection_fingerprint=selection.fingerprint,
            ),
        )

    def row(self, plan: _Planned) -> BenchRow:
        """The finished row of a plan whose finetune has run (the base's: none)."""
        suite = self.suite
        tuned = self.base_report if plan.kind == "base" else plan.tuned
        assert tuned is not None
        facts = dict(plan.facts)
        harmful = None
        if plan.kind != "base":
            facts["train_eval_seconds"] = plan.seconds
            if suite.harmful_mask is not None:
                harmful = (
                    float(suite.harmful_mask[plan.indices].mean())
                    if len(plan.indices)
                    else 0.0
                )
        return BenchRow(
            key=plan.key,
            suite=suite.name,
            suite_fingerprint=suite.fingerprint,
            kind=plan.kind,
            method=plan.method,
            budget=None if plan.budget is None else str(plan.budget),
            seed=plan.seed,
            params=jsonable(plan.params),
            n_pool=len(suite.pool),
            n_selected=int(len(plan.indices)),
            data_fraction=len(plan.indices) / len(suite.pool),
            harmful_fraction=harmful,
            score_name=SCORE_NAMES[self.primary],
            primary_metric=self.primary,
            harp_version=__version__,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **jsonable(_scores(tuned, self.base_report, self.primary)),
            **facts,
        )

    def _select(
        self,
        method: str,
        budget: Any,
        seed: int,
        params: dict[str, Any],
        diag_path: Path,
    ) -> tuple[Any, dict[str, Any]]:
        from harp.selectors import get_selector_class, make_selector

        cls = get_selector_class(method)
        extra: dict[str, Any] = {}
        if cls.uses_model and "model" in cls.param_names() and "model" not in params:
            extra["model"] = str(self.suite.model_dir)
        selector = make_selector(
            method,
            budget=budget,
            seed=seed,
            context=self.context,
            **params,
            **extra,
        )
        with _PeakRSS() as rss:
            selector.fit(self.suite.pool, self.suite.target)
        selection = selector.selection_
        try:
            diagnostics = selector.diagnostics()
        except Exception as exc:  # diagnostics must never sink a finished run
            log.warning("%s: diagnostics() failed (%s); not saved", method, exc)
            diagnostics = None
        if diagnostics is not None:
            atomic_write_json(diag_path, jsonable(diagnostics.to_dict()))
        memory = {
            "peak_rss_mb": rss.peak / 2**20,
            "rss_before_mb": rss.before / 2**20,
        }
        return selection, memory
