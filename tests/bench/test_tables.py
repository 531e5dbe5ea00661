"""The rich tables the CLI prints: the user's names print as written."""

from __future__ import annotations

from rich.console import Console

from harp.bench.tables import eval_table


def test_a_domain_name_with_square_brackets_prints_verbatim():
    score = {"loss": {"mean": 1.25, "stderr": 0.5}}
    result = {"base": {"scores": {"qa[en]": score}}, "tuned": None}
    console = Console(record=True, width=120)
    console.print(eval_table(result))
    text = console.export_text()
    assert "qa[en]" in text and "1.250 ± 0.500" in text
