"""Training and evaluation: finetune a model on a subset, score target domains.

:class:`TrainEvalUtility` is the one train-and-score utility (cached, counted,
mappable over an executor) that HARP's oracle, the benchmark harness, the demo and
``harp evaluate`` share. The prompt template, encoder and loop come from
:mod:`harp.nn` and are re-exported here for convenience. Nothing here imports torch
at import time.
"""

from harp.nn.encode import encode_examples, format_example, format_prompt
from harp.nn.loop import TrainStep
from harp.training.config import EvalConfig, TrainConfig
from harp.training.evaluate import (
    Estimate,
    EvalReport,
    evaluate,
    evaluate_stacked,
    extract_answer,
    generate_greedy,
    is_correct,
    normalize_answer,
    response_losses,
)
from harp.training.finetune import finetune, finetune_stacked
from harp.training.utility import CallResult, TrainEvalUtility, evaluate_subset
from harp.training.warmup import Checkpoint, WarmupResult, warmup

__all__ = [
    "CallResult",
    "Checkpoint",
    "Estimate",
    "EvalConfig",
    "EvalReport",
    "TrainConfig",
    "TrainEvalUtility",
    "TrainStep",
    "WarmupResult",
    "encode_examples",
    "evaluate",
    "evaluate_stacked",
    "evaluate_subset",
    "extract_answer",
    "finetune",
    "finetune_stacked",
    "format_example",
    "format_prompt",
    "generate_greedy",
    "is_correct",
    "normalize_answer",
    "response_losses",
    "warmup",
]
