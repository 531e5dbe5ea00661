"""``harp report``: tables and plots of a ``harp bench`` output folder.

Reads ``results.jsonl`` (and the selectors' ``diagnostics/*.json``) and writes
``report.md``, a self-contained ``report.html`` (plots embedded as base64 PNGs) and
the PNGs under ``plots/``:

1. the main table: one line per method @ budget (mean ± stderr over seeds; the
   item-level stderr of a single seed), columns per target domain, their average,
   the data fraction, the harmful share when known, and the selection cost;
   references (base, full data, …) on top;
2. the papers' claims (:mod:`harp.bench.claims`), where the rows can check them;
3. ``score_vs_fraction.png``: score against data fraction, one line per method;
4. ``cost_vs_score.png``: selection wall seconds (log) and train-evaluate calls
   against score;
5. ``harp_posterior_*.png``: HARP's posterior over the hierarchy (one per HARP run);
6. ``gain_decay.png``: greedy gain per pick (log y) of SPICE / Fisher / DPP runs.

matplotlib is imported only here, with the Agg backend (``pip install
'harp-select[report]'``).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from harp.bench.claims import (
    check_claims,
    claims_caption,
    claims_markdown,
    claims_table,
)
from harp.bench.rows import RESULTS_FILE, BenchRow, read_results
from harp.core.errors import HarpError
from harp.core.io import atomic_open, atomic_write_text
from harp.selectors.diagnostics import (
    HARPDiagnostics,
    LogDetDiagnostics,
    diagnostics_from_dict,
)
from harp.training.config import METRIC_SPECS

__all__ = ["aggregate", "markdown_table", "write_report"]

log = logging.getLogger(__name__)


# -- aggregation ---------------------------------------------------------------------
def _mean_se(
    values: list[float | None], fallback_se: list[float | None]
) -> tuple[float, float, int]:
    """Mean over seeds and its stderr (the item-level stderr for a single seed)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return (math.nan, math.nan, 0)
    mean = float(np.mean(vals))
    if len(vals) > 1:
        se = float(np.std(vals, ddof=1) / math.sqrt(len(vals)))
    else:
        se = fallback_se[0] if fallback_se and fallback_se[0] is not None else math.nan
    return (mean, se, len(vals))


def _num(rows: list[BenchRow], key: str) -> float:
    vals = [getattr(r, key) for r in rows if getattr(r, key) is not None]
    return float(np.mean(vals)) if vals else math.nan


def aggregate(rows: list[BenchRow]) -> list[dict[str, Any]]:
    """One entry per (kind, method, budget): means ± stderr over seeds.

    Returns
    -------
    list of dict
        In table order (base, references, then methods by data fraction and first
        appearance): ``label``, ``kind``, ``method``, ``budget``, ``seeds``,
        ``score`` (``{domain: (mean, stderr, n)}``), ``average`` (mean, stderr, n),
        ``data_fraction``, ``n_selected``, ``harmful_fraction``, ``select_seconds``,
        ``train_eval_calls``, ``gradient_passes``, ``peak_rss_mb``, ``loss``,
        ``accuracy`` (the option accuracy, where the suite computes it).
    """
    groups: OrderedDict[tuple[str, str, str | None], list[BenchRow]] = OrderedDict()
    for row in rows:
        groups.setdefault((row.kind, row.method, row.budget), []).append(row)
    out = []
    for (kind, method, budget), members in groups.items():
        domains = members[0].domains
        score = {
            d: _mean_se(
                [(r.score.get(d) or {}).get("mean") for r in members],
                [(r.score.get(d) or {}).get("stderr") for r in members],
            )
            for d in domains
        }
        average = _mean_se(
            [r.score_average.get("mean") for r in members],
            [r.score_average.get("stderr") for r in members],
        )
        losses = [
            ((r.metric_average or {}).get("loss") or {}).get("mean") for r in members
        ]
        accuracies = [
            ((r.metric_average or {}).get("option_accuracy") or {}).get("mean")
            for r in members
        ]
        harmful = [r.harmful_fraction for r in members]
        peaks = [r.peak_rss_mb for r in members if r.peak_rss_mb]
        out.append(
            {
                "label": members[0].label,
                "kind": kind,
                "method": method,
                "budget": budget,
                "seeds": sorted(r.seed for r in members if r.seed is not None),
                "domains": domains,
                "score": score,
                "average": average,
                "data_fraction": _num(members, "data_fraction"),
                "n_selected": _num(members, "n_selected"),
                "harmful_fraction": (
                    None
                    if all(h is None for h in harmful)
                    else float(np.mean([h for h in harmful if h is not None]))
                ),
                "select_seconds": _num(members, "select_seconds"),
                "train_eval_calls": _num(members, "train_eval_calls"),
                "gradient_passes": _num(members, "gradient_passes"),
                "peak_rss_mb": max(peaks) if peaks else None,
                "loss": _mean_se(losses, [None]),
                "accuracy": _mean_se(accuracies, [None]),
            }
        )
    order = {"base": 0, "reference": 1, "method": 2}
    first = {e["method"]: i for i, e in reversed(list(enumerate(out)))}
    return sorted(
        out,
        key=lambda e: (
            order.get(e["kind"], 3),
            0 if e["kind"] != "method" else e["data_fraction"],
            first[e["method"]] if e["kind"] == "method" else 0,
        ),
    )


