"""``harp bench``: every method × budget × seed, one fixed finetuning recipe, one table.

For each combination the harness selects from the suite's pool, finetunes the suite's
base model on the selection with the suite's one :class:`~harp.training.TrainConfig`,
scores the target per domain and appends one row to ``results.jsonl``. Reference rows
(the base model, full data and, on the skills suite, the known-helpful rows) put the
numbers in context. A row is appended only once it is complete (line + flush +
fsync); a rerun skips every row whose key is already there, so an interrupted bench
resumes, and a torn last line left by a crash is dropped with a warning.

Layout of the output folder::

    results.jsonl          one JSON row per finished (method, budget, seed)
    bench-config.json      the resolved configuration of the last run
    selections/<key>.json  each Selection (harp.selectors.Selection.load reads it)
    diagnostics/<key>.json what a selector's diagnostics() returned, if it has one
    cache/                 finetune results by fingerprint, model caches, the proxy
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from harp._utils.cache import JsonCache
from harp._utils.hashing import fingerprint, stable_json
from harp._utils.io import atomic_write_json
from harp._version import __version__
from harp.bench.suites import BenchConfig, PreparedSuite, load_suite, prepare_suite
from harp.errors import ParameterError

__all__ = [
    "BenchConfig",
    "RESULTS_FILE",
    "load_suite",
    "read_results",
    "method_settings",
    "row_key",
    "run_bench",
]

log = logging.getLogger(__name__)

#: Name of the results file in the output folder.
RESULTS_FILE = "results.jsonl"


# -- results file ----------------------------------------------------------------------
def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``results.jsonl``; unreadable lines are skipped with a warning.

    A crash while appending can leave a torn last line: it is ignored (the row will
    be recomputed by a rerun). An unreadable line elsewhere is skipped too, with its
    line number in the warning.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            if i == last:
                log.warning(
                    "%s: the last line is torn (an interrupted write?); ignored",
                    path,
                )
            else:
                log.warning("%s:%d: not a JSON row; ignored", path, i + 1)
            continue
        rows.append(row)
    return rows


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no newline) so that appended rows start on their own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    log.warning(
        "%s: dropped a torn last line of %d bytes (an interrupted write)",
        path,
        len(data) - keep,
    )


def _append(path: Path, row: dict[str, Any]) -> None:
    line = json.dumps(_jsonable(row), sort_keys=True, allow_nan=False)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


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
    """``params`` over the method's constructor defaults (references: ``params``)."""
    import inspect

    from harp.selectors import get_selector_class

    try:
        cls = get_selector_class(method)
    except ParameterError:  # a reference row ("base", "full data"): nothing to resolve
        return dict(params)
    # Set by the harness for every row (the suite's model, the bench's cache), or
    # how the work runs: not what a row measures.
    skip = {"self", "seed", "budget", "model", "cache_dir", *cls._execution_params}
    settings = {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name not in skip and p.default is not inspect.Parameter.empty
    }
    settings.update(params)
    return _jsonable(settings)


# -- memory ----------------------------------------------------------------------------
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


# -- scores ----------------------------------------------------------------------------
def _est(mean: float, var: float, n: int) -> dict[str, Any]:
    stderr = math.sqrt(var) if var is not None and var >= 0 else math.nan
    return {"mean": mean, "stderr": stderr, "n": n}


def _scores(tuned, base, primary: str) -> dict[str, Any]:
    """Per-domain score (higher is better), its average and the raw metrics."""
    from harp.training.evaluate import Estimate

    domains = list(tuned.domains)
    metrics = {
        m: {d: tuned.estimate(d, m).to_dict() for d in domains} for m in tuned.metrics
    }
    averages = {m: tuned.average(m).to_dict() for m in tuned.metrics}
    per_domain: dict[str, Estimate] = {}
    for d in domains:
        if primary == "exact_match":
            per_domain[d] = tuned.estimate(d, "exact_match")
            continue
        # Loss reduction vs the base, paired over target items when they align.
        t_items = tuned.items.get(d, {}).get("loss")
        b_items = base.items.get(d, {}).get("loss")
        if t_items is not None and b_items is not None and len(t_items) == len(b_items):
            per_domain[d] = Estimate.from_values(
                np.asarray(b_items) - np.asarray(t_items)
            )
        else:
            t, b = tuned.estimate(d, "loss"), base.estimate(d, "loss")
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
        "metric_average": {
            "exact_match": averages.get("exact_match"),
            "loss": averages.get("loss"),
        },
    }


