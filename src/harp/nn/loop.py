"""The one training loop: AdamW over seeded batches, one step at a time or many.

:class:`Trainer` owns the optimiser and the learning-rate schedule and takes one step
on a batch of encoded rows (:meth:`Trainer.step`): SPICE's online schedule uses it
directly. :func:`train_loop` draws seeded batches and calls it ``steps`` times:
finetuning, the LESS warm-up and the proxy's pretraining all run through it.
Batches are created on the model's device.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harp.core.errors import NumericalError, ParameterError
from harp.core.progress import ProgressBar
from harp.nn.encode import collate, model_device
from harp.nn.loss import forward_losses

if TYPE_CHECKING:  # pragma: no cover
    from harp.nn.stacked import StackedAdapters

__all__ = [
    "LR_SCHEDULES",
    "StackedRun",
    "TrainStep",
    "Trainer",
    "batch_stream",
    "is_out_of_memory",
    "stack_schedule",
    "train_loop",
    "train_stacked",
]

logger = logging.getLogger(__name__)

#: Learning-rate decays after the warm-up.
LR_SCHEDULES = ("cosine", "linear", "constant")

#: Rows of a batch: ``(input_ids, labels)`` token sequences.
Rows = Sequence[tuple[Sequence[int], Sequence[int]]]


def _lr_factor(steps: int, warmup: int, schedule: str) -> Callable[[int], float]:
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


def batch_stream(
    n: int, batch_size: int, steps: int, generator: Any
) -> Iterator[list[int]]:
    """Index batches: consecutive slices of seeded permutations (one per epoch).

    A set no larger than a batch is used whole (shuffled) at every step.
    """
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
    """What an ``on_step`` callback of :func:`train_loop` sees after each step.

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


class Trainer:
    """AdamW and a learning-rate schedule on a model's trainable parameters.

    Parameters
    ----------
    model : torch.nn.Module
        The model (already on its device); trained in place.
    pad_id : int
        Padding token id of its tokenizer.
    lr : float
        Peak learning rate.
    steps : int or None, default None
        Steps of the schedule; None keeps the learning rate constant.
    warmup_ratio : float, default 0.0
        Fraction of ``steps`` of linear warm-up.
    schedule : {"cosine", "linear", "constant"}, default "constant"
        Decay after the warm-up.
    weight_decay : float, default 0.0
        Decoupled weight decay.
    max_grad_norm : float or None, default None
        Gradient-norm clipping threshold.
    description : str, default "training"
        Name of the run in error messages.
    params : sequence of torch.Tensor or None, default None
        The tensors to optimise (None: the model's trainable parameters). Stacked
        adapters give each adapter's trainer its own (:func:`train_stacked`).

    Examples
    --------
    >>> from harp.models import build_proxy, ProxyConfig
    >>> model, tok = build_proxy(ProxyConfig(hidden_size=16, num_layers=1,
    ...                                      num_heads=2, intermediate_size=32))
    >>> trainer = Trainer(model, pad_id=tok.pad_token_id, lr=1e-3)
    >>> ids = tok("ab")["input_ids"]
    >>> loss = trainer.step([(ids, ids)], ["row-0"])
    >>> loss > 0
    True
    """

    def __init__(
        self,
        model: Any,
        *,
        pad_id: int,
        lr: float,
        steps: int | None = None,
        warmup_ratio: float = 0.0,
        schedule: str = "constant",
        weight_decay: float = 0.0,
        max_grad_norm: float | None = None,
        description: str = "training",
        params: Sequence[Any] | None = None,
    ) -> None:
        import torch

        if schedule not in LR_SCHEDULES:
            raise ParameterError(
                f"schedule={schedule!r} is not allowed; expected one of "
                + ", ".join(LR_SCHEDULES)
            )
        self.model = model
        self.params = (
            [p for p in model.parameters() if p.requires_grad]
            if params is None
            else list(params)
        )
        if not self.params:
            raise ParameterError("the model has no trainable parameters")
        self.pad_id = int(pad_id)
        self.max_grad_norm = max_grad_norm
        self.description = description
        self.steps = steps
        self.device = model_device(model)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8
        )
        total = steps or 1
        warmup = int(round(warmup_ratio * total)) if steps else 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_factor(total, warmup, schedule)
        )
        self.steps_done = 0

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, rows: Rows, row_ids: Sequence[str]) -> float:
        """One optimiser step on a batch of ``(input_ids, labels)`` rows.

        The model is in train mode for the step and back in its former mode after.

        Returns
        -------
        float
            The batch loss before the step.

        Raises
        ------
        NumericalError
            When the loss is NaN or infinite (naming the batch's ids).
        """
        was_training = bool(self.model.training)
        self.model.train()
        try:
            input_ids, _, labels = collate(rows, self.pad_id, self.device)
            loss = forward_losses(self.model, input_ids, labels).mean()
            value = float(loss.detach())
            self.check_loss(value, row_ids)
            loss.backward()
            self.update()
        finally:
            if not was_training:
                self.model.eval()
        return value

    def check_loss(self, value: float, row_ids: Sequence[str]) -> None:
        """Raise :class:`NumericalError` (naming the batch) when ``value`` is not
        finite."""
        if not math.isfinite(value):
            total = "" if self.steps is None else f"/{self.steps}"
            raise NumericalError(
                f"{self.description}: the loss became {value} at step "
                f"{self.steps_done + 1}{total}; the batch held example ids "
                f"{list(row_ids)}. Lower the learning rate, check the model "
                "weights, or drop those rows"
            )

    def update(self) -> None:
        """Apply the gradients in ``params``: clip, AdamW, schedule, clear; one step."""
        import torch

        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1


