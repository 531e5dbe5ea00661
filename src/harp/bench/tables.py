"""Result tables for the terminal (rich) and for Markdown files."""

from __future__ import annotations

from typing import Any

__all__ = ["demo_markdown", "demo_table", "eval_table"]


def _pct(est: dict[str, Any]) -> str:
    return f"{100 * est['mean']:.1f} ± {100 * est['stderr']:.1f}"


def _demo_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    domains = result["domains"]
    header = ["method", "rows", "harmful %", *domains, "avg EM", "Δ vs base", "select s",
              "train+eval s"]
    base = result["base"]
    lines = [[
        "base model", "0", "-",
        *(_pct(base["exact_match"][d]) for d in domains),
        _pct(base["average_exact_match"]), "-", "-", "-",
    ]]
    for row in [*result["rows"], *result["references"]]:
        name = row["name"] if row["kind"] == "method" else f"({row['name']})"
        lines.append([
            name,
            str(row["n_selected"]),
            f"{100 * row['harmful_fraction']:.0f}",
            *(_pct(row["exact_match"][d]) for d in domains),
            _pct(row["average_exact_match"]),
            f"{100 * row['delta_vs_base']:+.1f}",
            f"{row['select_seconds']:.2f}",
            f"{row['train_eval_seconds']:.1f}",
        ])
    return header, lines


def demo_table(result: dict[str, Any]):
    """A rich Table of the demo: exact match (%) per domain ± stderr, per method."""
    from rich.table import Table

    header, lines = _demo_rows(result)
    table = Table(
        title="harp demo — skills suite, exact match % (± stderr); references in brackets",
        show_lines=False,
    )
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for line in lines:
        table.add_row(*line)
    return table


def demo_markdown(result: dict[str, Any]) -> str:
    """The demo table as Markdown, with the run's size and total time."""
    header, lines = _demo_rows(result)
    out = [
        "# harp demo — synthetic skills suite",
        "",
        f"Pool {result['suite']['n_pool']} rows, target domains "
        f"{', '.join(result['domains'])} ({result['suite']['n_target_per_domain']} rows "
        f"each), budget {result['config']['budget']}, seed {result['config']['seed']}; "
        f"total {result['total_seconds']:.0f} s.",
        "Exact match in % ± standard error; references (not selections) in brackets.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def eval_table(result: dict[str, Any]):
    """A rich Table of ``harp evaluate``: per domain, base and tuned scores."""
    from rich.table import Table

    table = Table(title="target scores per domain (± stderr)")
    for name in ("domain", "metric", "base", "tuned", "Δ"):
        table.add_column(name, justify="left" if name in ("domain", "metric") else "right")
    base = result["base"]["domains"]
    tuned = (result.get("tuned") or {}).get("domains", {})
    for domain in sorted(base):
        for metric, est in sorted(base[domain].items()):
            t = tuned.get(domain, {}).get(metric)
            fmt = (lambda e: f"{e['mean']:.3f} ± {e['stderr']:.3f}")
            table.add_row(
                domain, metric, fmt(est), fmt(t) if t else "-",
                f"{t['mean'] - est['mean']:+.3f}" if t else "-",
            )
    return table
