"""LESS-style warm-up: a short LoRA run on a random slice of the pool, checkpointed.

LESS (Xia et al., 2024) scores training examples with Adam-preconditioned LoRA
gradients taken at a few checkpoints of a brief "warm-up" finetune on a small random
fraction of the pool (5% in the paper). :func:`warmup` runs that finetune and saves,
at ``n_checkpoints`` evenly spaced steps, the LoRA adapter, the Adam moments of every
trainable parameter (``exp_avg``, ``exp_avg_sq``, ``step``) and the learning rate.

On-disk layout of ``out_dir``::

    warmup.json                    # fingerprint, base model, row ids, config, seed,
                                   # checkpoints; "complete": true is written last
    checkpoint-{step}/
        adapter_config.json        # peft LoRA config
        adapter_model.safetensors  # LoRA weights (peft ``save_pretrained``)
        optimizer.safetensors      # "exp_avg.<name>", "exp_avg_sq.<name>" tensors
        checkpoint.json            # step, lr, mean_lr, betas, eps, param names/shapes

With ``by_fingerprint=True`` that layout sits in ``out_dir/warmup-<fingerprint>/``
instead, one sub-folder per distinct run (for shared cache folders).

``<name>`` is the name that ``model.named_parameters()`` gives the trainable
parameter in the peft model returned by :meth:`Checkpoint.load_model`. Nothing is
pickled: every tensor is written with safetensors.

The training loop is the one of :func:`harp.training.finetune` (same batches, AdamW,
learning-rate schedule, clipping and RNG handling), run here with checkpoint hooks:
the adapter of the last checkpoint is bit-identical to ``finetune`` of the same rows
with the same config.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harp.core.context import RunContext
from harp.core.errors import HarpError, ModelError, ParameterError
from harp.core.hashing import fingerprint
from harp.core.io import atomic_directory, atomic_write_json
from harp.training.config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import PeftModel

    from harp.data import ExampleSet

__all__ = ["warmup", "WarmupResult", "Checkpoint", "WARMUP_FILE"]

logger = logging.getLogger(__name__)

#: Name of the manifest at the top of a warm-up folder.
WARMUP_FILE = "warmup.json"
_CHECKPOINT_FILE = "checkpoint.json"
_OPTIMIZER_FILE = "optimizer.safetensors"
_ADAPTER_FILE = "adapter_model.safetensors"
_BETAS = (0.9, 0.999)
_EPS = 1e-8
_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """One saved point of a warm-up run.

    Attributes
    ----------
    path : Path
        The ``checkpoint-{step}`` folder.
    step : int
        Optimiser steps taken when it was saved (1-based count).
    lr : float
        Learning rate of the last optimiser step before the checkpoint.
    mean_lr : float
        Mean learning rate of the steps since the previous checkpoint (LESS weighs
        each checkpoint's scores by it).
    base_model : Path or None
        The base model folder the adapter was trained on (as given to
        :func:`warmup`), used when :meth:`load_model` gets no folder.
    base_fingerprint : str
        :func:`harp.models.model_fingerprint` of that base model.
    """

    path: Path
    step: int
    lr: float
    mean_lr: float = math.nan
    base_model: Path | None = None
    base_fingerprint: str = ""

    def load_model(
        self,
        base_dir: str | Path | None = None,
        *,
        context: RunContext | None = None,
    ) -> PeftModel:
        """The base model with this checkpoint's LoRA adapter, trainable, in eval mode.

        Parameters
        ----------
        base_dir : str or Path or None, default None
            The base model folder; None uses the one the warm-up was run on. A folder
            whose fingerprint differs from the warm-up's base is loaded with a
            warning (the adapter was trained for another model).
        context : RunContext or None, default None
            Device and dtype of the model (the adapter joins it on that device).

        Returns
        -------
        peft.PeftModel
            The adapter's parameters have ``requires_grad=True`` (so per-sample
            gradients can be taken); their ``named_parameters()`` names are the keys
            of :meth:`optimizer_state`.

        Raises
        ------
        harp.core.errors.ModelError
            When the base folder or the adapter cannot be loaded.
        """
        from peft import PeftModel

        from harp.models.loading import (
            load_model,
            model_fingerprint,
            quiet_transformers,
        )

        if base_dir is None:
            if self.base_model is None:
                raise ModelError(f"{self.path}: no base model recorded; pass base_dir")
            base_dir = self.base_model
        base_dir = Path(base_dir).expanduser()
        if self.base_fingerprint:
            found = model_fingerprint(base_dir)
            if found != self.base_fingerprint:
                logger.warning(
                    "%s: base model fingerprint %s differs from the warm-up's %s; "
                    "the adapter was trained on another model",
                    base_dir,
                    found,
                    self.base_fingerprint,
                )
        model, _ = load_model(base_dir, context=context)
        try:
            with warnings.catch_warnings():
                # peft reads transformers' renamed ``is_gradient_checkpointing``.
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing.*"
                )
                with quiet_transformers():
                    peft_model = PeftModel.from_pretrained(
                        model, str(self.path), is_trainable=True
                    )
        except Exception as exc:  # peft raises many types; keep the cause
            raise ModelError(
                f"{self.path}: cannot load the LoRA adapter onto {base_dir}: {exc}"
            ) from exc
        peft_model.eval()
        return peft_model

    def optimizer_state(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Adam's first and second moments of each trainable parameter.

        Returns
        -------
        dict
            ``{name: (exp_avg, exp_avg_sq)}`` (float32 tensors of the parameter's
            shape), keyed like the trainable ``named_parameters()`` of
            :meth:`load_model`'s model, in that order. The moments are AdamW's raw
            running averages (no bias correction; ``step`` is in
            ``checkpoint.json`` and :meth:`info`).
        """
        from safetensors.torch import load_file

        tensors = load_file(str(self.path / _OPTIMIZER_FILE))
        names = self.info()["params"]
        return {
            p["name"]: (
                tensors[f"exp_avg.{p['name']}"],
                tensors[f"exp_avg_sq.{p['name']}"],
            )
            for p in names
        }

    def info(self) -> dict[str, Any]:
        """The contents of the checkpoint's ``checkpoint.json``."""
        return json.loads((self.path / _CHECKPOINT_FILE).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class WarmupResult:
    """A finished warm-up run.

    Attributes
    ----------
    directory : Path
        The warm-up folder (``out_dir``).
    checkpoints : list of Checkpoint
        In step order; the last one is the end of training.
    fingerprint : str
        Cache key of the run (base model, rows, non-default config, seed).
    row_ids : tuple of str
        Ids of the pool rows trained on (the seeded random fraction).
    config : TrainConfig or None
        The training configuration.
    """

    directory: Path
    checkpoints: list[Checkpoint]
    fingerprint: str = ""
    row_ids: tuple[str, ...] = ()
    config: TrainConfig | None = field(default=None, compare=False)

    @classmethod
    def load(cls, directory: str | Path) -> WarmupResult:
        """Reopen a complete warm-up folder.

        Raises
        ------
        harp.core.errors.HarpError
            When the folder holds no complete warm-up.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory)
        if manifest is None or not manifest.get("complete"):
            raise HarpError(f"{directory}: no complete warm-up found ({WARMUP_FILE})")
        return _result_from_manifest(directory, manifest)


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / WARMUP_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _result_from_manifest(directory: Path, manifest: dict[str, Any]) -> WarmupResult:
    base = manifest.get("base_model")
    checkpoints = [
        Checkpoint(
            path=directory / c["name"],
            step=int(c["step"]),
            lr=float(c["lr"]),
            mean_lr=float(c["mean_lr"]),
            base_model=Path(base) if base else None,
            base_fingerprint=manifest.get("base_fingerprint", ""),
        )
        for c in manifest["checkpoints"]
    ]
    return WarmupResult(
        directory=directory,
        checkpoints=checkpoints,
        fingerprint=manifest["fingerprint"],
        row_ids=tuple(manifest["row_ids"]),
        config=TrainConfig(**manifest["config"]),
    )


def _is_intact(directory: Path, manifest: dict[str, Any]) -> bool:
    """Every checkpoint file is there and matches the digest recorded at the end."""
    from harp.core.hashing import file_sha256

    for c in manifest.get("checkpoints", []):
        folder = directory / c["name"]
        digests = c.get("sha256", {})
        for name in (_ADAPTER_FILE, _OPTIMIZER_FILE, _CHECKPOINT_FILE):
            path = folder / name
            if not path.is_file():
                logger.warning("%s: missing; the warm-up is run again", path)
                return False
            if name in digests and file_sha256(path) != digests[name]:
                logger.warning(
                    "%s: does not match its recorded SHA-256 (damaged); the warm-up "
                    "is run again",
                    path,
                )
                return False
    return True


def checkpoint_steps(total: int, n_checkpoints: int) -> list[int]:
    """Evenly spaced checkpoint steps ending at ``total`` (fewer when total is small).

    Parameters
    ----------
    total : int
        Optimiser steps of the run.
    n_checkpoints : int
        Checkpoints wanted.

    Returns
    -------
    list of int
        ``ceil(k * total / n_checkpoints)`` for ``k = 1..n_checkpoints``, without
        repeats.

    Examples
    --------
    >>> checkpoint_steps(100, 4)
    [25, 50, 75, 100]
    >>> checkpoint_steps(3, 4)
    [1, 2, 3]
    """
    steps = [math.ceil(k * total / n_checkpoints) for k in range(1, n_checkpoints + 1)]
    return sorted(set(steps))


def _non_default(config: TrainConfig) -> dict[str, Any]:
    given = config.to_dict()
    default = TrainConfig().to_dict()
    return {k: v for k, v in given.items() if v != default[k]}


def warmup(
    model_dir: str | Path,
    pool: ExampleSet,
    out_dir: str | Path,
    *,
    fraction: float = 0.05,
    config: TrainConfig | None = None,
    n_checkpoints: int = 4,
    context: RunContext | None = None,
    overwrite: bool = False,
    by_fingerprint: bool = False,
) -> WarmupResult:
    """LoRA-train a model on a random fraction of the pool, saving Adam checkpoints.

    The LESS warm-up: ``max(1, round(fraction * len(pool)))`` rows are drawn without
    replacement from the context's ``"warmup"`` stream (kept in pool order), and a LoRA
    adapter is trained on them exactly as :func:`harp.training.finetune` would
    (``config.steps`` steps, or ``config.epochs`` epochs). At ``n_checkpoints``
    evenly spaced steps (the last one is the final step) the adapter, the AdamW
    moments and the learning rate are saved (see the module docstring for the
    layout).

    The run is cached: ``out_dir/warmup.json`` records a fingerprint of the base
    model's content, the selected rows' content, the non-default config fields,
    ``n_checkpoints``, the seed and the dtype; a rerun with the same fingerprint
    returns the
    saved run without training. A *different* run is refused in a folder that holds
    one (complete or interrupted), unless ``overwrite=True`` (which deletes the old
    checkpoints): one folder, one warm-up, as with harp's feature stores. An
    interrupted run with the same fingerprint is restarted from scratch. For a
    shared cache folder pass ``by_fingerprint=True``: each run then lives in its
    own ``out_dir/warmup-<fingerprint[:16]>`` sub-folder, so runs never collide.

    Parameters
    ----------
    model_dir : str or Path
        The base model folder (see :func:`harp.models.load_model`).
    pool : ExampleSet
        The candidate pool.
    out_dir : str or Path
        The warm-up folder (created).
    fraction : float, default 0.05
        Share of the pool to train on, in (0, 1]; at least one row is used.
    config : TrainConfig or None, default None
        Training hyper-parameters (``method`` must be ``"lora"``); None uses
        ``TrainConfig`` defaults seeded from the ``"warmup"`` stream.
        ``config.seed`` seeds the LoRA initialisation and the batch order.
    n_checkpoints : int, default 4
        Checkpoints to save. A run of fewer steps saves one per step.
    context : RunContext or None, default None
        Device and dtype of the model, the seed of the row sample (its
        ``"warmup"`` stream) and the progress display.
    overwrite : bool, default False
        Replace a different warm-up already in ``out_dir``.
    by_fingerprint : bool, default False
        Treat ``out_dir`` as a cache root and use (or create) the sub-folder
        ``warmup-<first 16 hex digits of the fingerprint>``.

    Returns
    -------
    WarmupResult
        The folder and its checkpoints.

    Raises
    ------
    harp.core.errors.ParameterError
        For an empty pool, ``fraction`` outside (0, 1], ``n_checkpoints < 1``, a
        non-LoRA config, or a folder holding a different warm-up.
    harp.core.errors.ModelError
        When the base model cannot be loaded.
    harp.core.errors.NumericalError
        When the loss becomes NaN or infinite.

    Examples
    --------
    >>> from harp.training import TrainConfig
    >>> result = warmup("path/to/model", pool, "runs/warmup",
    ...                 config=TrainConfig(epochs=4))  # doctest: +SKIP
    >>> ckpt = result.checkpoints[-1]  # doctest: +SKIP
    >>> model = ckpt.load_model()  # doctest: +SKIP
    >>> moments = ckpt.optimizer_state()  # {name: (exp_avg, exp_avg_sq)}
    ... # doctest: +SKIP
    """
    from harp.models.loading import model_fingerprint

    context = RunContext() if context is None else context
    if len(pool) == 0:
        raise ParameterError("pool is empty; the warm-up needs at least one row")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0.0 < float(fraction) <= 1.0
    ):
        raise ParameterError(
            f"fraction={fraction!r} is not allowed; expected a number in (0, 1]"
        )
    if isinstance(n_checkpoints, bool) or not isinstance(n_checkpoints, int):
        raise ParameterError(
            f"n_checkpoints={n_checkpoints!r} is not allowed; expected an integer >= 1"
        )
    if n_checkpoints < 1:
        raise ParameterError(
            f"n_checkpoints={n_checkpoints!r} is not allowed; expected an integer >= 1"
        )
    seed = context.int_seed("warmup")
    if config is None:
        config = TrainConfig(seed=seed)
    if not isinstance(config, TrainConfig):
        raise ParameterError(
            f"config must be a TrainConfig, got {type(config).__name__}"
        )
    if config.method != "lora":
        raise ParameterError(
            f"config.method={config.method!r} is not allowed for a warm-up; LESS "
            "trains a LoRA adapter (method='lora')"
        )

    model_dir = Path(model_dir).expanduser()
    out_dir = Path(out_dir).expanduser()
    base_fp = model_fingerprint(model_dir)  # also checks the folder (ModelError)
    n_rows = max(1, round(float(fraction) * len(pool)))
    rng = context.rng("warmup")
    indices = sorted(int(i) for i in rng.choice(len(pool), n_rows, replace=False))
    train = pool.subset(indices)
    key = fingerprint(
        "warmup",
        content=f"{base_fp}:{train.content_hash()}",
        params={
            "config": _non_default(config),
            "n_checkpoints": n_checkpoints,
            # bf16 and fp32 warm-ups are different runs; the device is not.
            "dtype": context.dtype_name,
        },
        seed=seed,
    )

    if by_fingerprint:
        out_dir = out_dir / f"warmup-{key[:16]}"
    manifest = _read_manifest(out_dir)
    if manifest is not None:
        same = manifest.get("fingerprint") == key
        if same and manifest.get("complete") and _is_intact(out_dir, manifest):
            logger.info("reusing the warm-up in %s", out_dir)
            return _result_from_manifest(out_dir, manifest)
        if not same and not overwrite:
            raise ParameterError(
                f"{out_dir}: holds another warm-up (fingerprint "
                f"{manifest.get('fingerprint')}, this one is {key}: a different base "
                "model, pool sample, config or seed); choose another out_dir, delete "
                "the folder, or pass overwrite=True"
            )
        if same:
            logger.info("%s: restarting an incomplete warm-up", out_dir)
    elif out_dir.is_dir() and not overwrite:
        stray = sorted(p.name for p in out_dir.glob("checkpoint-*"))
        if stray:
            raise ParameterError(
                f"{out_dir}: has checkpoint folders ({', '.join(stray[:3])}) but no "
                f"{WARMUP_FILE}; choose another out_dir, delete them, or pass "
                "overwrite=True"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("checkpoint-*"):
        if old.is_dir():
            shutil.rmtree(old)

    record: dict[str, Any] = {
        "format": _FORMAT,
        "fingerprint": key,
        "base_model": str(model_dir.resolve()),
        "base_fingerprint": base_fp,
        "fraction": float(fraction),
        "seed": seed,
        "dtype": context.dtype_name,
        "n_checkpoints": n_checkpoints,
        "config": config.to_dict(),
        "pool_rows": len(pool),
        "pool_hash": pool.content_hash(),
        "row_ids": list(train.ids),
        "checkpoints": [],
        "complete": False,
    }
    atomic_write_json(out_dir / WARMUP_FILE, record)
    logger.info(
        "warm-up: LoRA on %d of %d pool rows, %d checkpoints -> %s",
        len(train),
        len(pool),
        n_checkpoints,
        out_dir,
    )
    saved, dropped = _run(model_dir, train, out_dir, config, n_checkpoints, context)
    from harp.core.hashing import file_sha256

    for c in saved:
        folder = out_dir / c["name"]
        c["sha256"] = {
            name: file_sha256(folder / name)
            for name in (_ADAPTER_FILE, _OPTIMIZER_FILE, _CHECKPOINT_FILE)
        }
    record["checkpoints"] = saved
    record["dropped_ids"] = dropped
    record["complete"] = True
    atomic_write_json(out_dir / WARMUP_FILE, record)
    return _result_from_manifest(out_dir, record)


def _run(
    model_dir: Path,
    train: ExampleSet,
    out_dir: Path,
    config: TrainConfig,
    n_checkpoints: int,
    context: RunContext,
) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`finetune` with LoRA, saving checkpoints as it goes; return their records
    and the ids of rows lost to truncation."""
    from harp.models.loading import load_model
    from harp.nn.loop import TrainStep
    from harp.training.finetune import finetune

    model, tokenizer = load_model(model_dir, context=context)
    saved: list[dict[str, Any]] = []
    segment_lrs: list[float] = []
    segment_losses: list[float] = []
    trained_ids: set[str] = set()
    save_at: set[int] = set()

    def save_checkpoints(info: TrainStep) -> None:
        if info.step == 1:
            trained_ids.update(info.row_ids)
            save_at.update(checkpoint_steps(info.total, n_checkpoints))
            if len(save_at) < n_checkpoints:
                logger.warning(
                    "warm-up: %d checkpoints asked for, but the run has %d "
                    "optimiser steps: saving %d (more rows, epochs or steps give "
                    "more)",
                    n_checkpoints,
                    info.total,
                    len(save_at),
                )
        segment_lrs.append(info.lr)
        segment_losses.append(info.loss)
        if info.step in save_at:
            named = [
                (n, p) for n, p in info.model.named_parameters() if p.requires_grad
            ]
            saved.append(
                _save_checkpoint(
                    info.model,
                    info.optimizer,
                    named,
                    out_dir,
                    step=info.step,
                    lr=info.lr,
                    mean_lr=sum(segment_lrs) / len(segment_lrs),
                    mean_loss=sum(segment_losses) / len(segment_losses),
                )
            )
            segment_lrs.clear()
            segment_losses.clear()

    finetune(
        model,
        tokenizer,
        train,
        config,
        progress=context.progress,
        description="warm-up (lora)",
        on_step=save_checkpoints,
    )
    return saved, [i for i in train.ids if i not in trained_ids]


def _save_checkpoint(
    model: Any,
    optimizer: Any,
    named: list[tuple[str, Any]],
    out_dir: Path,
    *,
    step: int,
    lr: float,
    mean_lr: float,
    mean_loss: float,
) -> dict[str, Any]:
    """Write ``checkpoint-{step}`` (adapter, Adam moments, json) atomically."""
    import torch
    from safetensors.torch import save_file

    from harp.models.loading import quiet_transformers

    name = f"checkpoint-{step}"
    tensors = {"step": torch.tensor(float(step))}
    params_info = []
    for param_name, param in named:
        state = optimizer.state[param]
        # Moments are written from the host (safetensors saves CPU tensors).
        tensors[f"exp_avg.{param_name}"] = state["exp_avg"].detach().cpu().contiguous()
        tensors[f"exp_avg_sq.{param_name}"] = (
            state["exp_avg_sq"].detach().cpu().contiguous()
        )
        params_info.append(
            {
                "name": param_name,
                "shape": list(param.shape),
                "dtype": str(param.dtype).replace("torch.", ""),
            }
        )
    info = {
        "format": _FORMAT,
        "step": step,
        "lr": lr,
        "mean_lr": mean_lr,
        "mean_loss": mean_loss,
        "betas": list(_BETAS),
        "eps": _EPS,
        "weight_decay": optimizer.param_groups[0]["weight_decay"],
        "params": params_info,
    }
    with atomic_directory(out_dir / name, overwrite=True) as tmp:
        with quiet_transformers(False):
            model.save_pretrained(str(tmp), safe_serialization=True)
        save_file(
            tensors,
            str(tmp / _OPTIMIZER_FILE),
            metadata={"step": str(step), "format": "pt"},
        )
        atomic_write_json(tmp / _CHECKPOINT_FILE, info)
    return {
        "name": name,
        "step": step,
        "lr": lr,
        "mean_lr": mean_lr,
        "mean_loss": mean_loss,
    }