def train_loop(
    model: Any,
    rows: Rows,
    row_ids: Sequence[str],
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
    """AdamW on the model's trainable parameters over seeded batches of ``rows``.

    Batches are consecutive slices of permutations drawn from a torch generator
    seeded with ``seed`` (:func:`batch_stream`). ``on_step`` receives a
    :class:`TrainStep` after every step. The caller seeds torch's global RNG
    (dropout, LoRA initialisation) inside a fork; the model ends in eval mode.

    Returns
    -------
    list of float
        The loss of every step.
    """
    import torch

    if not rows:
        raise ParameterError("no training rows left (all were empty or truncated)")
    trainer = Trainer(
        model,
        pad_id=pad_id,
        lr=lr,
        steps=steps,
        warmup_ratio=warmup_ratio,
        schedule=schedule,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        description=description,
    )
    generator = torch.Generator().manual_seed(int(seed))
    losses: list[float] = []
    ids = tuple(row_ids)
    model.train()
    try:
        with ProgressBar(progress, description, steps) as bar:
            for batch in batch_stream(len(rows), batch_size, steps, generator):
                step_lr = trainer.lr
                value = trainer.step(
                    [rows[i] for i in batch], [row_ids[i] for i in batch]
                )
                losses.append(value)
                if on_step is not None:
                    on_step(
                        TrainStep(
                            trainer.steps_done,
                            steps,
                            step_lr,
                            value,
                            trainer.optimizer,
                            model,
                            ids,
                        )
                    )
                bar.advance(description=f"{description} {value:.3f}")
    finally:
        model.eval()
    logger.debug(
        "%s: %d steps, loss %.4f -> %.4f", description, steps, losses[0], losses[-1]
    )
    return losses


@dataclass(frozen=True)
class StackedRun:
    """One adapter's run in :func:`train_stacked`: its rows, steps and batch seed.

    Attributes
    ----------
    rows : sequence of (input_ids, labels)
        Its encoded training rows.
    row_ids : sequence of str
        Their ids (named when a loss is not finite).
    steps : int
        Its optimiser steps (its own schedule's length).
    seed : int or None, default None
        Seed of its batch order; None: the ``seed`` given to :func:`train_stacked`.
    """

    rows: Rows
    row_ids: Sequence[str]
    steps: int
    seed: int | None = None


def stack_schedule(steps: Sequence[int], slots: int | None = None) -> list[int]:
    """The step at which each run starts when at most ``slots`` train at once.

    Longest run first, each into the slot that frees first (the longest-processing-
    time rule: the stack's length is within 4/3 of the shortest possible), so a slot
    whose run ends takes the next waiting run at once. None, or at least as many
    slots as runs: every run starts at step 0.

    Examples
    --------
    >>> stack_schedule([3, 10, 4, 2], slots=2)
    [4, 0, 0, 7]
    """
    import heapq

    if slots is not None and (
        isinstance(slots, bool) or not isinstance(slots, int) or slots < 1
    ):
        raise ParameterError(f"slots={slots!r} must be None or an int >= 1")
    if slots is None or slots >= len(steps):
        return [0] * len(steps)
    starts = [0] * len(steps)
    free = [(0, slot) for slot in range(slots)]  # (step the slot frees, slot)
    for k in sorted(range(len(steps)), key=lambda k: (-steps[k], k)):
        at, slot = heapq.heappop(free)
        starts[k] = at
        heapq.heappush(free, (at + int(steps[k]), slot))
    return starts


def train_stacked(
    model: Any,
    adapters: StackedAdapters,
    runs: Sequence[StackedRun],
    *,
    pad_id: int,
    batch_size: int,
    lr: float,
    warmup_ratio: float,
    schedule: str,
    weight_decay: float,
    max_grad_norm: float | None,
    seed: int,
    progress: bool,
    description: str,
    slots: int | None = None,
    on_done: Callable[[list[int], list[float]], None] | None = None,
) -> list[list[float]]:
    """:func:`train_loop` for K adapters at once, in one forward per step.

    Adapter ``k`` of ``adapters`` (a :class:`harp.nn.stacked.StackedAdapters`)
    trains on ``runs[k]`` exactly as :func:`train_loop` would train a single
    adapter: the same seeded batches (``runs[k].seed``, else ``seed``), its own
    AdamW, schedule, clipping and step count. Each step stacks the current batch of
    every adapter running, one group of rows per adapter (groups shorter than the
    longest are filled with rows that carry no loss); the loss is the sum of the
    adapters' own batch losses, so each adapter's gradient is its own. With
    ``slots``, at most that many adapters train at once and a run starts as soon as
    a slot frees (:func:`stack_schedule`): runs of very different lengths then
    share the forward passes instead of waiting for the longest; an adapter's
    optimiser state lives only while it trains. The results equal K single runs up
    to floating-point rounding (one adapter at a time: bit for bit): the stacked
    batch is padded to its longest row, which changes the rounding of the others
    (in bf16 weights by a bf16 ulp of the activations: adapter weights agree within
    a few percent, target losses to ~1e-4). AdamW's first, sign-like step and a
    long run at a high learning rate amplify such differences, as they amplify a
    change of device (harp's tiny proxy at 150 steps of lr 3e-3 moves its target
    loss by ~0.5 when its initial adapter is perturbed by 1e-7).

    ``on_done`` receives, after a step, the adapters whose runs ended with it (their
    weights final) and each one's share of the training time (every step's wall
    time split evenly among the adapters in it): a caller can score and keep them
    while the others train. The callback may use the model (the next step sets the
    groups and the training mode it needs); its time is nobody's share.

    Returns
    -------
    list of list of float
        Every adapter's loss at each of its steps.
    """
    import torch

    from harp.nn.encode import IGNORE_INDEX

    if len(runs) != adapters.count:
        raise ParameterError(
            f"{len(runs)} runs for {adapters.count} adapters; give one run each"
        )
    for run in runs:
        if not run.rows:
            raise ParameterError("no training rows left (all were empty or truncated)")
    starts = stack_schedule([run.steps for run in runs], slots)
    ends = [start + run.steps for start, run in zip(starts, runs)]

    def trainer(k: int) -> Trainer:
        return Trainer(
            model,
            pad_id=pad_id,
            lr=lr,
            steps=runs[k].steps,
            warmup_ratio=warmup_ratio,
            schedule=schedule,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            description=f"{description} (adapter {k})",
            params=adapters.parameters(k),
        )

    # Created when its run starts, dropped when it ends (AdamW's moments with it).
    trainers: dict[int, Trainer] = {}
    streams = [
        batch_stream(
            len(run.rows),
            batch_size,
            run.steps,
            torch.Generator().manual_seed(int(seed if run.seed is None else run.seed)),
        )
        for run in runs
    ]
    filler = ([int(pad_id)], [IGNORE_INDEX])  # a row that carries no loss
    device = model_device(model)
    losses: list[list[float]] = [[] for _ in runs]
    length = max(ends)
    shares = [0.0] * len(runs)  # seconds of training owed by each run
    model.train()
    try:
        with ProgressBar(progress, description, length) as bar:
            for step in range(length):
                began = time.perf_counter()
                active = [k for k in range(len(runs)) if starts[k] <= step < ends[k]]
                for k in active:
                    if k not in trainers:
                        trainers[k] = trainer(k)
                batches = [next(streams[k]) for k in active]
                width = max(len(batch) for batch in batches)
                rows: list[tuple[Sequence[int], Sequence[int]]] = []
                for k, batch in zip(active, batches):
                    rows += [runs[k].rows[i] for i in batch]
                    rows += [filler] * (width - len(batch))
                input_ids, _, labels = collate(rows, pad_id, device)
                adapters.train_groups(active)
                # Each adapter's own batch loss: the mean over its group's tokens.
                stacked = forward_losses(model, input_ids, labels).group_means(width)
                values = stacked.detach().tolist()  # one device sync per step
                for k, batch, value in zip(active, batches, values):
                    trainers[k].check_loss(value, [runs[k].row_ids[i] for i in batch])
                    losses[k].append(value)
                # Gradients of the adapters only, whatever the base's requires_grad.
                stacked.sum().backward(
                    inputs=[p for k in active for p in adapters.parameters(k)]
                )
                for k in active:
                    trainers[k].update()
                share = (time.perf_counter() - began) / len(active)
                for k in active:
                    shares[k] += share
                ended = [k for k in active if step + 1 == ends[k]]
                for k in ended:
                    del trainers[k]
                if ended and on_done is not None:
                    on_done(ended, [shares[k] for k in ended])
                    model.train()
                bar.advance()
    finally:
        model.eval()
    return losses


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory (CUDA or another backend)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )
