"""The parameter protocol: nested get/set, components by name, constraints."""

from __future__ import annotations

import pytest

from harp.core.errors import ParameterError
from harp.core.params import Interval, Options, Parametrized, validate_params


class Part(Parametrized):
    def __init__(self, *, dim: int = 8, kind: str = "a") -> None:
        self.dim = dim
        self.kind = kind


class Whole(Parametrized):
    _execution_params = ("verbose",)

    def __init__(
        self, *, k: int = 1, part: Part | str | None = None, verbose: bool = False
    ) -> None:
        self.k = k
        self.part = part
        self.verbose = verbose

    def _default_component(self, name, kind=None):
        return Part(kind=kind or "a")


def test_deep_params_list_and_set_a_components_parameters():
    whole = Whole(part=Part(dim=4))
    params = whole.get_params()
    assert params["part__dim"] == 4 and params["part__kind"] == "a"
    assert "part__dim" not in whole.get_params(deep=False)
    whole.set_params(k=3, part__dim=16)
    assert whole.k == 3 and whole.part.dim == 16


def test_a_component_left_to_default_or_named_is_built_when_set():
    whole = Whole()
    whole.set_params(part__dim=2)
    assert isinstance(whole.part, Part) and whole.part.dim == 2
    named = Whole(part="b").set_params(part__dim=5)
    assert named.part.kind == "b" and named.part.dim == 5


def test_unknown_names_are_errors():
    with pytest.raises(ParameterError, match="no parameter 'bogus'"):
        Whole().set_params(bogus=1)
    with pytest.raises(ParameterError, match="no parameter 'bogus'"):
        Whole().set_params(part__bogus=1)


def test_computation_params_leave_execution_out():
    params = Whole(part=Part(), verbose=True).computation_params()
    assert "verbose" not in params
    assert params["part"] == "Part" and params["part__dim"] == 8


def test_validate_params_names_the_parameter_and_what_is_allowed():
    table = {"k": [Interval(int, 1, None)], "mode": [Options("x", "y"), None]}
    validate_params("Whole", {"k": 2, "mode": None}, table)
    with pytest.raises(ParameterError, match=r"Whole: k=0 is not allowed; expected"):
        validate_params("Whole", {"k": 0, "mode": "x"}, table)
    with pytest.raises(ParameterError, match="one of 'x', 'y' or None"):
        validate_params("Whole", {"k": 1, "mode": "z"}, table)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_an_interval_never_accepts_a_non_finite_value(value):
    from harp.core.params import Interval

    assert not Interval(float, 0.0, None).accepts(value)
    assert not Interval(float, None, None).accepts(value)
