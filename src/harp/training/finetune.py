"""Finetune a causal LM on a subset: LoRA or full, loss on response tokens only.

The rows are encoded by :func:`harp.nn.encode_examples` and trained by
:func:`harp.nn.train_loop`, the encoder and loop that the proxy's pretraining and the
LESS warm-up use too, so the prompt template, the label mask and the optimiser are
defined once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harp.core.errors import ParameterError
from harp.nn.encode import (
    encode_examples,
    fit_max_length,
    model_device,
    pad_token_id,
    seeded,
)
from harp.nn.loop import StackedRun, TrainStep, train_loop, train_stacked
from harp.training.config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from harp.core.context import RunContext
    from harp.core.records import ExampleSet
    from harp.nn.stacked import StackedAdapters

__all__ = ["finetune", "finetune_stacked"]

logger = logging.getLogger(__name__)


def finetune(
    model_or_path: Any,
    tokenizer: PreTrainedTokenizerBase | None,
    train: ExampleSet,
    config: TrainConfig | None = None,
    *,
    context: RunContext | None = None,
    progress: bool = False,
    description: str | None = None,
    on_step: Callable[[TrainStep], None] | None = None,
) -> Any:
    """Finetune a causal LM on ``train`` (LoRA or full), loss on response tokens only.

    Each row is ``format_prompt(prompt) + response + EOS``; prompt tokens are labelled
    -100, so only the response (and the EOS that teaches the model to stop) carries
    the loss. Batches are right-padded, drawn from seeded permutations of the rows;
    AdamW with linear warm-up and cosine (or linear/constant) decay. Torch's global
    RNG is seeded inside a fork (the caller's RNG is untouched), so the same inputs
    and seed give bit-identical weights on the same machine and thread count.

    **The model object is trained in place.** With ``method="lora"`` peft injects
    the adapter into the model passed in, and the function returns the (unmerged)
    ``PeftModel`` wrapping it; with ``method="full"`` the model's own weights change.
    Pass a path (a fresh copy is loaded) or a model you no longer need untouched. A
    model that is already a ``PeftModel`` is trained as it is (its own trainable
    adapter), without attaching a second one.

    Parameters
    ----------
    model_or_path : transformers.PreTrainedModel or peft.PeftModel or str or Path
        The model (on its device), or a folder loaded with
        :func:`harp.models.load_model` onto ``context``'s device and dtype.
    tokenizer : transformers.PreTrainedTokenizerBase or None
        Its tokenizer; None uses the tokenizer loaded with a path.
    train : ExampleSet
        Training rows.
    config : TrainConfig or None, default None
        Hyper-parameters; None uses :class:`TrainConfig` defaults.
    context : RunContext or None, default None
        Where a model given as a path is loaded (None: the default context).
    progress : bool, default False
        Show a rich progress bar.
    description : str or None, default None
        Name of the run in progress bars and error messages (default
        ``"finetuning (lora)"`` or ``"finetuning (full)"``).
    on_step : callable or None, default None
        Called with a :class:`TrainStep` after every optimiser step (the LESS warm-up
        saves its checkpoints from there).

    Returns
    -------
    peft.PeftModel or transformers.PreTrainedModel
        The trained model in ``eval()`` mode (a ``PeftModel`` for LoRA; save it with
        :func:`harp.models.save_model` to get a merged folder).

    Raises
    ------
    harp.core.errors.NumericalError
        When a batch's loss is NaN or infinite; the message names the batch's
        example ids.
    harp.core.errors.ParameterError
        When ``train`` is empty, no row survives truncation, or no tokenizer is given.
    harp.core.errors.ModelError
        When a path cannot be loaded or LoRA cannot be attached.

    Notes
    -----
    Rows whose response is entirely lost to ``max_length`` are excluded and their
    ids logged at WARNING level.
    """
    from harp.models.loading import attach_lora, is_peft, load_model

    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ParameterError(
            f"config must be a TrainConfig, got {type(config).__name__}"
        )
    model: Any
    if isinstance(model_or_path, (str, Path)):
        model, loaded_tok = load_model(model_or_path, context=context)
        tokenizer = tokenizer if tokenizer is not None else loaded_tok
    else:
        model = model_or_path
    if tokenizer is None:
        raise ParameterError("finetune needs a tokenizer when given a model object")
    if len(train) == 0:
        raise ParameterError("train is empty; finetuning needs at least one row")

    run = _encoded_run(model, tokenizer, train, config)

    with seeded(config.seed, model_device(model)):
        if config.method == "lora":
            if not is_peft(model):
                model = attach_lora(
                    model,
                    r=config.lora_r,
                    alpha=config.lora_alpha,
                    dropout=config.lora_dropout,
                    target_modules=config.lora_target_modules,
                )
        else:
            for param in model.parameters():
                param.requires_grad_(True)
        train_loop(
            model,
            run.rows,
            run.row_ids,
            steps=run.steps,
            **_loop_settings(config, tokenizer, progress),
            description=description or f"finetuning ({config.method})",
            on_step=on_step,
        )
    return model


def finetune_stacked(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    trains: Sequence[ExampleSet],
    config: TrainConfig | None = None,
    *,
    seeds: Sequence[int | None] | None = None,
    slots: int | None = None,
    on_done: Callable[[StackedAdapters, list[int], list[float]], None] | None = None,
    progress: bool = False,
    description: str | None = None,
) -> StackedAdapters:
    """LoRA-finetune one adapter per set of ``trains``, all in one batched forward.

    Adapter ``k`` is what :func:`finetune` would train on ``trains[k]`` with the same
    ``config`` (the same initial adapter, batches, optimiser and schedule; equal up
    to floating-point rounding, bit for bit when it trains alone), but the runs share
    each forward pass of the base model (:func:`harp.nn.train_stacked`): on a GPU a
    small model's K finetunes cost little more than one. ``seeds`` gives each set
    its recipe seed (its initial adapter and batch order; None, or a None entry:
    ``config.seed``), so runs of several seeds share one stack. With ``slots`` at
    most that many adapters train at once, a waiting run taking the slot of one
    that ends (:func:`harp.nn.stack_schedule`). ``on_done(adapters, ended,
    seconds)`` is called as runs end, with the indices of the adapters just finished
    and their shares of the training time (score them with
    :func:`harp.training.evaluate_stacked` and ``which=ended``).

    The adapters are hooked onto ``model`` itself, whose weights never change:
    score adapter ``k`` with ``adapters.use(k)`` and the model as usual, and call
    ``adapters.remove()`` when done.

    Raises
    ------
    harp.core.errors.ParameterError
        When ``config.method`` is not ``"lora"``, a set is empty or loses every row
        to truncation.
    harp.core.errors.ModelError
        When a layer peft would adapt is not a linear layer.
    """
    from harp.models.loading import stacked_lora

    config = TrainConfig() if config is None else config
    if config.method != "lora":
        raise ParameterError(
            f"stacked finetuning trains LoRA adapters; method={config.method!r}"
        )
    if not trains:
        raise ParameterError("trains is empty; give at least one set of rows")
    for train in trains:
        if len(train) == 0:
            raise ParameterError("a training set is empty; each needs a row")
    seeds = [None] * len(trains) if seeds is None else list(seeds)
    if len(seeds) != len(trains):
        raise ParameterError(
            f"seeds: {len(seeds)} seeds for {len(trains)} training sets; give one each"
        )
    run_seeds = [config.seed if seed is None else int(seed) for seed in seeds]
    runs = [
        dataclasses.replace(_encoded_run(model, tokenizer, train, config), seed=seed)
        for train, seed in zip(trains, run_seeds)
    ]
    # Dropout draws from the global RNG, seeded with the recipe's seed: with
    # dropout, a stacked run equals its single finetune in distribution only.
    with seeded(config.seed, model_device(model)):
        adapters = stacked_lora(
            model,
            len(runs),
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            seeds=run_seeds,
        )
        try:
            train_stacked(
                model,
                adapters,
                runs,
                **_loop_settings(config, tokenizer, progress),
                description=description or f"finetuning {len(runs)} adapters (lora)",
                slots=slots,
                on_done=None if on_done is None else partial(on_done, adapters),
            )
        except BaseException:
            adapters.remove()
            raise
    return adapters


def _loop_settings(
    config: TrainConfig, tokenizer: Any, progress: bool
) -> dict[str, Any]:
    """The training loop's settings from a recipe (one adapter or many)."""
    return dict(
        pad_id=pad_token_id(tokenizer),
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_ratio=config.warmup_ratio,
        schedule=config.schedule,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        progress=progress,
    )


def _encoded_run(
    model: Any, tokenizer: Any, train: ExampleSet, config: TrainConfig
) -> StackedRun:
    """``train`` encoded for the loop, with the rows it lost logged; its steps."""
    enc = encode_examples(
        tokenizer, train, max_length=fit_max_length(model, config.max_length)
    )
    if enc.dropped:
        dropped_ids = [train[i].id for i in enc.dropped]
        logger.warning(
            "%d training row(s) excluded: no response token fits max_length=%d "
            "(ids: %s)",
            len(dropped_ids),
            config.max_length,
            ", ".join(dropped_ids),
        )
    if enc.truncated:
        logger.info(
            "%d training row(s) truncated to max_length=%d",
            enc.truncated,
            config.max_length,
        )
    rows = list(zip(enc.input_ids, enc.labels))
    return StackedRun(
        rows=rows,
        row_ids=[train[i].id for i in enc.indices],
        steps=config.total_steps(len(rows)),
    )
