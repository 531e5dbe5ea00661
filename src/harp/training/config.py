"""The configuration of finetuning and evaluation runs.

This module imports neither torch nor transformers, so configs can be built, checked
and hashed cheaply (CLI parsing, cache keys).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

from harp.core.errors import HarpError, ParameterError
from harp.nn.loop import LR_SCHEDULES

if TYPE_CHECKING:  # pragma: no cover
    from harp.core.records import ExampleSet

__all__ = [
    "TrainConfig",
    "EvalConfig",
    "TRAIN_METHODS",
    "LR_SCHEDULES",
    "EVAL_METRICS",
    "DEFAULT_METRICS",
    "OPTION_METRICS",
    "default_metrics",
    "METRIC_SPECS",
    "MetricSpec",
    "config_from_mapping",
]

#: Allowed values of :attr:`TrainConfig.method`.
TRAIN_METHODS = ("lora", "full")


@dataclass(frozen=True)
class MetricSpec:
    """What a per-domain metric means to whoever compares two scores.

    Attributes
    ----------
    higher_is_better : bool
        The direction of improvement (a loss is lower-is-better).
    bounded : bool
        Whether a score lives in [0, 1] (HARP's envelopes clip bounded scores).
    label : str
        How a table names it.
    """

    higher_is_better: bool
    bounded: bool
    label: str


#: Every metric :func:`~harp.training.evaluate.evaluate` computes.
METRIC_SPECS: dict[str, MetricSpec] = {
    "exact_match": MetricSpec(True, True, "exact match"),
    "loss": MetricSpec(False, False, "response loss (nats/token)"),
    "option_accuracy": MetricSpec(True, True, "option accuracy"),
    "option_logprob": MetricSpec(True, False, "gold option log-probability (nats)"),
}
#: Allowed entries of :attr:`EvalConfig.metrics`.
EVAL_METRICS = tuple(METRIC_SPECS)
#: What :class:`EvalConfig` computes when not told, on a target of free-form answers.
DEFAULT_METRICS = ("exact_match", "loss")
#: What it computes when not told, on a multiple-choice target.
OPTION_METRICS = ("option_logprob", "option_accuracy")


def default_metrics(target: ExampleSet) -> tuple[str, ...]:
    """The metrics a target is scored by when none are named.

    A target whose every row is multiple-choice (carries options and the right
    one) is scored by its options: the gold option's log-probability among them,
    then accuracy. Its response loss would measure the answers' format rather than
    their correctness (a finetune on wrong answers lowers it too), and generation
    is slower and noisier. Any other target: exact match, then loss.

    Parameters
    ----------
    target : ExampleSet
        The rows to score.

    Returns
    -------
    tuple of str
        :data:`OPTION_METRICS` or :data:`DEFAULT_METRICS`.

    Examples
    --------
    >>> from harp.core.records import Example, ExampleSet
    >>> row = Example(id="q1", prompt="Is ice cold?", response="yes",
    ...               options=("yes", "no"), gold=0)
    >>> default_metrics(ExampleSet(examples=(row,)))
    ('option_logprob', 'option_accuracy')
    """
    return OPTION_METRICS if target.has_options else DEFAULT_METRICS


def _check_int(name: str, value: Any, low: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = f"an integer >= {low}" + (" or None" if allow_none else "")
        raise ParameterError(f"{name}={value!r} is not allowed; expected {allowed}")


def _check_float(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value_f = float(value)
        # Never inf or nan: an infinite rate or epoch count is never meant.
        ok = math.isfinite(value_f)
        ok = ok and (value_f > low if low_open else value_f >= low)
        ok = ok and (value_f < high if high_open else value_f <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open or high == math.inf else "]"
        allowed = f"a finite number in {left}{low}, {high}{right}"
        if allow_none:
            allowed += " or None"
        raise ParameterError(f"{name}={value!r} is not allowed; expected {allowed}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParameterError(
            f"{name}={value!r} is not allowed; expected one of {', '.join(choices)}"
        )


@dataclass
class TrainConfig:
    """How to finetune a model on a subset (a HARP leaf, a selection, the full pool).

    The defaults are sized for the tiny character-level proxy model (see
    :class:`harp.models.ProxyConfig`): a rank-16 LoRA adapter on every linear layer,
    150 steps of 16 rows at lr 3e-3. Calibrated on a proxy pretrained on copy and
    upper-casing: 200 rows of a substitution cipher it never saw took the cipher
    from 0.00 to 0.42 exact match (rank 8: 0.20; attention-only adapters: ~0.01,
    they cannot learn a new character map), and adding 100 rows with a wrong key
    dropped it to 0.03. For a real model (billions of parameters) use ``lr=2e-4``,
    ``lora_target_modules=None`` or ``"all-linear"``, ``steps`` ≈ 1–3 epochs and a
    ``max_length`` of 512–2048.

    Parameters
    ----------
    method : {"lora", "full"}, default "lora"
        ``"lora"`` trains a peft LoRA adapter (the base weights stay frozen);
        ``"full"`` trains every parameter.
    steps : int, default 150
        Optimiser steps. Ignored when ``epochs`` is set.
    epochs : float or None, default None
        When set, ``steps = ceil(epochs * n_rows / batch_size)``.
    batch_size : int, default 16
        Rows per optimiser step (no gradient accumulation). A training set smaller
        than this is used whole at every step.
    lr : float, default 3e-3
        Peak learning rate of AdamW.
    max_length : int, default 256
        Most tokens of a training row (prompt + response + EOS). Longer rows lose the
        start of their prompt first, keeping at least half the budget for the prompt;
        the response is cut at the end only when it alone is too long.
    lora_r : int, default 16
        LoRA rank.
    lora_alpha : float, default 32
        LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
    lora_dropout : float, default 0.0
        Dropout on the LoRA input; 0 keeps training deterministic without any RNG use.
    lora_target_modules : tuple of str or None, default ("all-linear",)
        Modules to adapt. ``("all-linear",)`` adapts every linear layer except the
        output head; None uses :func:`harp.models.attach_lora`'s default (the
        attention projections ``q_proj, k_proj, v_proj, o_proj`` of Llama-style
        models); or name the modules.
    warmup_ratio : float, default 0.05
        Fraction of the steps spent warming the learning rate up linearly from 0.
    schedule : {"cosine", "linear", "constant"}, default "cosine"
        Learning-rate decay after the warm-up (to 0 at the last step, or constant).
    weight_decay : float, default 0.0
        Decoupled AdamW weight decay.
    max_grad_norm : float or None, default 1.0
        Gradient-norm clipping threshold; None disables clipping.
    seed : int, default 0
        Seeds batch order, dropout and LoRA initialisation; the same seed gives
        bit-identical weights on the same machine and thread count.

    Raises
    ------
    harp.core.errors.ParameterError
        When a field has a value outside its allowed range, naming the field.

    Examples
    --------
    >>> TrainConfig(steps=50).method
    'lora'
    >>> TrainConfig(method="qlora")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    harp.core.errors.ParameterError: method='qlora' is not allowed; expected one of ...
    """

    method: str = "lora"
    steps: int = 150
    epochs: float | None = None
    batch_size: int = 16
    lr: float = 3e-3
    max_length: int = 256
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] | None = ("all-linear",)
    warmup_ratio: float = 0.05
    schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("method", self.method, TRAIN_METHODS)
        _check_int("steps", self.steps, 1)
        _check_float("epochs", self.epochs, 0.0, low_open=True, allow_none=True)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("lr", self.lr, 0.0, low_open=True)
        _check_int("max_length", self.max_length, 2)
        _check_int("lora_r", self.lora_r, 1)
        _check_float("lora_alpha", self.lora_alpha, 0.0, low_open=True)
        _check_float("lora_dropout", self.lora_dropout, 0.0, 1.0, high_open=True)
        if self.lora_target_modules is not None:
            given = self.lora_target_modules
            if isinstance(given, str):
                given = (given,)
            if (
                not isinstance(given, (list, tuple))
                or not given
                or not all(isinstance(m, str) and m for m in given)
            ):
                raise ParameterError(
                    f"lora_target_modules={self.lora_target_modules!r} is not "
                    "allowed; expected a non-empty list of module names or None"
                )
            self.lora_target_modules = tuple(given)
        _check_float("warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_open=True)
        _check_choice("schedule", self.schedule, LR_SCHEDULES)
        _check_float("weight_decay", self.weight_decay, 0.0)
        _check_float(
            "max_grad_norm", self.max_grad_norm, 0.0, low_open=True, allow_none=True
        )
        _check_int("seed", self.seed, 0)

    def total_steps(self, n_rows: int) -> int:
        """Optimiser steps for a training set of ``n_rows`` rows.

        Parameters
        ----------
        n_rows : int
            Rows left after truncation checks.

        Returns
        -------
        int
            ``steps``, or ``ceil(epochs * n_rows / batch_size)`` (at least 1) when
            ``epochs`` is set.
        """
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_rows / self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (tuples become lists), for YAML and hashing."""
        out = asdict(self)
        if out["lora_target_modules"] is not None:
            out["lora_target_modules"] = list(out["lora_target_modules"])
        return out


