"""harp's YAML: exponent floats, no aliases, bounded nesting, one-line errors."""

from __future__ import annotations

import time

import pytest

from harp.core.errors import ParameterError
from harp.core.yamltext import MAX_DEPTH, load_yaml

LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n"
    for i in range(8)
)


@pytest.mark.parametrize(
    "text, value",
    [
        ("2e-4", 2e-4),
        ("1E5", 1e5),
        ("-3e+2", -300.0),
        ("2.0e-4", 2e-4),
        ("0.5", 0.5),
        ("10", 10),
        ("1e", "1e"),
        ("e5", "e5"),
        (".inf", float("inf")),
    ],
)
def test_floats_with_an_exponent_need_no_dot(text, value):
    assert load_yaml(text, source="x") == value


def test_a_billion_laughs_is_refused_at_once_naming_the_line():
    start = time.perf_counter()
    with pytest.raises(ParameterError, match=r"^cfg\.yaml:2: not valid YAML \(aliases"):
        load_yaml(LAUGHS, source="cfg.yaml")
    assert time.perf_counter() - start < 1.0


def test_deep_nesting_is_refused_without_a_recursion_error():
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_yaml(ok, source="x") is not None
    with pytest.raises(ParameterError, match="nested deeper than"):
        load_yaml("[" * 5000 + "]" * 5000, source="x")


def test_syntax_errors_name_the_source_and_line():
    with pytest.raises(ParameterError, match=r"^s\.yaml:3: not valid YAML"):
        load_yaml("a: 1\nb: 2\nc: d: e\n", source="s.yaml")


def test_cli_params_take_mappings_with_exponent_floats():
    from harp.app.cli import _parse_params

    params = _parse_params(["train={epochs: 3, lr: 2e-4}", "encoder=tfidf"])
    assert params == {"train": {"epochs": 3, "lr": 2e-4}, "encoder": "tfidf"}
