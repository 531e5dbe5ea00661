"""Exact per-example gradients of the trainable (LoRA) parameters, in batches.

The gradient of example ``i`` is that of its own loss — the mean next-token
cross-entropy over its response tokens — with respect to the model's trainable
parameters (those with ``requires_grad``; the LoRA ``A``/``B`` matrices of a peft
model), flattened in sorted-name order, optionally Adam-preconditioned as in LESS,
then optionally randomly projected (:class:`~harp.features.projection.RandomProjector`).

Two batched methods compute the exact per-example gradients of a whole batch:

``"hooks"`` (default when it applies)
    One batched forward and one ``torch.autograd.grad`` call of the summed
    per-example losses with respect to the *outputs* of the linear layers that own
    trainable parameters. Rows of a batch do not interact (causal attention, right
    padding, no batch-norm), so the output gradient of row ``i`` is that of its own
    loss, and the per-example weight gradient of ``y = x Wᵀ`` is
    ``Σ_t ∂L_i/∂y_t ⊗ x_t`` (an einsum; the LoGra / "ghost" trick). No parameter
    gradient (``.grad``) is ever formed.
``"vmap"``
    ``torch.func.vmap(torch.func.grad(loss))`` over the batch with
    ``torch.func.functional_call``; trainable parameters are the differentiated
    arguments, frozen ones are passed as constants. Works for any trainable
    parameter, but is several times slower on CPU.

:func:`per_sample_gradients_loop` is the reference (LESS's procedure: one forward and
backward per example, projection every 16 examples).

Padding does not change a row's gradient: batches are right padded and the model is
called without an attention mask, so real tokens never attend to padding (causal
attention) and positions are ``0..n-1`` exactly as for the row alone.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from harp.core.errors import DataError, NumericalError, ParameterError
from harp.nn.encode import (
    collate,
    encode_examples,
    fit_max_length,
    model_device,
    pad_token_id,
)
from harp.nn.loop import is_out_of_memory
from harp.nn.loss import forward_losses, row_losses

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

    from harp.data import ExampleSet
    from harp.features.factored import FactoredProjector
    from harp.features.projection import RandomProjector

__all__ = [
    "token_batches",
    "per_sample_gradients",
    "per_sample_gradients_loop",
    "gradient_dim",
    "trainable_names",
    "adam_direction",
    "GRADIENT_METHODS",
]

logger = logging.getLogger(__name__)

#: Names accepted by ``per_sample_gradients(method=...)``.
GRADIENT_METHODS: tuple[str, ...] = ("auto", "hooks", "vmap")

#: Most bytes of unprojected gradient rows buffered before a projection call.
_PROJECT_BUFFER_BYTES = 256 * 1024**2


def trainable_names(model: Any) -> list[str]:
    """Sorted names of the parameters that require gradients.

    Parameters
    ----------
    model : torch.nn.Module
        A model (a peft LoRA model trains only its adapter).

    Returns
    -------
    list of str
        The names, sorted; this is the order of the flattened gradient.
    """
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def gradient_dim(model: Any) -> int:
    """Number of trainable parameters (length of a flattened gradient).

    Parameters
    ----------
    model : torch.nn.Module
        A model.

    Returns
    -------
    int
        The total number of elements of the parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adam_direction(
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> torch.Tensor:
    """The Adam update direction that gradients would produce (LESS's features).

    ``m = beta1 * exp_avg + (1 - beta1) * g``,
    ``v = beta2 * exp_avg_sq + (1 - beta2) * g²``, result ``m / (sqrt(v) + eps)``,
    elementwise; no bias correction (as in LESS).

    Parameters
    ----------
    grads : torch.Tensor
        ``(n, dim)`` flattened gradients.
    exp_avg, exp_avg_sq : torch.Tensor
        ``(dim,)`` Adam moments of the warm-up optimizer (same flattening order).
    beta1, beta2 : float, default 0.9, 0.999
        Adam's decay rates.
    eps : float, default 1e-8
        Added to ``sqrt(v)``.

    Returns
    -------
    torch.Tensor
        ``(n, dim)`` preconditioned rows.

    Notes
    -----
    LESS's released code divides by ``sqrt(v + eps)``; harp follows the Adam update
    itself, ``sqrt(v) + eps``. The two differ only where ``v`` is ~``eps``.
    """
    import torch

    m = exp_avg.unsqueeze(0) * beta1 + (1.0 - beta1) * grads
    v = exp_avg_sq.unsqueeze(0) * beta2 + (1.0 - beta2) * grads.square()
    return m / (torch.sqrt(v) + eps)


def _flat_moments(
    model: Any, names: list[str], preconditioner: dict[str, Any], device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    missing = [n for n in names if n not in preconditioner]
    if missing:
        raise ParameterError(
            f"preconditioner lacks the Adam moments of {len(missing)} trainable "
            f"parameter(s), e.g. {missing[:3]}; expected a dict name -> (exp_avg, "
            "exp_avg_sq) keyed by the names of trainable_names(model)"
        )
    params = dict(model.named_parameters())
    ms, vs = [], []
    for n in names:
        m, v = preconditioner[n]
        m, v = torch.as_tensor(m), torch.as_tensor(v)
        if m.numel() != params[n].numel() or v.numel() != params[n].numel():
            raise ParameterError(
                f"preconditioner[{n!r}] has {m.numel()}/{v.numel()} elements; the "
                f"parameter has {params[n].numel()}"
            )
        ms.append(m.reshape(-1).float())
        vs.append(v.reshape(-1).float())
    return torch.cat(ms).to(device), torch.cat(vs).to(device)


def _row_ids(examples: Any, rows: Sequence[int]) -> list[str]:
    ids = getattr(examples, "ids", None)
    if ids is None:
        return [str(r) for r in rows]
    return [str(ids[r]) for r in rows]


def _check_finite(
    values: torch.Tensor, examples: Any, rows: Sequence[int], what: str
) -> None:
    import torch

    bad = ~torch.isfinite(values).all(dim=1)
    if bool(bad.any()):
        which = [rows[i] for i in torch.nonzero(bad).flatten().tolist()]
        ids = _row_ids(examples, which)
        raise NumericalError(
            f"{what} of {len(which)} example(s) is NaN or infinite: ids "
            f"{ids[:10]}{' ...' if len(ids) > 10 else ''} (rows {which[:10]}); check "
            "the model weights, the learning rate of the warm-up, or the examples"
        )


def _hook_plan(model: Any, names: list[str]) -> dict[Any, dict[str, str]] | None:
    """Map each linear module owning trainable params to ``{"weight"/"bias": name}``.

    None when some trainable parameter is not the (unshared) weight or bias of a
    ``torch.nn.Linear``: the hooks method cannot serve that model.
    """
    import torch

    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    wanted = set(names)
    plan: dict[Any, dict[str, str]] = {}
    covered: set[str] = set()
    for mod_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for attr in ("weight", "bias"):
            p = getattr(module, attr, None)
            full = f"{mod_name}.{attr}" if mod_name else attr
            if p is not None and p.requires_grad and full in wanted:
                if counts.get(id(p), 0) != 1:
                    return None
                plan.setdefault(module, {})[attr] = full
                covered.add(full)
    return plan if covered == wanted else None


def _batch_hooks(
    model: Any,
    plan: dict[Any, dict[str, str]],
    names: list[str],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    sides: FactoredProjector | None = None,
) -> torch.Tensor:
    """Per-example gradients ``(batch, dim)`` from one batched backward.

    With ``sides`` (a factored projection) each layer's input and output-gradient
    sides are projected before their outer product: the result is the projected
    gradient ``(batch, sides.out_dim)``, and no per-example gradient is formed.
    """
    import torch

    inputs: dict[Any, list[torch.Tensor]] = {m: [] for m in plan}
    outputs: dict[Any, list[torch.Tensor]] = {m: [] for m in plan}

    def hook(module: Any, args: tuple, out: torch.Tensor) -> None:
        inputs[module].append(args[0].detach())
        outputs[module].append(out)

    handles = [m.register_forward_hook(hook) for m in plan]
    try:
        with torch.enable_grad():
            total = forward_losses(model, input_ids, labels).row_means().sum()
            order = [(m, k) for m in plan for k in range(len(outputs[m]))]
            if not order:
                raise ParameterError("no trainable linear layer ran in the forward")
            grads = torch.autograd.grad(
                total, [outputs[m][k] for m, k in order], allow_unused=True
            )
    finally:
        for h in handles:
            h.remove()
    batch = input_ids.shape[0]
    per_param: dict[str, torch.Tensor] = {}
    for (module, k), g_out in zip(order, grads):
        x = inputs[module][k]
        out = outputs[module][k]
        if g_out is None:
            g_out = torch.zeros_like(out)
        g_out = g_out.reshape(batch, -1, g_out.shape[-1]).float()
        x = x.reshape(batch, -1, x.shape[-1]).float()
        spec = plan[module]
        for attr, name in spec.items():
            if sides is not None:
                side_in = x if attr == "weight" else torch.ones_like(x[..., :1])
                g = sides.project_sides(sides.index(name), g_out, side_in)
            elif attr == "weight":
                g = torch.einsum("bto,bti->boi", g_out, x)
            else:
                g = g_out.sum(dim=1)
            per_param[name] = per_param[name] + g if name in per_param else g
    params = dict(model.named_parameters())
    flat = []
    for n in names:
        found = per_param.get(n)
        if found is None:  # the module never ran: the gradient is zero
            width = (
                params[n].numel()
                if sides is None
                else sides.blocks[sides.index(n)].width
            )
            found = torch.zeros((batch, width), device=input_ids.device)
        flat.append(found.reshape(batch, -1))
    return torch.cat(flat, dim=1)


def _batch_vmap(
    model: Any, names: list[str], input_ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-example flattened gradients with ``vmap(grad(functional_call))``."""
    import torch
    from torch.func import functional_call, grad, vmap

    wanted = set(names)
    trainable = {n: p.detach() for n, p in model.named_parameters() if n in wanted}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in wanted}
    frozen.update(dict(model.named_buffers()))

    def loss(params: dict[str, torch.Tensor], ids: torch.Tensor, labs: torch.Tensor):
        out = functional_call(
            model,
            (params, frozen),
            args=(),
            kwargs={"input_ids": ids.unsqueeze(0), "use_cache": False},
            strict=False,
        )
        return row_losses(out.logits, labs.unsqueeze(0)).sum()

    with torch.enable_grad(), warnings.catch_warnings():
        # torch has no batching rule for CPU flash attention: it loops (correctly)
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(trainable, input_ids, labels)
    batch = input_ids.shape[0]
    return torch.cat([grads[n].reshape(batch, -1).float() for n in names], dim=1)


def _encode_chunk(
    tokenizer: Any,
    examples: Any,
    chunk: Sequence[int],
    max_length: int,
    skip_empty: bool,
) -> tuple[list[int], list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    enc = encode_examples(
        tokenizer, [examples[i] for i in chunk], max_length=max_length
    )
    if enc.dropped:
        lost = [chunk[i] for i in enc.dropped]
        ids = _row_ids(examples, lost)
        if not skip_empty:
            raise DataError(
                f"{len(lost)} example(s) keep no response token within "
                f"max_length={max_length}: ids {ids[:10]} (rows {lost[:10]}); raise "
                "max_length, shorten their prompts, or pass skip_empty=True"
            )
        logger.warning(
            "skipping %d example(s) with no response token within max_length=%d: %s",
            len(lost),
            max_length,
            ids[:10],
        )
    rows = [chunk[i] for i in enc.indices]
    return rows, list(zip(enc.input_ids, enc.labels))


def _check_args(batch_size: int, max_length: int, projector: Any, dim: int) -> None:
    if int(batch_size) < 1:
        raise ParameterError(f"batch_size={batch_size!r} is not allowed; expected >= 1")
    if int(max_length) < 2:
        raise ParameterError(f"max_length={max_length!r} is not allowed; expected >= 2")
    if dim == 0:
        raise ParameterError("the model has no trainable parameter (requires_grad)")
    if projector is not None and projector.in_dim != dim:
        raise ParameterError(
            f"the projector expects in_dim={projector.in_dim}, but the model has "
            f"{dim} trainable parameters"
        )


class _EvalMode:
    """Put a model in eval mode (no dropout) and restore its training flag after."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.was_training = bool(getattr(model, "training", False))

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self.model.train()


def per_sample_gradients(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: ExampleSet,
    *,
    batch_size: int = 16,
    max_length: int = 256,
    projector: RandomProjector | None = None,
    preconditioner: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    method: str = "auto",
    skip_empty: bool = False,
    project_rows: int | None = None,
    max_tokens: int | str | None = None,
    progress: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Exact per-example gradients of the trainable parameters, batch by batch.

    For every example, the gradient of its mean response-token loss (prompt tokens
    carry no loss; the template of :func:`harp.training.format_prompt`) with respect
    to the parameters that require gradients, flattened in :func:`trainable_names`
    order; then optionally Adam-preconditioned (:func:`adam_direction`) and
    projected. A generator: memory is bounded by one batch, the buffer of
    ``project_rows`` unprojected rows and one projection block (or the cached
    projection matrix), never by the size of ``examples``.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM, typically a peft LoRA model (only the adapter requires
        gradients). It is run in eval mode (no dropout) and restored afterwards;
        its parameters and their ``.grad`` are left untouched. Gradient
        checkpointing must be off.
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer (with a pad token).
    examples : ExampleSet
        Rows with ``prompt`` and ``response``.
    batch_size : int, default 16
        Examples per batched forward/backward.
    max_length : int, default 256
        Most tokens per row (see :func:`harp.training.encode_examples`).
    projector : RandomProjector, FactoredProjector or None, default None
        Projection of the (preconditioned) gradients; its ``in_dim`` must be
        :func:`gradient_dim` of the model. A :class:`FactoredProjector` of plain
        gradients (no preconditioner, the hooks method) projects each layer's
        input and output-gradient sides inside the backward: the per-example
        gradient is never formed.
    preconditioner : dict or None, default None
        ``{name: (exp_avg, exp_avg_sq)}`` of a warm-up Adam optimizer for every
        trainable parameter; when given, rows are the Adam update direction
        ``m / (sqrt(v) + eps)`` with ``m = beta1·exp_avg + (1-beta1)·g``,
        ``v = beta2·exp_avg_sq + (1-beta2)·g²`` (LESS).
    beta1, beta2 : float, default 0.9, 0.999
        Adam decay rates of the preconditioner.
    eps : float, default 1e-8
        Adam epsilon.
    method : {"auto", "hooks", "vmap"}, default "auto"
        Per-example gradient algorithm (module docstring). ``"auto"`` uses
        ``"hooks"`` when every trainable parameter is the weight or bias of a linear
        layer (LoRA), else ``"vmap"``.
    skip_empty : bool, default False
        Examples that keep no response token within ``max_length`` raise
        :class:`~harp.core.errors.DataError` (naming their ids) when False; when
        True they are skipped with a warning and absent from the yielded row
        indices.
    max_tokens : int, "auto" or None, default None
        Pack batches by a token budget instead of a row count
        (:func:`token_batches`: longest rows first, at most ``batch_size`` rows and
        ``max_tokens`` padded tokens each); rows are then yielded in packed order.
        ``"auto"``: on a GPU, the budget that half the free device memory holds,
        measured on one probe batch before the run and rounded down to a power of
        two (so that GPUs of one kind pack alike; on the CPU: fixed batches).
        Features do not depend on the packing beyond float rounding; a fixed
        ``max_tokens`` makes shards bit-identical across workers. None keeps
        fixed batches of ``batch_size`` rows in order. A batch that runs out of
        device memory is halved and retried.
    project_rows : int or None, default None
        Rows gathered before one projection call (and one yield). Projecting is
        memory bound for few rows (``P`` is read once per call), so small batches
        are grouped: None means ``max(batch_size, min(64, 256 MiB / (4 · dim)))``
        rows, so the buffer of unprojected rows stays under ~256 MiB.
    progress : bool, default False
        Log progress every few batches (INFO).

    Yields
    ------
    rows : numpy.ndarray
        ``(b,)`` int64 positions of the examples in ``examples`` (consecutive groups
        of about ``project_rows`` rows, in order unless ``max_tokens`` packs them).
    features : numpy.ndarray
        ``(b, dim)`` float32 gradients (``dim`` = ``projector.out_dim`` or
        :func:`gradient_dim`).

    Raises
    ------
    harp.core.errors.NumericalError
        When a gradient (or preconditioned row) is NaN or infinite; the message
        names the examples' ids.
    harp.core.errors.DataError
        When an example keeps no response token (unless ``skip_empty``).
    harp.core.errors.ParameterError
        For bad arguments, a projector of the wrong size, or a preconditioner
        missing some trainable parameter.
    """
    import torch

    from harp.features.factored import FactoredProjector

    names = trainable_names(model)
    dim = gradient_dim(model)
    _check_args(batch_size, max_length, projector, dim)
    max_length = fit_max_length(model, int(max_length))
    if max_tokens not in (None, "auto") and (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or max_tokens < 1
    ):
        raise ParameterError(
            f"max_tokens={max_tokens!r} is not allowed; expected >= 1, 'auto' or None"
        )
    if method not in GRADIENT_METHODS:
        raise ParameterError(
            f"method={method!r} is not allowed; expected one of {GRADIENT_METHODS}"
        )
    plan = _hook_plan(model, names) if method in ("auto", "hooks") else None
    if method == "hooks" and plan is None:
        raise ParameterError(
            "method='hooks' needs every trainable parameter to be the (unshared) "
            "weight or bias of a torch.nn.Linear; use method='vmap'"
        )
    use_hooks = plan is not None
    device = model_device(model)
    moments = (
        _flat_moments(model, names, preconditioner, device)
        if preconditioner is not None
        else None
    )
    pad_id = pad_token_id(tokenizer)
    # A factored projection of plain gradients runs inside the backward (the sides
    # of each layer are projected before their outer product); a preconditioned
    # or vmap gradient is formed first and projected after.
    sides = (
        projector
        if isinstance(projector, FactoredProjector) and use_hooks and moments is None
        else None
    )
    if project_rows is None:
        project_rows = max(batch_size, min(64, _PROJECT_BUFFER_BYTES // (4 * dim)))
    elif int(project_rows) < 1:
        raise ParameterError(
            f"project_rows={project_rows!r} is not allowed; expected >= 1 or None"
        )
    if projector is None or sides is not None:
        project_rows = 1  # nothing to amortise: yield every batch
    pending_rows: list[int] = []
    pending: list[torch.Tensor] = []

    def flush() -> tuple[np.ndarray, np.ndarray]:
        grads = pending[0] if len(pending) == 1 else torch.cat(pending)
        if projector is not None and sides is None:
            grads = projector.project(grads)
        # One transfer to the host per flush, in the dtype the store keeps.
        out = grads.detach().to(torch.float32).cpu().numpy()
        rows = np.asarray(pending_rows, dtype=np.int64)
        pending.clear()
        pending_rows.clear()
        return rows, out

    def gradients(
        rows: list[int], encoded: list[tuple[tuple[int, ...], tuple[int, ...]]]
    ) -> torch.Tensor:
        input_ids, _, labels = collate(encoded, pad_id, device)
        if use_hooks:
            assert plan is not None
            grads = _batch_hooks(model, plan, names, input_ids, labels, sides=sides)
        else:
            grads = _batch_vmap(model, names, input_ids, labels)
        _check_finite(grads, examples, rows, "the gradient")
        if moments is not None:
            grads = adam_direction(
                grads, moments[0], moments[1], beta1=beta1, beta2=beta2, eps=eps
            )
            _check_finite(grads, examples, rows, "the preconditioned gradient")
        return grads.detach()

    budget = (
        _estimate_max_tokens(gradients, tokenizer, examples, max_length, device)
        if max_tokens == "auto"
        else max_tokens
    )
    assert budget is None or isinstance(budget, int)
    batches = _batches(tokenizer, examples, batch_size, budget, max_length, skip_empty)
    with _EvalMode(model):
        for b, (rows, encoded) in enumerate(batches):
            if rows:
                for part_rows, grads in _halving_on_oom(
                    gradients, rows, encoded, examples, device
                ):
                    pending.append(grads)
                    pending_rows.extend(part_rows)
            if progress and b % 10 == 0:
                logger.info(
                    "per-sample gradients: batch %d (%d rows)", b + 1, len(rows)
                )
            if pending_rows and len(pending_rows) >= project_rows:
                yield flush()
        if pending_rows:
            yield flush()


Encoded = list[tuple[tuple[int, ...], tuple[int, ...]]]


def token_batches(
    lengths: Sequence[int], max_tokens: int, max_rows: int
) -> list[list[int]]:
    """Pack rows into batches of at most ``max_tokens`` padded tokens.

    Rows are taken longest first (ties by position), and a batch grows while
    ``rows × longest`` stays within ``max_tokens`` and the rows within ``max_rows``:
    the padding of a batch is small and its size follows the hardware's budget, not
    a fixed row count (bergson's ``allocate_batches`` does the same). A row longer than
    ``max_tokens`` gets a batch of its own.

    Examples
    --------
    >>> token_batches([5, 3, 9, 2], max_tokens=12, max_rows=8)
    [[2], [0, 1], [3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (
            (len(current) + 1) * longest > max_tokens or len(current) >= max_rows
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _batches(
    tokenizer: Any,
    examples: Any,
    batch_size: int,
    max_tokens: int | None,
    max_length: int,
    skip_empty: bool,
) -> Iterator[tuple[list[int], Encoded]]:
    """``(row positions, encoded rows)`` per batch: fixed-size chunks in order, or
    packed by a token budget (chunk by chunk, so memory follows a chunk)."""
    n = len(examples)
    if max_tokens is None:
        for start in range(0, n, batch_size):
            chunk = list(range(start, min(start + batch_size, n)))
            yield _encode_chunk(tokenizer, examples, chunk, max_length, skip_empty)
        return
    # Pack within windows of many rows: sorting the whole pool would hold every
    # encoded row at once; a window of 64 batches' worth packs nearly as tightly.
    window = max(batch_size * 64, 1024)
    for start in range(0, n, window):
        chunk = list(range(start, min(start + window, n)))
        rows, encoded = _encode_chunk(
            tokenizer, examples, chunk, max_length, skip_empty
        )
        lengths = [len(ids) for ids, _ in encoded]
        for packed in token_batches(lengths, max_tokens, batch_size):
            yield [rows[j] for j in packed], [encoded[j] for j in packed]


#: Share of the free device memory that a packed batch may use.
_MEMORY_FRACTION = 0.5


def _estimate_max_tokens(
    compute: Any, tokenizer: Any, examples: Any, max_length: int, device: Any
) -> int | None:
    """The token budget of a batch from the memory one probe batch takes.

    A pre-flight measure: the peak memory of the gradients of a few rows, per
    padded token, against the free memory of the device. None on the CPU (fixed
    batches) and when the probe itself does not fit.
    """
    import torch

    if device.type != "cuda" or len(examples) == 0:
        return None
    probe = list(range(min(4, len(examples))))
    rows, encoded = _encode_chunk(tokenizer, examples, probe, max_length, True)
    if not rows:
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    try:
        compute(rows, encoded)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
        if not is_out_of_memory(exc):
            raise
        return None
    peak = torch.cuda.max_memory_allocated(device) - before
    tokens = len(rows) * max(len(ids) for ids, _ in encoded)
    free, _ = torch.cuda.mem_get_info(device)
    budget = int(_MEMORY_FRACTION * free / max(1.0, peak / tokens))
    # Rounded down to a power of two: GPUs of one kind with a little more or less
    # free memory then pack the same batches, hence the same features bit for bit.
    budget = 1 << max(0, budget.bit_length() - 1)
    logger.info(
        "per-example gradients: %.1f MiB per token measured; batches of up to %d "
        "tokens (%.0f%% of %.1f GiB free)",
        peak / tokens / 2**20,
        budget,
        100 * _MEMORY_FRACTION,
        free / 2**30,
    )
    return max(budget, max_length)


def _halving_on_oom(
    compute: Any, rows: list[int], encoded: Encoded, examples: Any, device: Any
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``compute(rows, encoded)``, split in halves (recursively) when it runs out of
    memory; one row that alone does not fit is a clear error."""
    import torch

    try:
        yield rows, compute(rows, encoded)
        return
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
        if not is_out_of_memory(exc):
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if len(rows) == 1:
        (ids,) = _row_ids(examples, rows)
        raise NumericalError(
            f"example {ids} ({len(encoded[0][0])} tokens) does not fit in the memory "
            f"of {device} even alone; lower max_length, use a smaller dtype "
            "(--dtype bf16) or a device with more memory"
        ) from None
    half = len(rows) // 2
    logger.warning(
        "out of memory on a batch of %d rows (%d tokens each at most); halving it",
        len(rows),
        max(len(ids) for ids, _ in encoded),
    )
    yield from _halving_on_oom(compute, rows[:half], encoded[:half], examples, device)
    yield from _halving_on_oom(compute, rows[half:], encoded[half:], examples, device)


def per_sample_gradients_loop(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: ExampleSet,
    *,
    max_length: int = 256,
    projector: RandomProjector | None = None,
    preconditioner: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    project_every: int = 16,
    skip_empty: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Reference: one forward and backward per example, as LESS does.

    Same results as :func:`per_sample_gradients` (up to float rounding), computed
    the slow way: ``loss.backward()`` on each example alone, ``.grad`` flattened,
    preconditioned, and projected in groups of ``project_every`` rows. Used by the
    tests and the throughput benchmark.

    Parameters
    ----------
    model, tokenizer, examples, max_length, projector, preconditioner, beta1, \
beta2, eps, skip_empty
        As in :func:`per_sample_gradients`.
    project_every : int, default 16
        Rows gathered before one projection (LESS uses 16).

    Yields
    ------
    rows : numpy.ndarray
        ``(b,)`` int64 positions in ``examples``.
    features : numpy.ndarray
        ``(b, dim)`` float32 rows.
    """
    import torch

    names = trainable_names(model)
    dim = gradient_dim(model)
    _check_args(project_every, max_length, projector, dim)
    params = dict(model.named_parameters())
    device = model_device(model)
    moments = (
        _flat_moments(model, names, preconditioner, device)
        if preconditioner is not None
        else None
    )
    saved = {n: params[n].grad for n in names}
    pending_rows: list[int] = []
    pending: list[torch.Tensor] = []

    def flush() -> tuple[np.ndarray, np.ndarray]:
        grads = torch.stack(pending)
        _check_finite(grads, examples, pending_rows, "the gradient")
        if moments is not None:
            grads = adam_direction(
                grads, moments[0], moments[1], beta1=beta1, beta2=beta2, eps=eps
            )
            _check_finite(grads, examples, pending_rows, "the preconditioned gradient")
        if projector is not None:
            grads = projector.project(grads)
        out = grads.detach().to("cpu", torch.float32).numpy()
        rows = np.asarray(pending_rows, dtype=np.int64)
        pending.clear()
        pending_rows.clear()
        return rows, out

    try:
        with _EvalMode(model):
            for i in range(len(examples)):
                kept, encoded = _encode_chunk(
                    tokenizer, examples, [i], max_length, skip_empty
                )
                if not kept:
                    continue
                ids, labs = encoded[0]
                input_ids = torch.tensor([ids], device=device)
                labels = torch.tensor([labs], device=device)
                for n in names:
                    params[n].grad = None
                with torch.enable_grad():
                    forward_losses(model, input_ids, labels).mean().backward()
                flat = [
                    params[n].grad.reshape(-1).float()
                    if params[n].grad is not None
                    else torch.zeros(params[n].numel(), device=device)
                    for n in names
                ]
                pending.append(torch.cat(flat))
                pending_rows.append(i)
                if len(pending) >= project_every:
                    yield flush()
            if pending:
                yield flush()
    finally:
        for n in names:
            params[n].grad = saved[n]
