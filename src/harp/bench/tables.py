"""Result tables for the terminal (rich) and for Markdown files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from harp.bench.demo import DemoResult

__all__ = ["demo_markdown", "demo_table", "eval_table"]


def _pct(est: dict[str, Any], sep: str = " ± ") -> str:
    mean, se = est.get("mean"), est.get("stderr")
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}{sep}{100 * (se or 0.0):.1f}"


def _mean_pct(est: dict[str, Any]) -> str:
    mean = est.get("mean")
    return "-" if mean is None else f"{100 * mean:.1f}"


def _demo_rows(
    result: DemoResult, *, compact: bool = False
) -> tuple[list[str], list[list[str]]]:
    # The terminal table gives per-domain means only (stderr is in the avg column and
    # in the Markdown file) so that it fits an 80-column terminal.
    domains = result.domains
    cell = _mean_pct if compact else _pct
    avg = (lambda e: _pct(e, "±")) if compact else _pct  # noqa: E731
    header = [
        "method",
        "rows",
        "harm%",
        *domains,
        "avg EM",
        "Δ base",
        "sel s",
        "train s",
    ]
    base = result.base
    lines = [
        [
            "base",
            "0",
            "-",
            *(cell(base.score[d]) for d in domains),
            avg(base.score_average),
            "-",
            "-",
            "-",
        ]
    ]
    for row in [*result.methods, *result.references]:
        name = row.method if row.kind == "method" else f"({row.method})"
        harm = row.harmful_fraction
        lines.append(
            [
                name,
                str(row.n_selected),
                "-" if harm is None else f"{100 * harm:.0f}",
                *(cell(row.score[d]) for d in domains),
                avg(row.score_average),
                f"{100 * (row.average - base.average):+.1f}",
                f"{row.select_seconds:.1f}",
                f"{row.train_eval_seconds:.1f}",
            ]
        )
    return header, lines


def demo_table(result: DemoResult) -> Any:
    """A rich Table of the demo: exact match (%) per domain ± stderr, per method."""
    from rich import box
    from rich.table import Table

    header, lines = _demo_rows(result, compact=True)
    # Δ vs base and training seconds are in the Markdown file; without them the table
    # fits an 80-column terminal.
    keep = [i for i, name in enumerate(header) if name not in ("Δ base", "train s")]
    header = [header[i] for i in keep]
    lines = [[line[i] for i in keep] for line in lines]
    table = Table(
        title="harp demo: exact match % per target domain; references in brackets",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
    )
    for i, name in enumerate(header):
        # Data cells never wrap (a number cut in two is misread); headers may.
        width = max(len(line[i]) for line in lines)
        table.add_column(name, justify="left" if i == 0 else "right", min_width=width)
    for line in lines:
        table.add_row(*line)
    return table


def demo_markdown(result: DemoResult) -> str:
    """The demo table as Markdown, with the run's size and total time."""
    header, lines = _demo_rows(result)
    config = result.config
    skills = config.skills
    out = [
        "# harp demo — synthetic skills suite",
        "",
        f"Pool {skills.get('n_pool')} rows, target domains "
        f"{', '.join(result.domains)} "
        f"({skills.get('n_target_per_domain')} rows each), budget "
        f"{config.budgets[0]}, seed {config.seed}; total {result.seconds:.0f} s.",
        "Exact match in % ± standard error; references (not selections) in brackets.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def _est(e: dict[str, Any]) -> str:
    return f"{e['mean']:.3f} ± {e['stderr']:.3f}"


def eval_table(result: dict[str, Any]) -> Any:
    """A rich Table of ``harp evaluate``: per domain, base and tuned scores."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="target scores per domain (± stderr)")
    for name in ("domain", "metric", "base", "tuned", "Δ"):
        table.add_column(
            name, justify="left" if name in ("domain", "metric") else "right"
        )
    base = result["base"]["scores"]
    tuned = (result.get("tuned") or {}).get("scores", {})
    for domain in sorted(base):
        for metric, est in sorted(base[domain].items()):
            t = tuned.get(domain, {}).get(metric)
            table.add_row(
                escape(domain),  # the user's name: "qa[en]" is not markup
                metric,
                _est(est),
                _est(t) if t else "-",
                f"{t['mean'] - est['mean']:+.3f}" if t else "-",
            )
    return table
