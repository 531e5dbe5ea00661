"""Finetune a causal LM on a subset: LoRA or full, loss on response tokens only.

The same encoder (:func:`encode_examples`) builds the rows of finetuning, of the
proxy's pretraining and of loss evaluation, so the prompt template and the label mask
are defined once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harp.errors import NumericalError, ParameterError
from harp.training.config import TrainConfig, format_prompt

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

    from harp.data import ExampleSet

__all__ = ["finetune", "encode_examples", "EncodedRows", "IGNORE_INDEX"]

logger = logging.getLogger(__name__)

#: Label of tokens that carry no loss (prompt and padding), as in PyTorch/transformers.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedRows:
    """Token ids and labels of a set of examples, ready to batch.

    Attributes
    ----------
    indices : tuple of int
        Positions (in the input set) of the rows kept.
    input_ids : tuple of tuple of int
        Token ids of each kept row: BOS (if the tokenizer adds one), formatted
        prompt, response, EOS.
    labels : tuple of tuple of int
        Same length as ``input_ids``; prompt tokens are :data:`IGNORE_INDEX` when the
        loss is on responses only.
    n_prompt : tuple of int
        Number of prompt tokens (after truncation) of each kept row.
    dropped : tuple of int
        Positions of rows excluded because no response token survived truncation.
    truncated : int
        Number of kept rows that lost tokens to ``max_length``.
    """

    indices: tuple[int, ...]
    input_ids: tuple[tuple[int, ...], ...]
    labels: tuple[tuple[int, ...], ...]
    n_prompt: tuple[int, ...]
    dropped: tuple[int, ...] = ()
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.indices)


def _prompt_lengths_and_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: Sequence[str],
    full_texts: Sequence[str],
) -> tuple[list[list[int]], list[int]]:
    """Token ids of ``full_texts`` and how many of them belong to the prompt."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(
            list(full_texts), add_special_tokens=True, return_offsets_mapping=True
        )
        all_ids: list[list[int]] = []
        n_prompts: list[int] = []
        for ids, offsets, prompt in zip(
            enc["input_ids"], enc["offset_mapping"], prompt_texts
        ):
            ids = list(ids)
            offsets = [tuple(o) for o in offsets]
            # A tokenizer that appends EOS itself: drop it, harp appends its own.
            while len(ids) > 1 and ids[-1] in special and offsets[-1] == (0, 0):
                ids.pop()
                offsets.pop()
            limit = len(prompt)
            n_prompt = len(ids)
            for j, (_, end) in enumerate(offsets):
                if end > limit:
                    # First token reaching past the prompt (a token straddling the
                    # boundary counts as response).
                    n_prompt = j
                    break
            all_ids.append(ids)
            n_prompts.append(n_prompt)
        return all_ids, n_prompts
    full = tokenizer(list(full_texts), add_special_tokens=True)["input_ids"]
    prompts = tokenizer(list(prompt_texts), add_special_tokens=True)["input_ids"]
    all_ids = []
    n_prompts = []
    for ids, p_ids in zip(full, prompts):
        ids = list(ids)
        while len(ids) > 1 and ids[-1] in special and ids[-1] == tokenizer.eos_token_id:
            ids.pop()
        all_ids.append(ids)
        n_prompts.append(min(len(p_ids), len(ids)))
    return all_ids, n_prompts


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: ExampleSet | Sequence[Any],
    *,
    max_length: int,
    response_only: bool = True,
    add_eos: bool = True,
) -> EncodedRows:
    """Tokenise examples as ``format_prompt(prompt) + response + EOS`` with labels.

    The prompt/response boundary is found from the tokenizer's character offsets
    (fast tokenizers) so that it is exact even when the tokenizer merges across the
    join; slow tokenizers fall back to the token count of the prompt alone.

    Truncation keeps the response where possible: a row longer than ``max_length``
    first loses the *start* of its prompt (the leading BOS and the prompt's end — the
    question and the ``### Response:`` marker — stay), but the prompt keeps at least
    ``max_length // 2`` tokens when it has them; then the response is cut at its end.
    Rows left with no response token are excluded and listed in ``dropped``.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer.
    examples : ExampleSet or sequence of Example
        Rows with ``prompt`` and ``response`` attributes.
    max_length : int
        Most tokens per row.
    response_only : bool, default True
        Label only response tokens (and EOS); otherwise every token.
    add_eos : bool, default True
        Append the EOS id to every row (the model learns to stop).

    Returns
    -------
    EncodedRows
        The kept rows, their labels and the dropped positions.

    Examples
    --------
    >>> from harp.models import build_char_tokenizer
    >>> from harp.data import ExampleSet
    >>> tok = build_char_tokenizer()
    >>> rows = encode_examples(tok, ExampleSet.from_records(
    ...     [{"prompt": "hi", "response": "yo"}]), max_length=64)
    >>> ids, labels = rows.input_ids[0], rows.labels[0]
    >>> labelled = [t for t, lab in zip(ids, labels) if lab != -100]
    >>> tok.decode(labelled)
    'yo</s>'
    """
    if max_length < 2:
        raise ParameterError(f"max_length={max_length!r} is not allowed; expected >= 2")
    prompt_texts = [format_prompt(e.prompt) for e in examples]
    full_texts = [p + e.response for p, e in zip(prompt_texts, examples)]
    if not full_texts:
        return EncodedRows((), (), (), ())
    all_ids, n_prompts = _prompt_lengths_and_ids(tokenizer, prompt_texts, full_texts)
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ParameterError("the tokenizer has no EOS token; pass add_eos=False")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    indices, out_ids, out_labels, out_prompt, dropped = [], [], [], [], []
    truncated = 0
    for i, (ids, n_prompt) in enumerate(zip(all_ids, n_prompts)):
        if add_eos:
            ids = ids + [eos]
        prompt, response = ids[:n_prompt], ids[n_prompt:]
        if len(ids) > max_length:
            truncated += 1
            keep_p = min(len(prompt), max(max_length - len(response), max_length // 2))
            lead = 1 if prompt and prompt[0] in special else 0
            if keep_p < len(prompt):
                if keep_p > lead:
                    prompt = prompt[:lead] + prompt[len(prompt) - (keep_p - lead) :]
                else:
                    prompt = prompt[:keep_p]
            response = response[: max_length - len(prompt)]
        if not response:
            dropped.append(i)
            continue
        row = prompt + response
        if response_only:
            labels = [IGNORE_INDEX] * len(prompt) + response
        else:
            labels = list(row)
        indices.append(i)
        out_ids.append(tuple(row))
        out_labels.append(tuple(labels))
        out_prompt.append(len(prompt))
    return EncodedRows(
        tuple(indices),
        tuple(out_ids),
        tuple(out_labels),
        tuple(out_prompt),
        tuple(dropped),
        truncated,
    )


def _encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, max_length: int
) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """Raw texts as ``(index, ids, labels)`` rows: BOS + text + EOS, all labelled."""
    enc = tokenizer(texts, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    rows = []
    for i, ids in enumerate(enc):
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        ids = tuple(ids[:max_length])
        if len(ids) >= 2:
            rows.append((i, ids, ids))
    return rows


def _encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Any,
    *,
    max_length: int,
    response_only: bool,
) -> tuple[list[tuple[int, tuple[int, ...], tuple[int, ...]]], tuple[int, ...]]:
    enc = encode_examples(
        tokenizer, examples, max_length=max_length, response_only=response_only
    )
    rows = list(zip(enc.indices, enc.input_ids, enc.labels))
    return rows, enc.dropped


def collate(
    rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``(input_ids, labels)`` rows into tensors.

    Parameters
    ----------
    rows : sequence of (input_ids, labels)
        Token rows and their labels.
    pad_id : int
        Padding token id.

    Returns
    -------
    input_ids, attention_mask, labels : torch.Tensor
        ``(batch, longest)`` int64 tensors; padding has mask 0 and label -100.
    """
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, labs) in enumerate(rows):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids, dtype=torch.long)
        labels[r, :n] = torch.tensor(labs, dtype=torch.long)
        mask[r, :n] = 1
    return input_ids, mask, labels


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions.

    Parameters
    ----------
    logits : torch.Tensor
        ``(batch, length, vocab)``.
    labels : torch.Tensor
        ``(batch, length)``; position ``t`` is predicted from logits at ``t - 1``;
        :data:`IGNORE_INDEX` positions carry no loss.

    Returns
    -------
    torch.Tensor
        Scalar loss (token-weighted mean over the batch).
    """
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def _lr_lambda(steps: int, warmup: int, schedule: str):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        progress = min(1.0, max(0.0, progress))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _batch_stream(n: int, batch_size: int, steps: int, generator: Any):
    """Index batches: consecutive slices of seeded permutations (one per epoch)."""
    import torch

    if n <= batch_size:
        for _ in range(steps):
            yield torch.randperm(n, generator=generator).tolist()
        return
    buffer: list[int] = []
    for _ in range(steps):
        while len(buffer) < batch_size:
            buffer.extend(torch.randperm(n, generator=generator).tolist())
        batch, buffer = buffer[:batch_size], buffer[batch_size:]
        yield batch


@dataclass(frozen=True)
class TrainStep:
    """What an ``on_step`` callback of :func:`finetune` sees after each optimiser step.

    Attributes
    ----------
    step : int
        Steps done so far (from 1).
    total : int
        Steps the run will take.
    lr : float
        Learning rate the step used.
    loss : float
        The step's batch loss.
    optimizer : torch.optim.Optimizer
        The optimiser, with its state after the step (the warm-up saves Adam moments).
    model : torch.nn.Module
        The model being trained (the peft model under LoRA).
    row_ids : tuple of str
        Ids of the rows the run trains on (rows lost to truncation are not among them).
    """

    step: int
    total: int
    lr: float
    loss: float
    optimizer: Any
    model: Any
    row_ids: tuple[str, ...]


def _train_loop(
    model: Any,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    row_ids: Sequence[str],
    params: list[Any],
    *,
    pad_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_ratio: float,
    schedule: str,
    weight_decay: float,
    max_grad_norm: float | None,
    seed: int,
    progress: bool,
    description: str,
    on_step: Callable[[TrainStep], None] | None = None,
) -> list[float]:
    """AdamW on ``params`` over seeded batches of ``rows``; returns the step losses.

    ``on_step`` receives a :class:`TrainStep` after every optimiser step. The caller
    must have seeded torch's global RNG (dropout) inside a fork.
    Right padding needs no attention mask for a causal model (real tokens never
    attend to later padding), so the batch runs with the causal fast path.
    """
    import torch

    if not rows:
        raise ParameterError("no training rows left (all were empty or truncated)")
    if not params:
        raise ParameterError("the model has no trainable parameters")
    generator = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8
    )
    warmup = int(round(warmup_ratio * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(steps, warmup, schedule)
    )
    losses: list[float] = []
    ids = tuple(row_ids)
    bar = _progress_bar(progress, description, steps)
    model.train()
    try:
        batches = _batch_stream(len(rows), batch_size, steps, generator)
        for step, batch in enumerate(batches):
            input_ids, _, labels = collate([rows[i] for i in batch], pad_id)
            logits = model(input_ids=input_ids, use_cache=False).logits
            loss = causal_lm_loss(logits, labels)
            value = float(loss.detach())
            if not math.isfinite(value):
                ids = [row_ids[i] for i in batch]
                raise NumericalError(
                    f"{description}: the loss became {value} at step {step + 1}/"
                    f"{steps}; the batch held example ids {ids}. Lower the learning "
                    "rate, check the model weights, or drop those rows"
                )
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            step_lr = float(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(value)
            if on_step is not None:
                on_step(
                    TrainStep(step + 1, steps, step_lr, value, optimizer, model, ids)
                )
            if bar is not None:
                bar[0].update(
                    bar[1], advance=1, description=f"{description} {value:.3f}"
                )
    finally:
        model.eval()
        if bar is not None:
            bar[0].stop()
    logger.debug(
        "%s: %d steps, loss %.4f -> %.4f", description, steps, losses[0], losses[-1]
    )
    return losses


def _progress_bar(enabled: bool, description: str, total: int):
    if not enabled:
        return None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(description, total=total)
    bar.start()
    return bar, task


def finetune(
    model_or_path: Any,
    tokenizer: PreTrainedTokenizerBase | None,
    train: ExampleSet,
    config: TrainConfig | None = None,
    *,
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
        The model, or a folder loaded with :func:`harp.models.load_model`.
    tokenizer : transformers.PreTrainedTokenizerBase or None
        Its tokenizer; None uses the tokenizer loaded with a path.
    train : ExampleSet
        Training rows.
    config : TrainConfig or None, default None
        Hyper-parameters; None uses :class:`TrainConfig` defaults.
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
    harp.errors.NumericalError
        When a batch's loss is NaN or infinite; the message names the batch's
        example ids.
    harp.errors.ParameterError
        When ``train`` is empty, no row survives truncation, or no tokenizer is given.
    harp.errors.ModelError
        When a path cannot be loaded or LoRA cannot be attached.

    Notes
    -----
    Rows whose response is entirely lost to ``max_length`` are excluded and their
    ids logged at WARNING level.
    """
    import torch

    from harp.models.loading import _is_peft, attach_lora, load_model

    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ParameterError(
            f"config must be a TrainConfig, got {type(config).__name__}"
        )
    if isinstance(model_or_path, (str, Path)):
        model, loaded_tok = load_model(model_or_path)
        tokenizer = tokenizer if tokenizer is not None else loaded_tok
    else:
        model = model_or_path
    if tokenizer is None:
        raise ParameterError("finetune needs a tokenizer when given a model object")
    if len(train) == 0:
        raise ParameterError("train is empty; finetuning needs at least one row")

    enc = encode_examples(tokenizer, train, max_length=config.max_length)
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

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.method == "lora":
            if not _is_peft(model):
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
        params = [p for p in model.parameters() if p.requires_grad]
        _train_loop(
            model,
            rows,
            row_ids,
            params,
            pad_id=_pad_id(tokenizer),
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


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ParameterError("the tokenizer has neither a pad nor an EOS token")
    return int(pad)
