"""Score a model on target domains: response loss and greedy exact match.

Every per-domain number is an :class:`Estimate` (mean, variance of the mean, count),
and the report keeps the per-item values so that later code (HARP's effect noise,
the benchmark's confidence intervals) can bootstrap over target items.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import numpy as np

from harp.core.errors import ParameterError
from harp.core.progress import ProgressBar
from harp.core.records import Example
from harp.nn.encode import (
    collate,
    encode_examples,
    fit_max_length,
    format_prompt,
    length_batches,
    model_device,
    pad_token_id,
)
from harp.nn.loss import forward_losses, output_positions
from harp.training.config import OPTION_METRICS, EvalConfig

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from harp.data import ExampleSet

__all__ = [
    "Estimate",
    "EvalReport",
    "evaluate",
    "evaluate_stacked",
    "response_losses",
    "option_logprobs",
    "option_pairs",
    "generate_greedy",
    "extract_answer",
    "normalize_answer",
    "is_correct",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------
# Estimates and reports
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A mean with its uncertainty: ``mean``, variance of the mean ``var``, count ``n``.

    Parameters
    ----------
    mean : float
        The estimate (NaN when ``n == 0``).
    var : float
        Variance **of the mean** (squared standard error), e.g. ``s² / n``; NaN when
        it cannot be estimated (fewer than two items).
    n : int
        Number of items behind the mean.

    Examples
    --------
    >>> e = Estimate.from_values([1.0, 0.0, 1.0, 1.0])
    >>> e.mean, e.n, round(e.stderr, 3)
    (0.75, 4, 0.25)
    """

    mean: float
    var: float
    n: int

    @property
    def stderr(self) -> float:
        """Standard error of the mean, ``sqrt(var)``."""
        return math.sqrt(self.var) if self.var >= 0 else math.nan

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray) -> Estimate:
        """Mean and ``s² / n`` (sample variance with ddof=1) of per-item values.

        Parameters
        ----------
        values : array-like of float
            Per-item values (NaNs are not allowed; filter them first).

        Returns
        -------
        Estimate
        """
        arr = np.asarray(values, dtype=np.float64)
        n = int(arr.size)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        mean = float(arr.mean())
        var = float(arr.var(ddof=1) / n) if n > 1 else math.nan
        return cls(mean, var, n)

    def merge(self, other: Estimate) -> Estimate:
        """Count-weighted mean of two estimates of the same quantity.

        Parameters
        ----------
        other : Estimate
            Another estimate (e.g. from more items).

        Returns
        -------
        Estimate
            Mean weighted by counts; variance ``Σ (n_i/N)² var_i``.
        """
        total = self.n + other.n
        if total == 0:
            return Estimate(math.nan, math.nan, 0)
        w1, w2 = self.n / total, other.n / total
        mean = w1 * self.mean if self.n else 0.0
        mean += w2 * other.mean if other.n else 0.0
        var = (w1**2 * self.var if self.n else 0.0) + (
            w2**2 * other.var if other.n else 0.0
        )
        return Estimate(float(mean), float(var), total)

    def to_dict(self) -> dict[str, float | int]:
        """``{"mean", "var", "n", "stderr"}`` (NaN kept as float NaN)."""
        return {"mean": self.mean, "var": self.var, "n": self.n, "stderr": self.stderr}

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.stderr:.4f} (n={self.n})"


