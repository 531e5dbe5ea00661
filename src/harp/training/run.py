"""``harp evaluate`` as a library call: finetune on a subset, score a target."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harp.data._records import ExampleSet

__all__ = ["evaluate_subset"]


def evaluate_subset(
    model: str | Path,
    target: ExampleSet,
    train: ExampleSet | None = None,
    *,
    train_overrides: dict[str, Any] | None = None,
    max_new_tokens: int | None = None,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on ``target`` per domain; with ``train``, also after finetuning.

    Parameters
    ----------
    model : str or Path
        A local Hugging Face causal-LM folder.
    target : ExampleSet
        Target rows; their ``domain`` splits the scores.
    train : ExampleSet, optional
        Rows to finetune on (LoRA by default). Without it only the base is scored.
    train_overrides : dict, optional
        Fields of :class:`harp.training.TrainConfig` to change (``steps``, ``lr``…).
    max_new_tokens : int, optional
        Greedy-decoding length; default from the longest reference response.
    trust_remote_code : bool, default False
        Allow the model folder's own Python code.
    progress : bool, default False
        Show progress bars.

    Returns
    -------
    dict
        ``{"base": report, "tuned": report or None, "train_config", "eval_config",
        "train_rows", "seconds"}`` where each report is
        :meth:`harp.training.EvalReport.to_dict` (per-domain mean, variance, n, stderr).
    """
    from harp.models import load_model
    from harp.training import EvalConfig, TrainConfig, evaluate, finetune_and_evaluate

    start = time.perf_counter()
    train_config = TrainConfig(**(train_overrides or {}))
    eval_config = EvalConfig(max_new_tokens=max_new_tokens)
    if train is None:
        net, tokenizer = load_model(model, trust_remote_code=trust_remote_code)
        base, tuned = (
            evaluate(net, tokenizer, target, eval_config, progress=progress),
            None,
        )
    else:
        tuned, base = finetune_and_evaluate(
            model,
            train,
            target,
            train_config,
            eval_config,
            trust_remote_code=trust_remote_code,
            progress=progress,
        )
    return {
        "model": str(model),
        "base": base.to_dict(),
        "tuned": None if tuned is None else tuned.to_dict(),
        "train_rows": 0 if train is None else len(train),
        "train_config": train_config.to_dict(),
        "eval_config": eval_config.to_dict(),
        "seconds": round(time.perf_counter() - start, 2),
    }
