"""The two papers' headline claims, checked against a bench's rows.

- **HARP** reports selections ~7x smaller than the budget's baselines and up to +8.9
  points over the strongest baseline. Checked at each budget: each HARP variant's
  score against the best other method's at that budget, and its rows against that
  method's rows (at most 1/7 of them).
- **SPICE** reports that 10% of the pool beats full data, random and LESS. Checked
  at each budget: SPICE against the full-data reference, LESS and random.

A comparison is the mean score difference over the seeds both sides ran, with a
standard error: over the seeds' differences when they are 3 or more; with 2, the
larger of that (one degree of freedom) and the one from each row's standard error
over target items; with 1, the items' alone, which leaves the training recipe's own
noise out (the items are the same on both sides, which makes the items' part
conservative). A difference of at least 2 standard errors *supports* a claim of
"at least as good", 2 or more below *contradicts* it, and anything between is
*inconclusive*. Scores are the bench's (higher is better).

Examples
--------
>>> from harp.bench.rows import BenchRow
>>> def row(method, seed, mean, n=100, kind="method", budget="10%"):
...     return BenchRow(key=f"{method}{seed}", suite="s", suite_fingerprint="f",
...                     kind=kind, method=method, budget=budget, seed=seed,
...                     n_selected=n, score_average={"mean": mean, "stderr": 0.01})
>>> rows = [row("random", 0, 0.50), row("harp-e", 0, 0.60, n=10)]
>>> [(c.method, c.against, c.verdict) for c in check_claims(rows)]
[('harp-e @ 10%', 'random @ 10%', 'supported')]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from harp.bench.rows import BenchRow
from harp.bench.suites import FULL_DATA
from harp.training.config import METRIC_SPECS

__all__ = [
    "ClaimCheck",
    "check_claims",
    "claims_caption",
    "claims_lines",
    "claims_markdown",
    "claims_table",
]

SUPPORTED, INCONCLUSIVE, CONTRADICTED = "supported", "inconclusive", "contradicted"
#: How many standard errors make a difference count.
Z = 2.0
#: HARP's selections against the budget's baselines' (the paper's ~7x fewer rows).
HARP_ROWS_RATIO = 1 / 7
HARP_CLAIM = "HARP ≥ the best baseline, at ≤ 1/7 of its rows"
SPICE_CLAIMS = {
    FULL_DATA: "SPICE ≥ full data",
    "less": "SPICE ≥ LESS",
    "random": "SPICE ≥ random",
}


@dataclass(frozen=True)
class ClaimCheck:
    """One comparison behind a claim.

    Attributes
    ----------
    claim : str
        The claim, as the paper makes it.
    method, against : str
        The two sides (``"harp-e @ 10%"``, ``"similarity @ 10%"``, ``"full data"``).
    difference, stderr : float
        Mean score difference (``method - against``) and its standard error.
    seeds : int
        Seeds both sides ran (the difference is paired by seed).
    stderr_over : {"seeds", "items"}
        Where the standard error comes from.
    rows, rows_against : float
        Mean rows each side trained on.
    max_rows_ratio : float or None
        The claim's most rows (as a share of ``rows_against``), if it has one.
    accuracy_difference : float or None
        Mean option-accuracy difference, where the suite computes it.
    verdict : {"supported", "inconclusive", "contradicted"}
        The score part and the rows part together (the weaker one).
    why : str
        What decided the verdict.
    """

    claim: str
    method: str
    against: str
    difference: float
    stderr: float
    seeds: int
    stderr_over: str
    rows: float
    rows_against: float
    max_rows_ratio: float | None
    accuracy_difference: float | None
    verdict: str
    why: str


def _stderr(row: BenchRow) -> float:
    value = row.score_average.get("stderr")
    return math.nan if value is None else float(value)


def _average(rows: Iterable[BenchRow]) -> float:
    """Mean score over seeds (-inf when none is known: never the best)."""
    known = [r.average for r in rows if math.isfinite(r.average)]
    return float(np.mean(known)) if known else -math.inf


def _accuracy(row: BenchRow) -> float | None:
    value = ((row.metric_average or {}).get("option_accuracy") or {}).get("mean")
    return None if value is None else float(value)


def _compare(
    claim: str,
    side: dict[int, BenchRow],
    other: dict[int, BenchRow],
    max_rows_ratio: float | None = None,
) -> ClaimCheck | None:
    """``side`` against ``other`` (rows by seed), paired over their shared seeds."""
    seeds = sorted(set(side) & set(other))
    if not seeds:
        return None
    diffs = np.array([side[s].average - other[s].average for s in seeds])
    over_seeds = (
        float(np.std(diffs, ddof=1) / math.sqrt(len(seeds)))
        if len(seeds) > 1
        else math.nan
    )
    var = sum(_stderr(side[s]) ** 2 + _stderr(other[s]) ** 2 for s in seeds)
    over_items = math.sqrt(var) / len(seeds)
    if len(seeds) >= 3 or (len(seeds) == 2 and not over_items >= over_seeds):
        stderr, over = over_seeds, "seeds"
    else:
        stderr, over = over_items, "items"
    difference = float(diffs.mean())
    if not math.isfinite(difference):
        verdict, why = INCONCLUSIVE, "no score"
    elif stderr > 0 and math.isfinite(stderr):
        z = difference / stderr
        verdict = SUPPORTED if z >= Z else CONTRADICTED if z <= -Z else INCONCLUSIVE
        why = f"score {z:+.1f} standard errors: {verdict}"
    else:  # an exact tie or an unknown error: only the sign can speak
        verdict = (
            INCONCLUSIVE
            if difference == 0 or not math.isfinite(stderr)
            else SUPPORTED
            if difference > 0
            else CONTRADICTED
        )
        why = f"score difference without a standard error: {verdict}"
    rows = float(np.mean([side[s].n_selected for s in seeds]))
    rows_against = float(np.mean([other[s].n_selected for s in seeds]))
    if max_rows_ratio is not None:
        ratio = rows / rows_against if rows_against else math.inf
        met = ratio <= max_rows_ratio
        why += f"; rows {ratio:.2f} of its rows: {'met' if met else 'not met'}"
        if not met:
            verdict = CONTRADICTED
    pairs = [(_accuracy(side[s]), _accuracy(other[s])) for s in seeds]
    gaps = [a - b for a, b in pairs if a is not None and b is not None]
    accuracy = float(np.mean(gaps)) if len(gaps) == len(pairs) else None
    return ClaimCheck(
        claim=claim,
        method=side[seeds[0]].label,
        against=other[seeds[0]].label,
        difference=difference,
        stderr=stderr,
        seeds=len(seeds),
        stderr_over=over,
        rows=rows,
        rows_against=rows_against,
        max_rows_ratio=max_rows_ratio,
        accuracy_difference=accuracy,
        verdict=verdict,
        why=why,
    )


def check_claims(rows: Sequence[BenchRow]) -> list[ClaimCheck]:
    """Check HARP's and SPICE's claims on a bench's rows (those it can check).

    Parameters
    ----------
    rows : sequence of BenchRow
        One suite's rows (``harp.bench.rows.read_results``).

    Returns
    -------
    list of ClaimCheck
        HARP's checks (each variant at each budget, against that budget's best
        other method by mean score), then SPICE's (each budget, against full data,
        LESS and random where they ran). Empty when the rows hold neither method.
    """
    groups: dict[tuple[str, str, str | None], dict[int, BenchRow]] = {}
    for row in rows:
        if row.seed is not None:
            groups.setdefault((row.kind, row.method, row.budget), {})[row.seed] = row
    methods = {k: v for k, v in groups.items() if k[0] == "method"}
    checks: list[ClaimCheck] = []
    budgets = list(dict.fromkeys(budget for _, _, budget in methods))
    for budget in budgets:
        here = {m: v for (_, m, b), v in methods.items() if b == budget}
        baselines = {m: v for m, v in here.items() if not m.startswith("harp")}
        if not baselines:
            continue
        best = max(baselines, key=lambda m: _average(baselines[m].values()))
        for method in (m for m in here if m.startswith("harp")):
            check = _compare(HARP_CLAIM, here[method], baselines[best], HARP_ROWS_RATIO)
            if check is not None:
                checks.append(check)
    full = next(
        (v for (k, m, _), v in groups.items() if (k, m) == ("reference", FULL_DATA)),
        None,
    )
    for budget in budgets:
        spice = methods.get(("method", "spice", budget))
        if spice is None:
            continue
        for name, claim in SPICE_CLAIMS.items():
            other = full if name == FULL_DATA else methods.get(("method", name, budget))
            check = None if other is None else _compare(claim, spice, other)
            if check is not None:
                checks.append(check)
    return checks


def claims_caption() -> str:
    """How to read the claims' table (the verdict rules)."""
    return (
        "Each line pairs the two sides by seed. ± one standard error: over the "
        "seeds with 3 or more; with 2, the larger of that and the target items'; "
        "with 1, the target items' (the training noise is then not in it). "
        f"*supported*: at least {Z:.0f} standard errors better; *contradicted*: "
        f"{Z:.0f} or more worse, or more rows than the claim allows; *inconclusive*: "
        "in between. The best baseline is the other method with the highest mean "
        "score at that budget (picking the best of several noisy methods favours it)."
    )