@dataclass(frozen=True)
class EvalReport:
    """Per-domain scores of one model on one target set.

    Attributes
    ----------
    scores : dict
        ``{domain: {metric: Estimate}}``.
    items : dict
        ``{domain: {metric: ndarray}}``: per-item values in target order within the
        domain (exact match and option accuracy as 0.0/1.0, loss as mean
        response-token NLL in nats, option log-probability in nats).
    ids : dict
        ``{domain: tuple of example ids}``, aligned with ``items``.
    predictions : dict
        ``{domain: tuple of generated texts}`` (empty when exact match was not
        computed).
    meta : dict
        Run facts: seconds per phase, ``max_new_tokens``, item count, …
    """

    scores: dict[str, dict[str, Estimate]]
    items: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    ids: dict[str, tuple[str, ...]] = field(default_factory=dict)
    predictions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def domains(self) -> tuple[str, ...]:
        """Domains, sorted."""
        return tuple(sorted(self.scores))

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metrics present (in the order of the first domain)."""
        for domain in self.domains:
            return tuple(self.scores[domain])
        return ()

    def __getitem__(self, domain: str) -> dict[str, Estimate]:
        return self.scores[domain]

    def estimate(self, domain: str, metric: str) -> Estimate:
        """The estimate of ``metric`` on ``domain``.

        Raises
        ------
        KeyError
            When the domain or metric is not in the report, naming what is.
        """
        if domain not in self.scores:
            raise KeyError(f"domain {domain!r} not in report; have {self.domains}")
        if metric not in self.scores[domain]:
            raise KeyError(f"metric {metric!r} not in report; have {self.metrics}")
        return self.scores[domain][metric]

    def item_values(self, domain: str, metric: str) -> np.ndarray:
        """Per-item values of ``metric`` on ``domain`` (for bootstraps)."""
        return self.items[domain][metric]

    def average(self, metric: str) -> Estimate:
        """Macro average of ``metric`` over domains (every domain weighs the same).

        Parameters
        ----------
        metric : str
            ``"exact_match"`` or ``"loss"``.

        Returns
        -------
        Estimate
            Mean of the domain means, variance ``Σ var_d / D²``, count = all items.
        """
        ests = [self.estimate(d, metric) for d in self.domains]
        if not ests:
            return Estimate(math.nan, math.nan, 0)
        k = len(ests)
        mean = sum(e.mean for e in ests) / k
        var = sum(e.var for e in ests) / k**2
        return Estimate(float(mean), float(var), sum(e.n for e in ests))

    def to_dict(self, *, include_items: bool = False) -> dict[str, Any]:
        """A JSON-ready dict: scores, averages, meta (and per-item values on request).

        Parameters
        ----------
        include_items : bool, default False
            Add ``items``, ``ids`` and ``predictions``; :meth:`from_dict` then
            restores the full report.

        Returns
        -------
        dict
        """
        out: dict[str, Any] = {
            "scores": {
                d: {m: e.to_dict() for m, e in self.scores[d].items()}
                for d in self.domains
            },
            "average": {m: self.average(m).to_dict() for m in self.metrics},
            "meta": dict(self.meta),
        }
        if include_items:
            out["items"] = {
                d: {m: [float(v) for v in arr] for m, arr in by_m.items()}
                for d, by_m in self.items.items()
            }
            out["ids"] = {d: list(v) for d, v in self.ids.items()}
            out["predictions"] = {d: list(v) for d, v in self.predictions.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalReport:
        """Rebuild a report written by :meth:`to_dict` (cached leaf evaluations).

        Parameters
        ----------
        data : mapping
            The output of ``to_dict`` (after a JSON round trip).

        Returns
        -------
        EvalReport
        """
        scores = {
            d: {
                m: Estimate(float(v["mean"]), float(v["var"]), int(v["n"]))
                for m, v in by_m.items()
            }
            for d, by_m in data["scores"].items()
        }
        items = {
            d: {m: np.asarray(v, dtype=np.float64) for m, v in by_m.items()}
            for d, by_m in data.get("items", {}).items()
        }
        ids = {d: tuple(v) for d, v in data.get("ids", {}).items()}
        predictions = {d: tuple(v) for d, v in data.get("predictions", {}).items()}
        return cls(scores, items, ids, predictions, dict(data.get("meta", {})))

    def __str__(self) -> str:
        lines = []
        for domain in self.domains:
            parts = [f"{m}={e}" for m, e in self.scores[domain].items()]
            lines.append(f"{domain}: " + ", ".join(parts))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------------

_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer is\s*:?\s*([^\n]*)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def _canonical_number(text: str) -> str | None:
    """``"1,234.50"``, ``"$1234.5"`` → ``"1234.5"``; None when not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = value.normalize()
    if value == value.to_integral_value():
        value = value.quantize(Decimal(1))
    return format(value, "f")


