"""Training and evaluation: finetune a model on a subset, score target domains.

One prompt template (:func:`format_prompt`) serves finetuning, pretraining of the
proxy and evaluation. Nothing here imports torch at import time.
"""

from harp.training.config import EvalConfig, TrainConfig, format_example, format_prompt
from harp.training.evaluate import (
    Estimate,
    EvalReport,
    evaluate,
    extract_answer,
    finetune_and_evaluate,
    generate_greedy,
    is_correct,
    normalize_answer,
)
from harp.training.finetune import TrainStep, encode_examples, finetune
from harp.training.run import evaluate_subset
from harp.training.warmup import Checkpoint, WarmupResult, warmup

__all__ = [
    "TrainStep",
    "Checkpoint",
    "WarmupResult",
    "evaluate_subset",
    "warmup",
    "Estimate",
    "EvalConfig",
    "EvalReport",
    "TrainConfig",
    "encode_examples",
    "evaluate",
    "extract_answer",
    "finetune",
    "finetune_and_evaluate",
    "format_example",
    "format_prompt",
    "generate_greedy",
    "is_correct",
    "normalize_answer",
]
