"""Encoding: the prompt template, tokenised rows with labels, padded batches.

One template (:func:`format_prompt`) and one encoder (:func:`encode_examples`) serve
finetuning, the proxy's pretraining, loss evaluation, generation and per-example
gradients, so a model is always scored on the format it was trained on. Batches are
right padded (:func:`collate`) and created on the device of the model that reads
them. Nothing here imports torch at import time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from harp.core.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

    from harp.core.records import ExampleSet

logger = logging.getLogger(__name__)

__all__ = [
    "fit_max_length",
    "EncodedRows",
    "IGNORE_INDEX",
    "RESPONSE_MARKER",
    "collate",
    "encode_examples",
    "encode_texts",
    "format_example",
    "format_prompt",
    "length_batches",
    "model_device",
    "model_max_length",
    "pad_token_id",
    "seeded",
]

#: Label of tokens that carry no loss (prompt and padding), as in PyTorch/transformers.
IGNORE_INDEX = -100

#: The line that separates a prompt from its response in every formatted text.
RESPONSE_MARKER = "### Response:\n"


def format_prompt(prompt: str) -> str:
    """Render a prompt the way the model reads it, in training and in evaluation alike.

    The template is ``f"{prompt}\\n### Response:\\n"``: the prompt, a newline and a
    short response marker. It is the **only** template in harp — finetuning, the
    proxy's pretraining, loss evaluation and generation all call this function, so a
    model is always scored on the format it was trained on. It is deliberately short
    because the proxy model reads characters, not words: every template character is a
    position of context.

    Parameters
    ----------
    prompt : str
        The example's prompt (everything before the answer).

    Returns
    -------
    str
        The text that precedes the response.

    See Also
    --------
    format_example : the full training text (prompt, response, end of sequence).

    Examples
    --------
    >>> format_prompt("2+2=")
    '2+2=\\n### Response:\\n'
    """
    return f"{prompt}\n{RESPONSE_MARKER}"


def format_example(prompt: str, response: str, eos_token: str = "") -> str:
    """The training text of one example: ``format_prompt(prompt) + response + eos``.

    Parameters
    ----------
    prompt : str
        The example's prompt.
    response : str
        The answer the model must produce.
    eos_token : str, default ""
        The tokenizer's end-of-sequence token text. harp's own encoders append the
        EOS *id* instead of its text (robust for every tokenizer); this argument is for
        people who want the text form.

    Returns
    -------
    str
        The formatted text.

    Examples
    --------
    >>> format_example("2+2=", "4", "</s>")
    '2+2=\\n### Response:\\n4</s>'
    """
    return format_prompt(prompt) + response + eos_token


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


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, max_length: int
) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """Raw texts as ``(index, ids, labels)`` rows: BOS + text + EOS, all labelled.

    Rows shorter than two tokens (nothing to predict) are left out.
    """
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


def collate(
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    device: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``(input_ids, labels)`` rows into tensors.

    Parameters
    ----------
    rows : sequence of (input_ids, labels)
        Token rows and their labels.
    pad_id : int
        Padding token id.
    device : torch.device or str or None, default None
        Where the tensors are created: the device of the model that reads them
        (:func:`model_device`); None means the CPU.

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
    if device is None:
        return input_ids, mask, labels
    # Built on the host, moved in one transfer each (non-blocking from pinned memory
    # would need pinning first; three small copies per batch cost microseconds).
    return input_ids.to(device), mask.to(device), labels.to(device)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS.

    Raises
    ------
    ParameterError
        When the tokenizer has neither.
    """
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ParameterError("the tokenizer has neither a pad nor an EOS token")
    return int(pad)


def model_device(model: Any) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any).

    A model is placed once, when loaded (:func:`harp.models.load_model`); everything
    that feeds it creates its tensors here.
    """
    import torch

    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@contextlib.contextmanager
def seeded(seed: int, device: Any = None) -> Iterator[None]:
    """Seed torch's global RNG for a block, restoring the caller's state after.

    The CPU generator is forked and seeded always; a CUDA ``device``'s generator too
    (dropout on the GPU draws from it). LoRA initialisation draws on the CPU, so the
    same seed gives the same adapter on any device.
    """
    import torch

    device = torch.device("cpu") if device is None else torch.device(device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        yield


def model_max_length(model: Any) -> int | None:
    """The longest sequence a model's positions allow (None when it does not say)."""
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


_CAPPED: set[tuple[int, int]] = set()


@overload
def fit_max_length(model: Any, max_length: int) -> int: ...
@overload
def fit_max_length(model: Any, max_length: None) -> int | None: ...
def fit_max_length(model: Any, max_length: int | None) -> int | None:
    """``max_length`` capped to the model's positions (warned once per pair).

    Longer rows would index past the position table (an ``IndexError`` deep inside
    the model, or silently wrong rotary positions), so a limit above the model's is
    lowered to it.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=128))
    >>> [fit_max_length(model, n) for n in (512, 64, None)]
    [128, 64, 128]
    """
    cap = model_max_length(model)
    if cap is None:
        return max_length
    if max_length is None:
        return cap
    if max_length > cap:
        if (max_length, cap) not in _CAPPED:
            _CAPPED.add((max_length, cap))
            logger.warning(
                "max_length=%d is longer than the model's %d positions; rows are "
                "cut at %d tokens",
                max_length,
                cap,
                cap,
            )
        return cap
    return max_length


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of indices grouped by length (stable: ties keep input order).

    Examples
    --------
    >>> length_batches([5, 1, 3, 1], 2)
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