def normalize_answer(text: str) -> str:
    """Normalise an extracted answer: numbers canonical, else lower-cased text.

    Whitespace is collapsed, and surrounding quotes, brackets and a final period are
    stripped (``"(B)."`` → ``"b"``); a numeric answer becomes its canonical decimal
    form (commas and ``$`` removed, ``72.0`` → ``72``).

    Parameters
    ----------
    text : str
        An extracted answer.

    Returns
    -------
    str
        The normalised answer.

    Examples
    --------
    >>> normalize_answer(" 1,000.00 ")
    '1000'
    >>> normalize_answer("(B).")
    'b'
    """
    stripped = " ".join(text.split())
    number = _canonical_number(stripped)
    if number is not None:
        return number
    stripped = stripped.strip().rstrip(".").strip().strip("\"'()[]*").strip()
    return stripped.lower()


def extract_answer(text: str) -> tuple[str, str] | None:
    """Find a marked final answer in a response.

    Recognises GSM8K's ``#### <number>`` line (kind ``"gsm8k"``; the last such line
    wins) and FLAN-style ``... the answer is X`` (kind ``"answer_is"``; the last
    occurrence wins, up to the end of its line).

    Parameters
    ----------
    text : str
        A reference or generated response.

    Returns
    -------
    tuple of (str, str) or None
        ``(kind, normalised answer)``, or None when the text marks no answer.

    Examples
    --------
    >>> extract_answer("She pays 3*24 = 72 dollars.\\n#### 72")
    ('gsm8k', '72')
    >>> extract_answer("Birds can fly. So the answer is yes.")
    ('answer_is', 'yes')
    >>> extract_answer("72") is None
    True
    """
    gsm = _GSM8K_RE.findall(text)
    if gsm:
        return "gsm8k", normalize_answer(gsm[-1])
    said = _ANSWER_IS_RE.findall(text)
    if said:
        return "answer_is", normalize_answer(said[-1])
    return None


def _last_number(text: str) -> str | None:
    found = _NUMBER_RE.findall(text)
    return _canonical_number(found[-1]) if found else None


def is_correct(prediction: str, reference: str) -> bool:
    """Exact match of a generated response against its reference.

    * Reference with a GSM8K ``#### <number>`` line: the prediction's ``####``
      number, else its ``the answer is`` value, else its last number, must equal the
      reference number (commas, ``$`` and trailing zeros ignored).
    * Reference saying ``the answer is X``: the prediction's own ``answer is`` value
      (or, without one, the whole prediction) must equal ``X`` after
      :func:`normalize_answer` (case-insensitive).
    * Otherwise the texts must be equal after stripping surrounding whitespace
      (case-sensitive: for the synthetic skills the exact string is the task).

    Parameters
    ----------
    prediction : str
        The model's generated response (decoded, EOS removed).
    reference : str
        The target response.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_correct("3 * 24 = 72\\n#### 72", "She pays 72.\\n#### 72")
    True
    >>> is_correct("#### 1,200", "#### 1200")
    True
    >>> is_correct("The answer is 71.", "so\\n#### 72")
    False
    >>> is_correct(" cab ", "cab")
    True
    """
    ref = extract_answer(reference)
    if ref is None:
        return prediction.strip() == reference.strip()
    kind, ref_answer = ref
    pred = extract_answer(prediction)
    if kind == "gsm8k":
        if pred is not None:
            pred_answer: str | None = pred[1]
        else:
            pred_answer = _last_number(prediction)
        return pred_answer is not None and pred_answer == ref_answer
    if pred is not None:
        return pred[1] == ref_answer
    return normalize_answer(prediction) == ref_answer


# ---------------------------------------------------------------------------------
# Model passes
# ---------------------------------------------------------------------------------