@dataclass
class EvalConfig:
    """How to score a model on target domains.

    Parameters
    ----------
    batch_size : int, default 64
        Rows per forward pass (loss) and per generation batch (exact match).
    max_new_tokens : int or None, default None
        Generation length limit; None uses the longest reference response of the
        target (in tokens) plus 2, so that the EOS and a little overrun fit.
    metrics : tuple of str or None, default None
        What to compute per domain (:data:`METRIC_SPECS`): greedy-decoding exact
        match (higher is better), the mean response-token negative log-likelihood
        (lower is better), and for multiple-choice targets ``"option_accuracy"``
        and ``"option_logprob"`` (higher is better; see
        :func:`~harp.training.evaluate.option_logprobs`). The first is the one a
        table scores by. None: the target's own (:func:`default_metrics`: the
        option metrics when every target row is multiple-choice, else
        ``("exact_match", "loss")``), fixed by :meth:`for_target` before scoring.
    bootstrap : int, default 0
        When > 0, the variance of each per-domain mean is the variance of this many
        bootstrap means over target items (seeded by ``seed``) instead of the
        analytic ``s² / n``.
    max_length : int or None, default None
        Most tokens of prompt + response in the loss pass, and of prompt + generated
        tokens in generation; None uses the model's ``max_position_embeddings``
        (unbounded when the config has none). Prompts lose their start first.
    seed : int, default 0
        Seed of the bootstrap.

    Raises
    ------
    harp.core.errors.ParameterError
        When a field has a value outside its allowed range, naming the field.
    """

    batch_size: int = 64
    max_new_tokens: int | None = None
    metrics: tuple[str, ...] | None = None
    bootstrap: int = 0
    max_length: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, 1)
        _check_int("max_new_tokens", self.max_new_tokens, 1, allow_none=True)
        if isinstance(self.metrics, str):
            self.metrics = (self.metrics,)
        elif self.metrics is not None:  # None: the target's own, see for_target
            self.metrics = tuple(self.metrics)
        if self.metrics is not None and not self.metrics:
            raise ParameterError(
                "metrics=() is not allowed; expected one or more of "
                + ", ".join(EVAL_METRICS)
            )
        for metric in self.metrics or ():
            _check_choice("metrics", metric, EVAL_METRICS)
        if self.metrics is not None and len(set(self.metrics)) != len(self.metrics):
            raise ParameterError(f"metrics={self.metrics!r} repeats a metric")
        _check_int("bootstrap", self.bootstrap, 0)
        _check_int("max_length", self.max_length, 2, allow_none=True)
        _check_int("seed", self.seed, 0)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (tuples become lists), for YAML and hashing."""
        out = asdict(self)
        if out["metrics"] is not None:
            out["metrics"] = list(out["metrics"])
        return out

    @property
    def fixed_metrics(self) -> tuple[str, ...]:
        """The metrics, once named or fixed for a target by :meth:`for_target`.

        Raises
        ------
        ValueError
            While ``metrics`` is None (scoring code calls :meth:`for_target` first).
        """
        if self.metrics is None:
            raise ValueError(
                "EvalConfig.metrics is None until fixed for a target: call "
                "for_target(target) first"
            )
        return self.metrics

    def for_target(self, target: ExampleSet) -> EvalConfig:
        """This config with its metrics fixed for ``target``, and checked against it.

        Returns
        -------
        EvalConfig
            ``self`` when it names its metrics, else a copy with
            :func:`default_metrics` of ``target``.

        Raises
        ------
        harp.core.errors.ParameterError
            An option metric is asked for and a domain of ``target`` holds no
            multiple-choice row (the message names the domains and the fix).
        """
        fixed = (
            self
            if self.metrics is not None
            else replace(self, metrics=default_metrics(target))
        )
        if set(OPTION_METRICS) & set(fixed.fixed_metrics):
            without = [
                d
                for d, idx in target.by_domain().items()
                if not any(target[i].options for i in idx)
            ]
            if without:
                raise ParameterError(
                    f"the option metrics need multiple-choice target rows, but "
                    f"domain(s) {', '.join(repr(d) for d in without)} carry no "
                    "options; give rows 'options' and 'gold' (see "
                    "harp.core.records.resolve_options), or score them with 'loss' "
                    "or 'exact_match'"
                )
        return fixed


_Config = TypeVar("_Config", TrainConfig, EvalConfig)


def config_from_mapping(
    cls: type[_Config], values: Mapping[str, Any], *, where: str, section: str
) -> _Config:
    """Build a :class:`TrainConfig` or :class:`EvalConfig` from user-given fields.

    The seed is not the user's to set here (it comes from the run's seed streams), so
    ``seed`` counts as an unknown key.

    Parameters
    ----------
    cls : type
        :class:`TrainConfig` or :class:`EvalConfig`.
    values : mapping
        Field values, e.g. ``{"epochs": 3, "lr": 2e-4}`` from a suite's YAML.
    where, section : str
        Where the values came from (a file, a selector) and their name there, for
        the messages.

    Raises
    ------
    ParameterError
        Naming the unknown key and the valid ones, or the bad value.

    Examples
    --------
    >>> config_from_mapping(TrainConfig, {"lr": 2e-4}, where="x", section="train").lr
    0.0002
    >>> config_from_mapping(TrainConfig, {"lr0": 1}, where="x", section="train")
    Traceback (most recent call last):
    ...
    harp.core.errors.ParameterError: x: unknown key 'train.lr0'; valid keys: ...
    """
    if not isinstance(values, Mapping):
        raise ParameterError(
            f"{where}: {section} must be a mapping of {cls.__name__} fields; "
            f"got {values!r}"
        )
    names = {f.name for f in fields(cls)} - {"seed"}
    for key in values:
        if key not in names:
            raise ParameterError(
                f"{where}: unknown key '{section}.{key}'; valid keys: "
                + ", ".join(sorted(names))
            )
    try:
        return cls(**values)
    except HarpError as exc:
        raise ParameterError(f"{where}: {section}: {exc}") from None
