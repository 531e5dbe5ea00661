"""The papers' claims checked on bench rows: pairing by seed, standard errors,
the best baseline, HARP's rows condition, SPICE's comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harp.bench.claims import (
    CONTRADICTED,
    HARP_CLAIM,
    INCONCLUSIVE,
    SPICE_CLAIMS,
    SUPPORTED,
    check_claims,
    claims_markdown,
)
from harp.bench.rows import BenchRow


def _row(method, seed, mean, *, rows=100, stderr=0.01, budget="10%", acc=None):
    kind = "reference" if method == "full data" else "method"
    return BenchRow(
        key=f"{method}-{budget}-{seed}",
        suite="s",
        suite_fingerprint="f",
        kind=kind,
        method=method,
        budget="100%" if kind == "reference" else budget,
        seed=seed,
        n_pool=2000,
        n_selected=rows,
        score_average={"mean": mean, "stderr": stderr, "n": 750},
        metric_average=(
            {} if acc is None else {"option_accuracy": {"mean": acc, "stderr": 0.02}}
        ),
    )


def _only(checks, method, against):
    (found,) = [c for c in checks if (c.method, c.against) == (method, against)]
    return found


def test_three_seeds_give_a_standard_error_over_the_paired_differences():
    harp = [0.50, 0.62, 0.55]
    best = [0.40, 0.45, 0.50]
    rows = [_row("harp-e", s, m, rows=10) for s, m in enumerate(harp)]
    rows += [_row("dsir", s, m) for s, m in enumerate(best)]
    rows += [_row("random", s, 0.3) for s in range(3)]
    check = _only(check_claims(rows), "harp-e @ 10%", "dsir @ 10%")
    diffs = np.subtract(harp, best)
    assert check.claim == HARP_CLAIM and check.seeds == 3
    assert check.stderr_over == "seeds"
    assert check.difference == pytest.approx(diffs.mean())
    assert check.stderr == pytest.approx(diffs.std(ddof=1) / math.sqrt(3))
    # +0.107 ± 0.036: 2.9 standard errors, at 10 of 100 rows (1/10 <= 1/7).
    assert check.verdict == SUPPORTED and "rows 0.10 of its rows: met" in check.why
    assert (check.rows, check.rows_against) == (10, 100)


def test_fewer_seeds_take_the_item_level_errors_and_unshared_seeds_are_left_out():
    rows = [_row("harp-c", 0, 0.50, rows=10), _row("harp-c", 5, 0.9, rows=10)]
    rows += [_row("random", 0, 0.47, stderr=0.02), _row("random", 1, 0.0)]
    check = _only(check_claims(rows), "harp-c @ 10%", "random @ 10%")
    assert (check.seeds, check.stderr_over) == (1, "items")
    assert check.difference == pytest.approx(0.03)
    assert check.stderr == pytest.approx(math.hypot(0.01, 0.02))
    assert check.verdict == INCONCLUSIVE  # 1.3 standard errors


def test_harp_is_compared_with_the_best_other_method_at_its_budget():
    rows = [_row("harp-e", 0, 0.30, rows=5, budget="5%")]
    rows += [_row("random", 0, 0.35, budget="5%"), _row("spice", 0, 0.50, budget="5%")]
    rows += [_row("less", 0, 0.90, budget="10%")]  # another budget: not a rival
    (check,) = [c for c in check_claims(rows) if c.claim == HARP_CLAIM]
    assert check.against == "spice @ 5%"
    assert check.verdict == CONTRADICTED and "score -14.1 standard errors" in check.why


def test_more_rows_than_the_claim_allows_contradicts_it_whatever_the_score():
    rows = [_row("harp-e", 0, 0.9, rows=20), _row("random", 0, 0.1, rows=100)]
    (check,) = check_claims(rows)
    assert check.verdict == CONTRADICTED
    assert "supported; rows 0.20 of its rows: not met" in check.why


def test_spice_against_full_data_less_and_random_with_the_accuracy():
    rows = [_row("spice", s, 0.50, acc=0.60) for s in (0, 1)]
    rows += [_row("full data", s, 0.40, acc=0.55, rows=2000) for s in (0, 1)]
    rows += [_row("less", s, 0.50, acc=0.60) for s in (0, 1)]
    rows += [_row("random", 1, 0.60, acc=0.50)]
    checks = check_claims(rows)
    assert [c.claim for c in checks] == list(SPICE_CLAIMS.values())
    full = _only(checks, "spice @ 10%", "full data")
    assert full.verdict == SUPPORTED and full.seeds == 2
    assert full.accuracy_difference == pytest.approx(0.05)
    assert full.stderr == pytest.approx(math.sqrt(4 * 0.01**2) / 2)
    assert _only(checks, "spice @ 10%", "less @ 10%").verdict == INCONCLUSIVE
    random = _only(checks, "spice @ 10%", "random @ 10%")
    assert random.verdict == CONTRADICTED and random.seeds == 1
    md = claims_markdown(checks, "option_logprob")
    assert md.startswith("## The papers' claims")
    assert "| SPICE ≥ full data | spice @ 10% | full data | +0.100 ± 0.010" in md
    assert "accuracy difference (points)" in md and "| +5.0 |" in md


def test_no_claim_to_check_without_the_methods():
    assert check_claims([_row("random", 0, 0.4), _row("full data", 0, 0.5)]) == []
    assert claims_markdown([], "exact_match") == ""


def test_a_method_without_a_score_is_never_the_best_baseline():
    rows = [_row("harp-e", 0, 0.5, rows=5), _row("random", 0, 0.4)]
    rows += [_row("dsir", 0, float("nan"))]
    (check,) = check_claims(rows)
    assert check.against == "random @ 10%"


def test_two_seeds_take_the_larger_of_the_seed_and_item_errors():
    # Seeds that disagree more than the items allow: their spread is the error.
    rows = [_row("harp-e", 0, 0.60, rows=5), _row("harp-e", 1, 0.40, rows=5)]
    rows += [_row("random", s, 0.40) for s in (0, 1)]
    (check,) = check_claims(rows)
    assert (check.stderr_over, check.stderr) == ("seeds", pytest.approx(0.1))
    assert check.verdict == INCONCLUSIVE
    # Seeds that agree: the items' error, which the seeds cannot undercut.
    rows = [_row("harp-e", s, 0.45, rows=5) for s in (0, 1)]
    rows += [_row("random", s, 0.40) for s in (0, 1)]
    (check,) = check_claims(rows)
    assert (check.stderr_over, check.stderr) == ("items", pytest.approx(0.01))