def response_losses(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: ExampleSet | Sequence[Any],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = False,
    add_eos: bool = True,
    reduction: str = "mean",
) -> np.ndarray:
    """Per-example mean negative log-likelihood of the response tokens (and EOS).

    Parameters
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
        The model.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer.
    examples : ExampleSet or sequence of Example
        Rows to score, encoded as in training.
    batch_size : int, default 64
        Rows per forward pass (rows are grouped by length).
    max_length : int or None, default None
        Row length cap; None uses the model's ``max_position_embeddings``.
    progress : bool, default False
        Show a progress bar.
    add_eos : bool, default True
        Score the EOS after the response too (False: the response's tokens only).
    reduction : {"mean", "sum"}, default "mean"
        Per row, the mean (nats per token) or the sum (nats) over scored tokens.

    Returns
    -------
    numpy.ndarray
        One value per example; NaN for rows whose response did not fit at all.
    """
    return _scored_rows(
        model,
        tokenizer,
        examples,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        add_eos=add_eos,
        reduction=reduction,
        adapters=None,
    )[0]


def _scored_rows(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: ExampleSet | Sequence[Any],
    *,
    batch_size: int,
    max_length: int | None,
    progress: bool,
    add_eos: bool,
    reduction: str,
    adapters: Any,
    which: Sequence[int] = (0,),
) -> np.ndarray:
    """:func:`response_losses` under one model, or under the adapters ``which`` of a
    stack (a :class:`harp.nn.StackedAdapters`) at once: ``(K, n)``, ``K = 1``
    without.

    With a stack each forward pass holds every listed adapter's copy of the same
    rows, one group per adapter, ``batch_size`` rows in all.
    """
    import torch

    if reduction not in ("mean", "sum"):
        raise ParameterError(f"reduction={reduction!r}: expected 'mean' or 'sum'")
    copies = 1 if adapters is None else len(which)
    limit = fit_max_length(model, max_length) or 1_000_000
    enc = encode_examples(tokenizer, examples, max_length=limit, add_eos=add_eos)
    out = np.full((copies, len(examples)), np.nan, dtype=np.float64)
    rows = list(zip(enc.input_ids, enc.labels))
    batches = length_batches([len(r[0]) for r in rows], max(1, batch_size // copies))
    pad = pad_token_id(tokenizer)
    device = model_device(model)
    was_training = model.training
    model.eval()
    if adapters is not None:
        adapters.train_groups(which)
    try:
        with (
            torch.inference_mode(),
            ProgressBar(progress, "target loss", len(batches), unit="batch") as bar,
        ):
            for batch in batches:
                input_ids, _, labels = collate([rows[i] for i in batch], pad, device)
                if copies > 1:  # adapter-major: one group of these rows per adapter
                    input_ids = input_ids.repeat(copies, 1)
                    labels = labels.repeat(copies, 1)
                losses = forward_losses(model, input_ids, labels)
                nll = losses.row_means() if reduction == "mean" else losses.row_sums()
                values = nll.view(copies, len(batch)).cpu().numpy()
                out[:, [enc.indices[i] for i in batch]] = values
                bar.advance()
    finally:
        if adapters is not None:
            adapters.use(0)
        if was_training:
            model.train()
    return out


def option_logprobs(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: ExampleSet | Sequence[Any],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = False,
) -> list[np.ndarray]:
    """Each option's log-probability as the answer to its row's prompt.

    The score of an option is the **sum** of the log-probabilities of its tokens
    after ``format_prompt(prompt)`` (no EOS, no length normalisation: the options of
    one row are compared as whole answers, as lm-evaluation-harness's ``acc``), then
    normalised over the row's options (a log-softmax), so that the values of a row
    are log-probabilities of a choice among its options.

    Parameters
    ----------
    model, tokenizer
        The model and its tokenizer.
    examples : ExampleSet or sequence of Example
        Rows; those without ``options`` get an empty array.
    batch_size : int, default 64
        (row, option) pairs per forward pass.
    max_length : int or None, default None
        Length cap of prompt + option, as in :func:`response_losses`.
    progress : bool, default False
        Show a progress bar.

    Returns
    -------
    list of numpy.ndarray
        Per row, the normalised log-probability of each option (NaN where an option
        did not fit in ``max_length``).
    """
    return _stacked_option_logprobs(
        model,
        tokenizer,
        examples,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        adapters=None,
    )[0]


def _stacked_option_logprobs(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: ExampleSet | Sequence[Any],
    *,
    batch_size: int,
    max_length: int | None,
    progress: bool,
    adapters: Any,
    which: Sequence[int] = (0,),
) -> list[list[np.ndarray]]:
    """:func:`option_logprobs` under one model or the adapters ``which`` of a stack."""
    sums = -_scored_rows(
        model,
        tokenizer,
        option_pairs(examples),
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        add_eos=False,
        reduction="sum",
        adapters=adapters,
        which=which,
    )
    return [_normalised_options(row_sums, examples) for row_sums in sums]


def option_pairs(examples: ExampleSet | Sequence[Any]) -> list[Example]:
    """One row per (prompt, option) of each multiple-choice row, in order: the rows
    :func:`option_logprobs` scores (id ``"<row id>/<option index>"``, the option as
    the response; rows without options give none).

    Examples
    --------
    >>> from harp.core.records import Example
    >>> row = Example("q", "2+2?", "4", options=("3", "4"), gold=1)
    >>> [(p.id, p.response) for p in option_pairs([row])]
    [('q/0', '3'), ('q/1', '4')]
    """
    return [
        Example(f"{e.id}/{j}", e.prompt, option)
        for e in examples
        for j, option in enumerate(e.options)
    ]


def _normalised_options(
    sums: np.ndarray, examples: ExampleSet | Sequence[Any]
) -> list[np.ndarray]:
    """Each row's option scores as a log-softmax over its options."""
    out: list[np.ndarray] = [np.empty(0) for _ in range(len(examples))]
    start = 0
    for i, e in enumerate(examples):
        if not e.options:
            continue
        scores = sums[start : start + len(e.options)]
        start += len(e.options)
        peak = np.max(scores)
        out[i] = scores - (peak + np.log(np.exp(scores - peak).sum()))
    return out


def _option_metrics(
    logprobs: list[np.ndarray], examples: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the gold option's log-probability, and 1.0 when it is the argmax."""
    gold_lp = np.full(len(examples), np.nan)
    correct = np.full(len(examples), np.nan)
    for i, (lp, e) in enumerate(zip(logprobs, examples)):
        if e.options and np.isfinite(lp).all():
            gold_lp[i] = float(lp[e.gold])
            correct[i] = float(int(np.argmax(lp)) == e.gold)
    return gold_lp, correct


def generate_greedy(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    max_length: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy continuations of raw prompts (already formatted), batched.

    Prompts are grouped by length and left-padded; each batch is decoded with a
    key/value cache, argmax at every step, until every row has produced EOS or
    ``max_new_tokens`` tokens. Position ids follow the attention mask, so a row gives
    the same tokens in a batch as alone (up to float ties). Prompts longer than
    ``max_length - max_new_tokens`` lose their start (BOS kept).

    Parameters
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
        A causal LM.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer.
    prompts : sequence of str
        Texts to continue (apply :func:`format_prompt` first).
    max_new_tokens : int
        Most tokens generated per prompt.
    batch_size : int, default 64
        Prompts per batch.
    max_length : int or None, default None
        Cap on prompt + generated tokens; None uses ``max_position_embeddings``.
    progress : bool, default False
        Show a progress bar.

    Returns
    -------
    list of str
        The decoded continuations (special tokens removed), in prompt order.
    """
    import torch

    if not prompts:
        return []
    eos = tokenizer.eos_token_id
    pad = pad_token_id(tokenizer)
    device = model_device(model)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    limit = fit_max_length(model, max_length)
    if limit is not None and max_new_tokens >= limit:
        # Past the model's positions a token has no position to sit at: the answer
        # is cut where the model's length ends, one prompt token kept.
        logger.warning(
            "max_new_tokens=%d does not fit the model's %d positions; generating at "
            "most %d tokens",
            max_new_tokens,
            limit,
            limit - 1,
        )
        max_new_tokens = limit - 1
    max_prompt = None if limit is None else max(1, limit - max_new_tokens)
    encoded = []
    n_cut = 0
    for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]:
        ids = list(ids)
        while len(ids) > 1 and ids[-1] == eos:
            ids.pop()  # tokenizers that append EOS to every text
        if max_prompt is not None and len(ids) > max_prompt:
            n_cut += 1
            lead = ids[:1] if ids[0] in special else []
            ids = lead + ids[len(ids) - (max_prompt - len(lead)) :]
        encoded.append(ids)
    if n_cut:
        logger.info("%d prompt(s) lost their start to fit the model's length", n_cut)
    outputs: list[str] = [""] * len(prompts)
    batches = length_batches([len(e) for e in encoded], batch_size)
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            ProgressBar(progress, "generating", len(batches), unit="batch") as bar,
        ):
            for batch in batches:
                rows = [encoded[i] for i in batch]
                width = max(len(r) for r in rows)
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, ids in enumerate(rows):
                    input_ids[r, width - len(ids) :] = torch.tensor(ids)
                    mask[r, width - len(ids) :] = 1
                new = _greedy_batch(
                    model,
                    input_ids.to(device),
                    mask.to(device),
                    max_new_tokens,
                    eos,
                    pad,
                )
                for r, i in enumerate(batch):
                    tokens = new[r]
                    if eos is not None and eos in tokens:
                        tokens = tokens[: tokens.index(eos)]
                    outputs[i] = str(tokenizer.decode(tokens, skip_special_tokens=True))
                bar.advance()
    finally:
        if was_training:
            model.train()
    return outputs


def _greedy_batch(
    model: Any,
    input_ids: Any,
    mask: Any,
    max_new_tokens: int,
    eos: int | None,
    pad: int,
) -> list[list[int]]:
    """Greedy decoding of one left-padded batch with a KV cache."""
    import torch

    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    batch, length = input_ids.shape
    # The prompt's pass needs the logits of its last position only.
    last = torch.arange(batch, device=input_ids.device) * length + (length - 1)
    with output_positions(model, last):
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
        )
    # transformers 5.x renamed the KV cache argument and output (past_key_values ->
    # cache) and warns on the old names: use whichever this model's forward takes.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = (
        "cache"
        if "cache" in inspect.signature(base.forward).parameters
        else "past_key_values"
    )
    past = _kv_cache(out)
    next_pos = position_ids[:, -1:] + 1
    finished = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
    generated = []
    for step in range(max_new_tokens):
        logits = out.logits
        token = (logits if logits.dim() == 2 else logits[:, -1, :]).argmax(-1)
        token = torch.where(finished, torch.full_like(token, pad), token)
        generated.append(token)
        if eos is not None:
            finished |= token == eos
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            input_ids=token.unsqueeze(-1),
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            **{cache_arg: past},
        )
        past = _kv_cache(out)
        next_pos = next_pos + 1
    return torch.stack(generated, dim=1).tolist()


def _kv_cache(out: Any) -> Any:
    """The KV cache of a forward's output, under its new name or its old one."""
    return out["cache"] if "cache" in out else out.past_key_values


def _bootstrap_var(values: np.ndarray, samples: int, seed: int, domain: str) -> float:
    if values.size < 2:
        return math.nan
    key = int(hashlib.sha256(domain.encode("utf-8")).hexdigest()[:8], 16)
    rng = np.random.default_rng([seed, key])
    idx = rng.integers(0, values.size, size=(samples, values.size))
    return float(values[idx].mean(axis=1).var(ddof=1))


def evaluate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    target: ExampleSet,
    config: EvalConfig | None = None,
    *,
    progress: bool = False,
) -> EvalReport:
    """Score a model on every domain of a target set.

    Up to four metrics, each per domain (``config.metrics``):

    * ``"loss"`` — mean over items of the per-item mean negative log-likelihood of
      the response tokens and EOS, given ``format_prompt(prompt)`` (lower is better);
    * ``"exact_match"`` — batched greedy decoding from ``format_prompt(prompt)``
      (left padding, KV cache, stop at EOS, ``max_new_tokens`` defaulting to the
      longest reference response + 2 tokens), scored with :func:`is_correct`
      (GSM8K ``####`` numbers and "the answer is X" are extracted; otherwise the
      stripped texts must be equal);
    * ``"option_logprob"`` — for multiple-choice rows, the gold option's
      log-probability normalised over the row's options (:func:`option_logprobs`;
      higher is better, at most 0): continuous, so less noisy than accuracy;
    * ``"option_accuracy"`` — 1 when the gold option has the highest probability
      (ties: the first option wins), else 0.

    Each per-domain value is an :class:`Estimate` whose variance is ``s² / n`` over
    items, or the bootstrap variance when ``config.bootstrap > 0``.

    Parameters
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
        The model (left in ``eval()`` mode).
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer.
    target : ExampleSet
        Target rows; their ``domain`` groups the scores.
    config : EvalConfig or None, default None
        Evaluation settings; None uses :class:`EvalConfig` defaults. Metrics left
        unnamed are the target's own (:func:`~harp.training.config.default_metrics`:
        a multiple-choice target is scored by its options).
    progress : bool, default False
        Show progress bars.

    Returns
    -------
    EvalReport
        Scores, per-item values, ids and predictions per domain.

    Raises
    ------
    harp.core.errors.ParameterError
        When ``target`` is empty or ``config`` is not an :class:`EvalConfig`.
    """
    config = _checked_config(config, target)
    return _evaluate(model, tokenizer, target, config, progress, adapters=None)[0]


def evaluate_stacked(
    model: Any,
    adapters: Any,
    tokenizer: PreTrainedTokenizerBase,
    target: ExampleSet,
    config: EvalConfig | None = None,
    *,
    progress: bool = False,
    at_once: int | None = None,
    which: Sequence[int] | None = None,
) -> list[EvalReport]:
    """:func:`evaluate` for the adapters of a stack, in order.

    The forward-only metrics (``loss``, ``option_logprob``, ``option_accuracy``)
    score ``at_once`` adapters in the same forward passes, one group of the
    target's rows per adapter (``config.batch_size`` rows in all per pass), as
    :func:`harp.nn.train_stacked` trains them; ``exact_match`` decodes adapter by
    adapter. Each report equals :func:`evaluate` of that adapter alone up to
    floating-point rounding; a metric's ``*_seconds`` is the adapter's share.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The base model carrying the stack's hooks.
    adapters : harp.nn.StackedAdapters
        The stack (left applying adapter 0 to every row).
    tokenizer, target, config, progress
        As in :func:`evaluate`.
    at_once : int or None, default None
        Adapters scored in the same passes; None: all of them.
    which : sequence of int or None, default None
        The adapters to score, in this order (None: every adapter of the stack).

    Returns
    -------
    list of EvalReport
        One per adapter of ``which``.
    """
    config = _checked_config(config, target)
    if at_once is not None and (
        isinstance(at_once, bool) or not isinstance(at_once, int) or at_once < 1
    ):
        raise ParameterError(f"at_once={at_once!r} must be None or an int >= 1")
    chosen = list(range(int(adapters.count))) if which is None else list(which)
    step = len(chosen) if at_once is None else at_once
    reports: list[EvalReport] = []
    for first in range(0, len(chosen), max(1, step)):
        group = tuple(chosen[first : first + step])
        reports += _evaluate(
            model, tokenizer, target, config, progress, adapters=adapters, which=group
        )
    return reports


def _checked_config(config: EvalConfig | None, target: ExampleSet) -> EvalConfig:
    config = EvalConfig() if config is None else config
    if not isinstance(config, EvalConfig):
        raise ParameterError(
            f"config must be an EvalConfig, got {type(config).__name__}"
        )
    if len(target) == 0:
        raise ParameterError("target is empty; evaluation needs at least one row")
    return config.for_target(target)


def _evaluate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    target: ExampleSet,
    config: EvalConfig,
    progress: bool,
    *,
    adapters: Any,
    which: Sequence[int] = (0,),
) -> list[EvalReport]:
    """The reports of one model, or of the adapters ``which`` of a stack."""
    copies = 1 if adapters is None else len(which)
    metas: list[dict[str, Any]] = [{"n_items": len(target)} for _ in range(copies)]
    per_metric: list[dict[str, np.ndarray]] = [{} for _ in range(copies)]
    predictions: list[list[str]] = [[] for _ in range(copies)]
    if "loss" in config.fixed_metrics:
        start = time.perf_counter()
        losses = _scored_rows(
            model,
            tokenizer,
            target,
            batch_size=config.batch_size,
            max_length=config.max_length,
            progress=progress,
            add_eos=True,
            reduction="mean",
            adapters=adapters,
            which=which,
        )
        share = (time.perf_counter() - start) / copies
        for k in range(copies):
            metas[k]["loss_seconds"] = share
            per_metric[k]["loss"] = losses[k]
    if set(OPTION_METRICS) & set(config.fixed_metrics):
        start = time.perf_counter()
        stacked = _stacked_option_logprobs(
            model,
            tokenizer,
            target,
            batch_size=config.batch_size,
            max_length=config.max_length,
            progress=progress,
            adapters=adapters,
            which=which,
        )
        share = (time.perf_counter() - start) / copies
        for k, logprobs in enumerate(stacked):
            gold, correct = _option_metrics(logprobs, target)
            per_metric[k]["option_logprob"] = gold
            per_metric[k]["option_accuracy"] = correct
            metas[k]["option_seconds"] = share
    if "exact_match" in config.fixed_metrics:
        max_new = config.max_new_tokens
        if max_new is None:
            enc = tokenizer([e.response for e in target], add_special_tokens=False)
            max_new = max(len(ids) for ids in enc["input_ids"]) + 2
        for k in range(copies):
            if adapters is not None:
                adapters.use(which[k])
            start = time.perf_counter()
            metas[k]["max_new_tokens"] = max_new
            predictions[k] = generate_greedy(
                model,
                tokenizer,
                [format_prompt(e.prompt) for e in target],
                max_new_tokens=max_new,
                batch_size=config.batch_size,
                max_length=config.max_length,
                progress=progress,
            )
            per_metric[k]["exact_match"] = np.array(
                [
                    float(is_correct(p, e.response))
                    for p, e in zip(predictions[k], target)
                ]
            )
            metas[k]["generate_seconds"] = time.perf_counter() - start
        if adapters is not None:
            adapters.use(0)
    return [
        _report(target, config, per_metric[k], predictions[k], metas[k])
        for k in range(copies)
    ]


def _report(
    target: ExampleSet,
    config: EvalConfig,
    per_metric: dict[str, np.ndarray],
    predictions: list[str],
    meta: dict[str, Any],
) -> EvalReport:
    """Per-domain estimates (and items, ids, predictions) of per-item values."""
    scores: dict[str, dict[str, Estimate]] = {}
    items: dict[str, dict[str, np.ndarray]] = {}
    ids: dict[str, tuple[str, ...]] = {}
    preds: dict[str, tuple[str, ...]] = {}
    for domain, idx in target.by_domain().items():
        scores[domain] = {}
        items[domain] = {}
        ids[domain] = tuple(target[i].id for i in idx)
        if predictions:
            preds[domain] = tuple(predictions[i] for i in idx)
        for metric in config.fixed_metrics:
            values = per_metric[metric][idx]
            if metric != "exact_match":
                n_bad = int(np.isnan(values).sum())
                if n_bad:
                    logger.warning(
                        "domain %r: %d item(s) %s were left out of %s",
                        domain,
                        n_bad,
                        "without a response token"
                        if metric == "loss"
                        else "without options, or whose options did not fit",
                        metric,
                    )
                values = values[~np.isnan(values)]
            estimate = Estimate.from_values(values)
            if config.bootstrap > 0:
                var = _bootstrap_var(values, config.bootstrap, config.seed, domain)
                estimate = Estimate(estimate.mean, var, estimate.n)
            scores[domain][metric] = estimate
            items[domain][metric] = values
    return EvalReport(scores, items, ids, preds, meta)