def claims_table(
    checks: Sequence[ClaimCheck], primary: str
) -> tuple[list[str], list[list[str]]]:
    """The checks as a header and lines of cells (score in the table's unit)."""
    spec = METRIC_SPECS.get(primary)
    pct = spec.bounded if spec is not None else True
    scale, digits, unit = (100.0, 1, " (points)") if pct else (1.0, 3, "")
    accuracy = any(c.accuracy_difference is not None for c in checks)
    header = ["claim", "method", "against", f"score difference{unit}"]
    header += ["accuracy difference (points)"] if accuracy else []
    header += ["rows (method / against)", "verdict"]
    lines = []
    for c in checks:
        diff = f"{scale * c.difference:+.{digits}f} ± {scale * c.stderr:.{digits}f}"
        seeds = f"{c.seeds} seed{'s' if c.seeds > 1 else ''}"
        diff += f" ({seeds}, error over {c.stderr_over})"
        line = [c.claim, c.method, c.against, diff]
        if accuracy:
            acc = c.accuracy_difference
            line.append("-" if acc is None else f"{100 * acc:+.1f}")
        line += [f"{c.rows:.0f} / {c.rows_against:.0f}", f"{c.verdict} ({c.why})"]
        lines.append(line)
    return header, lines


def claims_markdown(checks: Sequence[ClaimCheck], primary: str) -> str:
    """The checks as a Markdown section (empty string when there are none)."""
    if not checks:
        return ""
    header, lines = claims_table(checks, primary)
    out = ["## The papers' claims", "", claims_caption(), ""]
    out += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def claims_lines(checks: Sequence[ClaimCheck], primary: str) -> list[str]:
    """The checks as one plain line each (for a terminal)."""
    header, lines = claims_table(checks, primary)
    out = []
    for cells in lines:
        named = dict(zip(header, cells))
        key = next(k for k in named if k.startswith("score difference"))
        value, _, how = named[key].partition(" (")
        unit = key.removeprefix("score difference").strip(" ()")
        out.append(
            f"{named['claim']}: {named['method']} vs {named['against']}, "
            f"{value}{' ' + unit if unit else ''} ({how}, rows "
            f"{named['rows (method / against)']}: {named['verdict']}"
        )
    return out