# -- tables --------------------------------------------------------------------------
def _fmt(est: tuple, pct: bool) -> str:
    mean, se, _ = est
    if mean is None or not math.isfinite(mean):
        return "-"
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    text = f"{scale * mean:.{digits}f}"
    if se is not None and math.isfinite(se):
        text += f" ± {scale * se:.{digits}f}"
    return text


def _cost(value: float, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def markdown_table(entries: list[dict[str, Any]], primary: str) -> str:
    """The main table as Markdown (see :func:`aggregate` for ``entries``)."""
    header, lines = _table(entries, primary)
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def _percent(primary: str) -> bool:
    """Whether the primary metric is a share, shown in %."""
    return METRIC_SPECS[primary].bounded if primary in METRIC_SPECS else True


def _table(entries, primary: str) -> tuple[list[str], list[list[str]]]:
    pct = _percent(primary)
    domains = entries[0]["domains"] if entries else []
    harm = any(e["harmful_fraction"] is not None for e in entries)
    # The option log-probability's table also shows the accuracy it stands for.
    acc = primary == "option_logprob" and any(
        e["accuracy"][0] is not None and math.isfinite(e["accuracy"][0])
        for e in entries
    )
    header = ["method", "rows", "data %"]
    header += ["harm %"] if harm else []
    header += list(domains) + ["avg"]
    header += ["avg acc %"] if acc else []
    header += ["avg loss"] if primary == "loss" else []
    header += ["seeds", "sel s", "calls", "peak MB"]
    lines = []
    for e in entries:
        label = e["label"] if e["kind"] == "method" else f"({e['label']})"
        line = [
            label,
            _cost(e["n_selected"], 0),
            _cost(100 * e["data_fraction"], 1),
        ]
        if harm:
            h = e["harmful_fraction"]
            line.append("-" if h is None else f"{100 * h:.1f}")
        line += [_fmt(e["score"][d], pct) for d in domains]
        line.append(_fmt(e["average"], pct))
        if acc:
            line.append(_fmt(e["accuracy"], True))
        if primary == "loss":
            line.append(_fmt(e["loss"], False))
        line += [
            str(len(e["seeds"])) if e["seeds"] else "-",
            _cost(e["select_seconds"], 2) if e["kind"] == "method" else "-",
            _cost(e["train_eval_calls"], 0) if e["kind"] == "method" else "-",
            _cost(e["peak_rss_mb"], 0) if e["peak_rss_mb"] else "-",
        ]
        lines.append(line)
    return header, lines


def _caption(primary: str, score_name: str, harm: bool) -> str:
    if primary == "exact_match":
        what = "Exact match in % per target domain (higher is better)"
    elif primary == "option_accuracy":
        what = "Option accuracy in % per target domain (higher is better)"
    elif primary == "option_logprob":
        what = (
            "Score = the gold option's log-probability among the options (nats, "
            "at most 0; higher is better) per target domain; avg acc % = the "
            "option accuracy"
        )
    else:
        what = (
            f"Score = {score_name}: base-model loss minus finetuned loss, per target "
            "domain (higher is better; the base row is 0 by definition)"
        )
    return (
        f"{what}; avg = macro average over domains. Mean ± standard error over seeds "
        "(with one seed: the standard error over target items). References in "
        "brackets; data % = selected rows / pool rows; "
        + ("harm % = known-harmful share of the selection; " if harm else "")
        + "sel s = selection wall seconds; calls = train-evaluate calls spent by "
        "the selector; peak MB = peak resident memory while selecting."
    )


# -- plots ---------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise HarpError(
            "harp report draws its plots with matplotlib, which is not installed; "
            "run: pip install 'harp-select[report]'"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, dpi=110, bbox_inches="tight", format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _plot_score_vs_fraction(plt, entries, ylabel: str, pct: bool, path: Path):
    scale = 100.0 if pct else 1.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for e in entries:
        if e["kind"] == "method":
            methods.setdefault(e["method"], []).append(e)
    for method, group in methods.items():
        group = sorted(group, key=lambda e: e["data_fraction"])
        x = [100 * e["data_fraction"] for e in group]
        y = [scale * e["average"][0] for e in group]
        se = [
            scale * (e["average"][1] if math.isfinite(e["average"][1]) else 0)
            for e in group
        ]
        ax.errorbar(x, y, yerr=se, marker="o", capsize=3, label=method)
    styles = iter(["--", ":", "-."] * 3)
    for e in entries:
        if e["kind"] in ("base", "reference"):
            y = scale * e["average"][0]
            ax.axhline(
                y,
                color="grey",
                linestyle=next(styles),
                linewidth=1,
                label=f"({e['label']})",
            )
            if e["kind"] == "reference":
                ax.plot([100 * e["data_fraction"]], [y], marker="s", color="grey")
    ax.set_xlabel("data fraction (% of the pool)")
    ax.set_ylabel(ylabel)
    ax.set_title("score vs data fraction (mean ± stderr)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _plot_cost(plt, entries, ylabel: str, pct: bool, path: Path):
    scale = 100.0 if pct else 1.0
    methods = [e for e in entries if e["kind"] == "method"]
    names = list(OrderedDict((e["method"], None) for e in methods))
    colors = {m: f"C{i % 10}" for i, m in enumerate(names)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for ax, key, xlabel in (
        (axes[0], "select_seconds", "selection wall seconds (log)"),
        (axes[1], "train_eval_calls", "train-evaluate calls"),
    ):
        for e in methods:
            x = e[key]
            if x is None or not math.isfinite(x):
                continue
            if key == "select_seconds":
                x = max(x, 1e-4)
            y = scale * e["average"][0]
            se = e["average"][1]
            ax.errorbar(
                [x],
                [y],
                yerr=[scale * se if math.isfinite(se) else 0],
                marker="o",
                capsize=3,
                color=colors[e["method"]],
            )
            ax.annotate(
                e["label"],
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        if key == "select_seconds":
            ax.set_xscale("log")
        else:
            top = max((e[key] for e in methods if math.isfinite(e[key])), default=0)
            if top > 10:
                ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(-0.5, max(1.5, 1.5 * top + 0.5))
            from matplotlib.ticker import MaxNLocator, ScalarFormatter

            ax.xaxis.set_major_formatter(ScalarFormatter())
            if top <= 10:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    base = next((e for e in entries if e["kind"] == "base"), None)
    if base is not None:
        for ax in axes:
            ax.axhline(
                scale * base["average"][0],
                color="grey",
                linestyle="--",
                linewidth=1,
                label="(base)",
            )
        axes[0].legend(fontsize=8)
    axes[0].set_ylabel(ylabel)
    fig.suptitle("selection cost vs score")
    return _save(fig, path)


def _plot_harp(plt: Any, diag: HARPDiagnostics, title: str, path: Path) -> Any:
    domains = list(diag.domains)
    leaves = sorted(diag.leaves, key=lambda lf: (str(lf.parent), str(lf.leaf)))
    if not leaves or not domains:
        return None
    n = len(domains)
    fig, axes = plt.subplots(
        n,
        1,
        figsize=(max(7, 0.18 * len(leaves) + 3), 2.6 * n),
        sharex=True,
        squeeze=False,
    )
    x = np.arange(len(leaves))
    parents = [lf.parent for lf in leaves]
    bounds = [i for i in range(1, len(leaves)) if parents[i] != parents[i - 1]]
    measured = np.array([lf.measured for lf in leaves])
    chosen = np.array([lf.chosen for lf in leaves])
    for j, (ax, domain) in enumerate(zip(axes[:, 0], domains)):
        mean = np.array([_at(lf.mean, j) for lf in leaves], dtype=float)
        sd = np.array([_at(lf.sd, j) for lf in leaves], dtype=float)
        for i in np.flatnonzero(chosen):
            ax.axvspan(i - 0.45, i + 0.45, color="gold", alpha=0.35, linewidth=0)
        for mask, marker, label, face in (
            (measured, "o", "measured", None),
            (~measured, "o", "inferred", "none"),
        ):
            if mask.any():
                ax.errorbar(
                    x[mask],
                    mean[mask],
                    yerr=np.nan_to_num(sd[mask]),
                    fmt=marker,
                    markersize=4,
                    capsize=2,
                    linewidth=0.8,
                    markerfacecolor=face,
                    label=label,
                    color="tab:blue" if face is None else "tab:gray",
                )
        for b in bounds:
            ax.axvline(b - 0.5, color="black", linewidth=0.5, alpha=0.4)
        ax.axhline(0, color="red", linewidth=0.7, linestyle="--")
        ax.set_ylabel(f"{domain}\neffect")
        ax.grid(alpha=0.2, axis="y")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if chosen.any():
        from matplotlib.patches import Patch

        handles.append(Patch(color="gold", alpha=0.35))
        labels.append("chosen")
    axes[0, 0].legend(handles, labels, fontsize=7, loc="upper right", ncol=3)
    axes[-1, 0].set_xticks(x)
    axes[-1, 0].set_xticklabels(
        [str(lf.leaf) for lf in leaves], rotation=90, fontsize=6
    )
    axes[-1, 0].set_xlabel(
        "leaves, grouped by parent (vertical lines separate parents)"
    )
    fig.suptitle(f"HARP posterior effect per leaf (mean ± sd): {title}")
    return _save(fig, path)


def _at(values: Any, j: int) -> float:
    try:
        v = values[j]
    except (TypeError, IndexError, KeyError):
        return math.nan
    return math.nan if v is None else float(v)


def _plot_gains(plt: Any, runs: list[tuple[str, LogDetDiagnostics]], path: Path) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for label, diag in runs:
        gains = np.array(diag.gains, dtype=float)
        keep = np.isfinite(gains) & (gains > 0)
        if not keep.any():
            continue
        ax.plot(np.flatnonzero(keep) + 1, gains[keep], label=label, linewidth=1.2)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("pick index")
    ax.set_ylabel("marginal gain (log)")
    ax.set_title("greedy gain decay (log-det selectors)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


# -- the report ----------------------------------------------------------------------
def _latest_suite(rows: list[BenchRow], path: Path) -> list[BenchRow]:
    fps = OrderedDict((r.suite_fingerprint, None) for r in rows)
    if len(fps) <= 1:
        return rows
    latest = rows[-1].suite_fingerprint
    kept = [r for r in rows if r.suite_fingerprint == latest]
    log.warning(
        "%s holds rows of %d suite settings; reporting the latest (%d of %d rows)",
        path,
        len(fps),
        len(kept),
        len(rows),
    )
    return kept


def _html_table(header: list[str], lines: list[list[str]]) -> str:
    esc = html.escape
    table = ["<table>", "<thead><tr>"]
    table += [f"<th>{esc(h)}</th>" for h in header]
    table += ["</tr></thead>", "<tbody>"]
    for line in lines:
        table.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in line) + "</tr>")
    table += ["</tbody>", "</table>"]
    return "\n".join(table)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_report(directory: str | Path) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` for a bench folder.

    Parameters
    ----------
    directory : str or Path
        A ``harp bench`` output folder (holding ``results.jsonl``).

    Returns
    -------
    dict
        ``markdown``, ``html`` (paths), ``plots`` (list of paths), ``entries``
        (:func:`aggregate` output) and ``rows`` (the rows reported).

    Raises
    ------
    harp.core.errors.HarpError
        When the folder or its results are missing or empty, or matplotlib is not
        installed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise HarpError(
            f"{directory}: no such folder; give a 'harp bench' --out folder"
        )
    results = directory / RESULTS_FILE
    if not results.exists():
        raise HarpError(
            f"{directory}: no {RESULTS_FILE} here; run 'harp bench --out {directory}' "
            "first"
        )
    rows = read_results(results)
    if not rows:
        raise HarpError(f"{results}: holds no result rows")
    try:
        rows = _latest_suite(rows, results)
        entries = aggregate(rows)
    except (KeyError, TypeError, AttributeError) as exc:
        raise HarpError(f"{results}: not a harp bench results file ({exc!r})") from None
    plt = _pyplot()
    primary = rows[-1].primary_metric or "exact_match"
    score_name = rows[-1].score_name or primary
    pct = _percent(primary)
    ylabel = f"avg {score_name} (%)" if pct else f"avg {score_name}"
    plots_dir = directory / "plots"
    plots: list[tuple[str, Path]] = []
    plots.append(
        (
            "Score vs data fraction",
            _plot_score_vs_fraction(
                plt, entries, ylabel, pct, plots_dir / "score_vs_fraction.png"
            ),
        )
    )
    if any(e["kind"] == "method" for e in entries):
        plots.append(
            (
                "Selection cost vs score",
                _plot_cost(plt, entries, ylabel, pct, plots_dir / "cost_vs_score.png"),
            )
        )
    logdet_runs = []
    for row in rows:
        rel = row.diagnostics_file
        if not rel:
            continue
        try:
            data = json.loads((directory / rel).read_text(encoding="utf-8"))
            diag = diagnostics_from_dict(data, where=rel)
        except (OSError, ValueError, HarpError) as exc:
            log.warning("%s: unreadable diagnostics (%s); skipped", rel, exc)
            continue
        label = f"{row.method} @ {row.budget}, seed {row.seed}"
        if isinstance(diag, HARPDiagnostics):
            name = _safe(f"harp_posterior_{row.method}_{row.budget}_s{row.seed}")
            png = _plot_harp(plt, diag, label, plots_dir / f"{name}.png")
            if png is not None:
                plots.append((f"HARP posterior over the hierarchy: {label}", png))
        elif isinstance(diag, LogDetDiagnostics):
            logdet_runs.append((label, diag))
    if logdet_runs:
        png = _plot_gains(plt, logdet_runs, plots_dir / "gain_decay.png")
        if png is not None:
            plots.append(("Greedy gain decay", png))

    suite = rows[-1].suite or "?"
    header, lines = _table(entries, primary)
    caption = _caption(primary, score_name, "harm %" in header)
    n_pool = rows[-1].n_pool
    intro = (
        f"Suite **{suite}** (pool {n_pool} rows; target domains "
        f"{', '.join(entries[0]['domains']) if entries else '-'}); "
        f"{len(rows)} result rows from `{RESULTS_FILE}`."
    )
    md = [f"# harp bench report — {suite}", "", intro, "", caption, ""]
    md.append(markdown_table(entries, primary))
    # HARP's and SPICE's headline claims, where the rows can check them.
    checks = check_claims(rows)
    if checks:
        md.append(claims_markdown(checks, primary))
    for title, png in plots:
        md += [f"## {title}", "", f"![{title}](plots/{png.name})", ""]
    md_path = directory / "report.md"
    atomic_write_text(md_path, "\n".join(md))

    esc = html.escape
    body = [
        f"<h1>harp bench report — {esc(str(suite))}</h1>",
        f"<p>{esc(intro.replace('**', '').replace('`', ''))}</p>",
        f"<p class='caption'>{esc(caption)}</p>",
        _html_table(header, lines),
    ]
    if checks:
        body += [
            "<h2>The papers' claims</h2>",
            f"<p class='caption'>{esc(claims_caption().replace('*', ''))}</p>",
            _html_table(*claims_table(checks, primary)),
        ]
    for title, png in plots:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        body.append(
            f"<h2>{esc(title)}</h2>\n<img alt='{esc(title)}' "
            f"src='data:image/png;base64,{data}'>"
        )
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>harp bench report — {esc(str(suite))}</title>\n<style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}"
        ".caption{color:#555;font-size:13px}img{max-width:100%}"
        "</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    html_path = directory / "report.html"
    atomic_write_text(html_path, page)
    return {
        "markdown": md_path,
        "html": html_path,
        "plots": [p for _, p in plots],
        "entries": entries,
        "rows": rows,
    }
