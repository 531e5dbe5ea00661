"""TrainConfig / EvalConfig validation and the prompt template."""

from __future__ import annotations

import pytest

from harp.core.errors import ParameterError
from harp.training import EvalConfig, TrainConfig, format_example, format_prompt


def test_prompt_template():
    assert format_prompt("2+2=") == "2+2=\n### Response:\n"
    assert format_example("2+2=", "4", "</s>") == "2+2=\n### Response:\n4</s>"


def test_train_defaults_valid_and_round_trip():
    config = TrainConfig()
    assert config.method == "lora" and config.lora_r == 16
    assert TrainConfig(**config.to_dict()) == config


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("method", "qlora", "one of lora, full"),
        ("steps", 0, "integer >= 1"),
        ("batch_size", 2.5, "integer >= 1"),
        ("lr", 0.0, "(0.0, inf)"),
        ("lr", float("nan"), "finite number"),
        ("lr", float("inf"), "finite number"),
        ("epochs", float("inf"), "finite number"),
        ("lora_dropout", 1.0, "[0.0, 1.0)"),
        ("warmup_ratio", -0.1, "[0.0, 1.0)"),
        ("schedule", "step", "one of cosine, linear, constant"),
        ("max_length", 1, "integer >= 2"),
        ("seed", -1, "integer >= 0"),
        ("epochs", 0, "or None"),
        ("lora_target_modules", [], "module names"),
    ],
)
def test_train_config_errors_name_field_and_allowed(field, value, allowed):
    with pytest.raises(ParameterError) as info:
        TrainConfig(**{field: value})
    assert str(info.value).startswith(f"{field}={value!r} is not allowed")
    assert allowed in str(info.value)


def test_total_steps_from_epochs():
    assert TrainConfig(steps=7).total_steps(1000) == 7
    assert TrainConfig(epochs=2, batch_size=16).total_steps(40) == 5
    assert TrainConfig(epochs=0.01, batch_size=16).total_steps(10) == 1
    assert TrainConfig(lora_target_modules="q_proj").lora_target_modules == ("q_proj",)


def test_eval_config():
    assert EvalConfig().metrics is None  # the target's own, fixed by for_target
    assert EvalConfig(metrics="loss").metrics == ("loss",)
    assert EvalConfig(**EvalConfig().to_dict()) == EvalConfig()
    named = EvalConfig(metrics=("loss", "exact_match"), batch_size=3)
    assert EvalConfig(**named.to_dict()) == named
    with pytest.raises(ParameterError, match="metrics='bleu' is not allowed"):
        EvalConfig(metrics=("bleu",))
    with pytest.raises(ParameterError, match="repeats"):
        EvalConfig(metrics=("loss", "loss"))
    with pytest.raises(ParameterError, match="max_new_tokens=0"):
        EvalConfig(max_new_tokens=0)
    with pytest.raises(ParameterError, match="bootstrap"):
        EvalConfig(bootstrap=-5)


def test_unnamed_metrics_are_the_targets_own():
    """A multiple-choice target is scored by its options, any other by exact match
    and loss; named metrics are kept whatever the target."""
    from harp.core.records import Example, ExampleSet
    from harp.training.config import DEFAULT_METRICS, OPTION_METRICS

    choice = Example(id="a", prompt="p", response="yes", options=("yes", "no"), gold=0)
    free = Example(id="b", prompt="q", response="r")
    config = EvalConfig(batch_size=5)
    for rows, want in [
        ((choice,), OPTION_METRICS),
        ((choice, free), DEFAULT_METRICS),  # not every row has options
        ((free,), DEFAULT_METRICS),
    ]:
        fixed = config.for_target(ExampleSet(examples=rows))
        assert fixed.metrics == want and fixed.batch_size == 5
    assert config.metrics is None  # for_target returns a copy
    with pytest.raises(ValueError, match="for_target"):
        config.fixed_metrics  # scoring code never reads unfixed metrics
    named = EvalConfig(metrics=("loss",))
    assert named.for_target(ExampleSet(examples=(choice,))) is named