#: What the ``score`` of a row means, by the suite's primary metric.
SCORE_NAMES = {
    "exact_match": "exact match",
    "loss": "loss reduction vs base (nats/token)",
}


# -- the run ---------------------------------------------------------------------------
def _check_methods(config: BenchConfig) -> list[str]:
    from harp.selectors import available_methods, get_selector_class

    methods = list(config.methods) if config.methods else available_methods()
    where = f"{config.source}: " if config.source else ""
    for method in methods:
        cls = get_selector_class(method)  # unknown names fail before any work
        given = config.params.get(method, {})
        valid = set(cls._get_param_names()) - {"budget", "seed"}
        for key in given:
            if key not in valid:
                raise ParameterError(
                    f"{where}params: method {method!r} has no parameter {key!r}; "
                    f"its parameters are: {', '.join(sorted(valid))}"
                )
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


def run_bench(config: BenchConfig, progress: bool = False) -> list[dict[str, Any]]:
    """Run the benchmark described by ``config``; return its result rows.

    Parameters
    ----------
    config : BenchConfig
        Suite, methods, budgets, seeds, recipe and output folder
        (:func:`harp.bench.suites.load_suite` reads one from YAML).
    progress : bool, default False
        Show progress bars.

    Returns
    -------
    list of dict
        One row per reference and per (method, budget, seed), in run order: rows
        found in ``results.jsonl`` are returned as stored, new rows as appended.
        Keys: ``key``, ``suite``, ``suite_fingerprint``, ``kind`` (``base``,
        ``reference`` or ``method``), ``method``, ``budget``, ``seed``, ``params``,
        ``n_selected``, ``n_pool``, ``data_fraction``, ``domains``, ``score_name``,
        ``score`` (per domain: mean, stderr, n; higher is better), ``score_average``,
        ``metrics`` / ``metric_average`` (raw exact match and loss; None when not
        computed), ``select_seconds``, ``train_eval_calls``, ``gradient_passes``,
        ``peak_rss_mb``, ``rss_before_mb``, ``train_eval_seconds``,
        ``harmful_fraction`` (None when the suite does not know), ``selection_file``,
        ``diagnostics_file``.

    Raises
    ------
    harp.errors.HarpError
        For unknown methods or parameters, bad budgets, missing data or models,
        before any selection or finetuning starts.
    """
    from harp.selectors import parse_budget

    methods = _check_methods(config)
    for budget in config.budgets:
        parse_budget(budget)
    out_dir = Path(config.out_dir)
    suite = prepare_suite(config, progress=progress)
    results_path = out_dir / RESULTS_FILE
    _repair_tail(results_path)
    done = {row.get("key"): row for row in read_results(results_path)}
    atomic_write_json(
        out_dir / "bench-config.json",
        _jsonable(
            {
                "config": config.to_dict(),
                "methods": methods,
                "suite_fingerprint": suite.fingerprint,
                "harp_version": __version__,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        ),
    )
    runner = _Runner(config, suite, out_dir, progress)
    jobs: list[tuple[str, Any, int | None, dict[str, Any]]] = []
    if config.references:
        jobs.append(("base", None, None, {}))
        for name in suite.references:
            jobs += [(name, "100%", seed, {}) for seed in config.seeds]
    for method in methods:
        params = dict(config.params.get(method, {}))
        for budget in config.budgets:
            jobs += [(method, budget, seed, params) for seed in config.seeds]
    rows = []
    for i, (method, budget, seed, params) in enumerate(jobs, start=1):
        key = row_key(suite.fingerprint, method, budget, seed, params)
        if key in done:
            log.debug("[%d/%d] %s: done already", i, len(jobs), method)
            rows.append(done[key])
            continue
        what = method if budget is None else f"{method} @ {budget}, seed {seed}"
        log.info("[%d/%d] %s", i, len(jobs), what)
        if method == "base":
            row = runner.base_row(key)
        elif method in suite.references:
            row = runner.reference_row(key, method, seed)
        else:
            row = runner.method_row(key, method, budget, seed, params)
        row = _jsonable(row)
        _append(results_path, row)
        done[key] = row
        rows.append(row)
    log.info("%d rows -> %s", len(rows), results_path)
    return rows


class _Runner:
    """The steps of one bench: base evaluation, finetunes, selections."""

    def __init__(
        self, config: BenchConfig, suite: PreparedSuite, out_dir: Path, progress: bool
    ) -> None:
        from harp.training import EvalConfig

        self.config = config
        self.suite = suite
        self.out_dir = out_dir
        self.progress = progress
        self.cache = JsonCache(out_dir / "cache" / "steps")
        self.eval_config = EvalConfig(seed=config.seed, **suite.eval)
        self.primary = suite.primary_metric
        self._base = None

    # -- shared pieces -----------------------------------------------------------------
    @property
    def base_report(self):
        from harp.training import EvalReport

        if self._base is not None:
            return self._base
        suite = self.suite
        key = fingerprint(
            "bench-base",
            content=stable_json(
                {"model": suite.model_key, "target": suite.target.content_hash()}
            ),
            params={"eval": suite.eval},
        )
        cached = self.cache.get(key)
        if cached is not None:
            self._base = EvalReport.from_dict(cached)
            return self._base
        from harp.models import load_model
        from harp.training import evaluate

        log.info("scoring the base model on the target")
        model, tokenizer = load_model(suite.model_dir)
        self._base = evaluate(
            model, tokenizer, suite.target, self.eval_config, progress=self.progress
        )
        self.cache.put(key, self._base.to_dict(include_items=True))
        return self._base

    def _finetune(self, indices: np.ndarray, seed: int):
        """Finetune on the pool rows at ``indices``; ``(report, seconds)`` (cached)."""
        from harp.training import EvalReport, TrainConfig, finetune_and_evaluate

        suite = self.suite
        if len(indices) == 0:
            # An empty selection (HARP when no leaf is expected to help) trains
            # nothing: the model is the base model.
            return self.base_report, 0.0
        subset = suite.pool.subset(indices)
        train_config = TrainConfig(seed=seed, **suite.train)
        key = fingerprint(
            "bench-finetune",
            content=stable_json(
                {
                    "model": suite.model_key,
                    "target": suite.target.content_hash(),
                    "rows": subset.content_hash(),
                }
            ),
            params={"train": train_config.to_dict(), "eval": suite.eval},
        )
        hit = self.cache.get(key)
        if hit is not None:
            return EvalReport.from_dict(hit["report"]), hit["seconds"]
        start = time.perf_counter()
        tuned, _ = finetune_and_evaluate(
            suite.model_dir,
            subset,
            suite.target,
            train_config,
            self.eval_config,
            base_report=self.base_report,
            progress=self.progress,
        )
        seconds = time.perf_counter() - start
        self.cache.put(
            key, {"report": tuned.to_dict(include_items=True), "seconds": seconds}
        )
        return tuned, seconds

    def _row(self, key: str, kind: str, method: str, budget: Any, seed, params):
        suite = self.suite
        return {
            "key": key,
            "suite": suite.name,
            "suite_fingerprint": suite.fingerprint,
            "kind": kind,
            "method": method,
            "budget": None if budget is None else str(budget),
            "seed": seed,
            "params": params,
            "n_pool": len(suite.pool),
            "score_name": SCORE_NAMES[self.primary],
            "primary_metric": self.primary,
            "harp_version": __version__,
        }

    def _selected(self, row: dict[str, Any], indices: np.ndarray) -> None:
        suite = self.suite
        row["n_selected"] = int(len(indices))
        row["data_fraction"] = len(indices) / len(suite.pool)
        mask = suite.harmful_mask
        row["harmful_fraction"] = (
            None
            if mask is None
            else (float(mask[indices].mean()) if len(indices) else 0.0)
        )

    # -- rows --------------------------------------------------------------------------
    def base_row(self, key: str) -> dict[str, Any]:
        base = self.base_report
        row = self._row(key, "base", "base", None, None, {})
        self._selected(row, np.array([], dtype=np.int64))
        row["harmful_fraction"] = None  # nothing selected: no share to speak of
        row.update(_scores(base, base, self.primary))
        row.update(_no_selection_cost())
        row["train_eval_seconds"] = 0.0
        row["finished_at"] = _now()
        return row

    def reference_row(self, key: str, name: str, seed: int) -> dict[str, Any]:
        indices = np.asarray(self.suite.references[name], dtype=np.int64)
        row = self._row(key, "reference", name, "100%", seed, {})
        tuned, seconds = self._finetune(indices, seed)
        self._selected(row, indices)
        row.update(_scores(tuned, self.base_report, self.primary))
        row.update(_no_selection_cost())
        row["train_eval_seconds"] = seconds
        row["finished_at"] = _now()
        return row

    def method_row(
        self, key: str, method: str, budget: Any, seed: int, params: dict[str, Any]
    ) -> dict[str, Any]:
        from harp.selectors import Selection

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
        row = self._row(key, "method", method, budget, seed, params)
        indices = np.asarray(selection.indices, dtype=np.int64)
        self._selected(row, indices)
        row["budget_rows"] = int(selection.budget)
        tuned, seconds = self._finetune(indices, seed)
        row.update(_scores(tuned, self.base_report, self.primary))
        cost = selection.cost
        row.update(
            {
                "select_seconds": cost.wall_seconds,
                "train_eval_calls": cost.train_eval_calls,
                "gradient_passes": cost.gradient_passes,
                "rows_scored": cost.rows_scored,
                "peak_rss_mb": memory.get("peak_rss_mb"),
                "rss_before_mb": memory.get("rss_before_mb"),
                "selection_file": str(sel_path.relative_to(self.out_dir)),
                "diagnostics_file": (
                    str(diag_path.relative_to(self.out_dir))
                    if diag_path.exists()
                    else None
                ),
                "selection_fingerprint": selection.fingerprint,
            }
        )
        row["train_eval_seconds"] = seconds
        row["finished_at"] = _now()
        return row

    def _select(self, method, budget, seed, params, diag_path: Path):
        from harp.selectors import get_selector_class, make_selector

        suite = self.suite
        cls = get_selector_class(method)
        names = set(cls._get_param_names())
        extra: dict[str, Any] = {}
        if cls.uses_model:
            if "model" in names and "model" not in params:
                extra["model"] = str(suite.model_dir)
            if "cache_dir" in names and "cache_dir" not in params:
                extra["cache_dir"] = str(self.out_dir / "cache")
        if "progress" in names and "progress" not in params:
            extra["progress"] = self.progress
        selector = make_selector(method, budget=budget, seed=seed, **params, **extra)
        with _PeakRSS() as rss:
            selector.fit(suite.pool, suite.target)
        selection = selector.selection_
        diagnostics = getattr(selector, "diagnostics", None)
        if callable(diagnostics):
            try:
                data = _jsonable(diagnostics())
            except Exception as exc:  # diagnostics must never sink a finished run
                log.warning("%s: diagnostics() failed (%s); not saved", method, exc)
                data = None
            if isinstance(data, dict):
                atomic_write_json(diag_path, data)
            elif data is not None:
                log.warning("%s: diagnostics() is not a dict; not saved", method)
        memory = {
            "peak_rss_mb": rss.peak / 2**20,
            "rss_before_mb": rss.before / 2**20,
        }
        return selection, memory


def _no_selection_cost() -> dict[str, Any]:
    return {
        "select_seconds": 0.0,
        "train_eval_calls": 0,
        "gradient_passes": 0,
        "rows_scored": 0,
        "peak_rss_mb": None,
        "rss_before_mb": None,
        "selection_file": None,
        "diagnostics_file": None,
        "budget_rows": None,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
