"""A benchmark's result rows: the typed row and its append-only ``results.jsonl``.

One :class:`BenchRow` per reference and per (method, budget, seed) of a bench. The
file is append-only: a row is written only once it is complete (line + flush +
fsync), a rerun skips every row whose key is there, and a torn last line left by a
crash is dropped with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RESULTS_FILE",
    "SCORE_NAMES",
    "BenchRow",
    "append_row",
    "jsonable",
    "read_results",
    "repair_tail",
]

log = logging.getLogger(__name__)

#: Name of the results file in a bench's output folder.
RESULTS_FILE = "results.jsonl"

#: What the ``score`` of a row means, by the suite's primary metric.
SCORE_NAMES = {
    "exact_match": "exact match",
    "loss": "loss reduction vs base (nats/token)",
    "option_accuracy": "option accuracy",
    "option_logprob": "gold option log-probability (nats)",
}


def jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
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


@dataclass(frozen=True)
class BenchRow:
    """One result of a bench: what was selected, what it cost, how the model scored.

    Scores are "higher is better": exact match, or for a loss suite the reduction of
    the target loss against the base model; each is ``{"mean", "stderr", "n"}``.

    Attributes
    ----------
    key : str
        Fingerprint of the row (suite, method, budget, seed, settings).
    suite, suite_fingerprint : str
        The suite's name and the fingerprint of its data, model and recipe.
    kind : {"base", "reference", "method"}
        The base model, a reference finetune (full data…), or a selection.
    method : str
        The method (or the reference's name).
    budget : str or None
        The budget asked for (None for the base).
    seed : int or None
        Seed of the selection and the finetune (None for the base).
    params : dict
        Method parameters given.
    n_pool, n_selected : int
        Pool rows and rows selected.
    data_fraction : float
        ``n_selected / n_pool``.
    harmful_fraction : float or None
        Share of known-harmful rows selected (None when the suite does not know).
    domains : list of str
        Target domains.
    score : dict
        ``{domain: {"mean", "stderr", "n"}}``.
    score_average : dict
        The macro average over domains.
    score_name, primary_metric : str
        What the score means.
    metrics, metric_average : dict
        Raw exact match and loss per domain and averaged (None when not computed).
    select_seconds : float
        Wall time of the selection.
    train_eval_calls, gradient_passes, rows_scored : int
        What the selection computed.
    device : str
        Where the selection ran.
    peak_rss_mb, rss_before_mb : float or None
        Memory of the selection.
    train_eval_seconds : float
        Wall time of the finetune and scoring of the selection.
    budget_rows : int or None
        Rows the budget allowed.
    selection_file, diagnostics_file : str or None
        Where the selection and the selector's diagnostics were saved.
    selection_fingerprint : str or None
        The selection's fingerprint.
    harp_version, finished_at : str
        Provenance.
    extra : dict
        Fields this version does not know (kept when a row is read and written).
    """

    key: str
    suite: str
    suite_fingerprint: str
    kind: str
    method: str
    budget: str | None = None
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    n_pool: int = 0
    n_selected: int = 0
    data_fraction: float = 0.0
    harmful_fraction: float | None = None
    domains: list[str] = field(default_factory=list)
    score: dict[str, dict[str, Any]] = field(default_factory=dict)
    score_average: dict[str, Any] = field(default_factory=dict)
    score_name: str = ""
    primary_metric: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    metric_average: dict[str, Any] = field(default_factory=dict)
    select_seconds: float = 0.0
    train_eval_calls: int = 0
    gradient_passes: int = 0
    rows_scored: int = 0
    device: str = "cpu"
    peak_rss_mb: float | None = None
    rss_before_mb: float | None = None
    train_eval_seconds: float = 0.0
    budget_rows: int | None = None
    selection_file: str | None = None
    diagnostics_file: str | None = None
    selection_fingerprint: str | None = None
    harp_version: str = ""
    finished_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the line written to ``results.jsonl``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        extra = out.pop("extra")
        return jsonable({**extra, **out})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRow:
        """Read a row written by :meth:`to_dict` (unknown fields go to ``extra``).

        Raises
        ------
        ValueError
            When a field the row cannot do without (key, kind, method) is missing.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("key", "kind", "method") if k not in data]
        if missing:
            raise ValueError(f"a bench row needs {', '.join(missing)}")
        known = {k: v for k, v in data.items() if k in names}
        known.setdefault("suite", "")
        known.setdefault("suite_fingerprint", "")
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    @property
    def label(self) -> str:
        """How tables name the row: ``"dsir @ 10%"``, or the reference's name."""
        return (
            self.method if self.kind != "method" else f"{self.method} @ {self.budget}"
        )

    @property
    def average(self) -> float:
        """The mean of ``score_average`` (NaN when missing)."""
        value = self.score_average.get("mean")
        return math.nan if value is None else float(value)


def read_results(path: str | Path) -> list[BenchRow]:
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
            row: BenchRow | None = BenchRow.from_dict(json.loads(line))
        except (ValueError, TypeError, AttributeError):
            row = None
        if row is None:
            if i == last:
                log.warning(
                    "%s: the last line is torn (an interrupted write?); ignored",
                    path,
                )
            else:
                log.warning("%s:%d: not a bench row; ignored", path, i + 1)
            continue
        rows.append(row)
    return rows


def repair_tail(path: Path) -> None:
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


def append_row(path: Path, row: BenchRow) -> None:
    """Append one complete row (line, flush, fsync)."""
    line = json.dumps(row.to_dict(), sort_keys=True, allow_nan=False)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
