"""Finetune a causal LM on a subset: LoRA or full, loss on response tokens only.

The rows are encoded by :func:`harp.nn.encode_examples` and trained by
:func:`harp.nn.train_loop`, the encoder and loop that the proxy's pretraining and the
LESS warm-up use too, so the prompt template, the label mask and the optimiser are
defined once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
from harp.nn.loop import TrainStep, train_loop
from harp.training.config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from harp.core.context import RunContext
    from harp.core.records import ExampleSet

__all__ = ["finetune"]

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
    row_ids = [train[i].id for i in enc.indices]
    steps = config.total_steps(len(rows))

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
            rows,
            row_ids,
            pad_id=pad_token_id(tokenizer),
            steps=steps,
            batch_size=config.batch_size,
            lr=config.lr,
            warmup_ratio=config.warmup_ratio,
            schedule=config.schedule,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            seed=config.seed,
            progress=progress,
            description=description or f"finetuning ({config.method})",
            on_step=on_step,
        )
    return model
