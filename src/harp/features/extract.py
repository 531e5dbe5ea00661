"""Feature extraction into the feature store: a model's gradients or hidden states, or
text embeddings.

Every extraction is keyed by a *spec* (what the features are: model fingerprint,
checkpoint, LoRA shape, projection dim/kind/seed, optimizer, data hash) whose
fingerprint names the store directory. A rerun with the same spec finds the store and
computes only the shards that are missing, so a killed extraction resumes where it
stopped and yields the identical array; another spec never reuses the directory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harp.core.context import RunContext
from harp.core.errors import HarpError, ParameterError
from harp.core.hashing import fingerprint
from harp.core.records import ExampleSet
from harp.execution import worker_cached
from harp.features.store import FeatureStore, estimate_store_bytes, format_bytes

__all__ = [
    "extract_embedding_features",
    "extract_gradient_features",
    "extract_hidden_features",
    "gradient_spec",
    "hidden_spec",
]

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")


def gradient_spec(
    base_dir: str | Path,
    examples: ExampleSet,
    *,
    checkpoint: Any = None,
    dim: int = 8192,
    projection: str = "factored",
    seed: int = 0,
    optimizer: str = "sgd",
    max_length: int = 256,
    lora: dict[str, Any] | None = None,
    dtype: str = "fp32",
) -> dict[str, Any]:
    """The spec that identifies a gradient feature store (see the module docstring).

    The model's dtype is part of it (bf16 and fp32 gradients differ); the device is
    not (the same model gives the same features on any device, within rounding).
    """
    from harp.models.loading import model_fingerprint

    if optimizer not in OPTIMIZERS:
        raise ParameterError(
            f"optimizer={optimizer!r} is not allowed; expected one of {OPTIMIZERS}"
        )
    if (
        checkpoint is not None
        and optimizer == "adam"
        and not hasattr(checkpoint, "optimizer_state")
    ):
        raise ParameterError("optimizer='adam' needs a warm-up checkpoint")
    return {
        "kind": "gradients",
        "model": model_fingerprint(base_dir),
        "checkpoint": None
        if checkpoint is None
        else {"path": Path(checkpoint.path).name, "step": int(checkpoint.step)},
        "lora": lora or _lora_identity(checkpoint, seed),
        "projection": {"dim": int(dim), "kind": projection, "seed": int(seed)},
        "optimizer": optimizer,
        "max_length": int(max_length),
        "data": examples.content_hash(),
        **({} if dtype == "fp32" else {"dtype": dtype}),
    }


def _lora_identity(checkpoint: Any, seed: int) -> dict[str, Any]:
    """What the gradients are taken with respect to.

    The checkpoint's adapter (its config and a hash of its weights and Adam state), or
    the fresh seeded adapter that ``attach_lora`` makes.
    """
    import json

    from harp.core.hashing import sha256_hex

    if checkpoint is None:
        return {
            "adapter": "fresh",
            "r": 8,
            "alpha": 16,
            "targets": "default",
            "seed": seed,
        }
    folder = Path(checkpoint.path)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    digests = {
        name: sha256_hex((folder / name).read_bytes(), 16)
        for name in ("adapter_model.safetensors", "optimizer.safetensors")
        if (folder / name).exists()
    }
    keep = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")
    adapter = {k: config.get(k) for k in keep}
    if isinstance(adapter["target_modules"], list):
        # peft writes a set: its order changes from process to process.
        adapter["target_modules"] = sorted(adapter["target_modules"])
    return {
        "adapter": adapter,
        "weights": digests,
    }


def extract_gradient_features(
    base_dir: str | Path,
    examples: ExampleSet,
    store_root: str | Path,
    *,
    checkpoint: Any = None,
    dim: int = 8192,
    projection: str = "factored",
    seed: int = 0,
    optimizer: str = "sgd",
    batch_size: int = 16,
    max_length: int = 256,
    max_tokens: int | str | None = "auto",
    shard_rows: int = 2048,
    context: RunContext | None = None,
) -> FeatureStore:
    """Projected per-example LoRA gradients of ``examples``, in a feature store.

    Parameters
    ----------
    base_dir : str or Path
        The base model folder.
    examples : ExampleSet
        Rows to featurise (loss on response tokens only).
    store_root : str or Path
        Folder under which the store ``gradients-<fingerprint>`` is created or reused.
    checkpoint : warm-up Checkpoint, optional
        LoRA adapter (and Adam state) to take gradients at; without it a fresh LoRA
        adapter (seeded) on the base model.
    dim : int, default=8192
        Projection dimension (0 keeps the full gradient).
    projection : {"factored", "rademacher", "gaussian"}, default="factored"
        ``"factored"``: a two-sided projection per parameter block
        (:class:`~harp.features.factored.FactoredProjector`; the per-example
        gradient is never formed, the width is at most ``dim``); ``"rademacher"``
        or ``"gaussian"``: a dense projection of the whole flattened gradient.
    seed : int, default=0
        Projection seed (and fresh-adapter seed).
    optimizer : {"sgd", "adam"}, default="sgd"
        ``"adam"`` preconditions with the checkpoint's Adam state (LESS's pool
        features); ``"sgd"`` keeps the plain gradient (LESS's target features).
    batch_size, max_length : int
        Per-sample gradient batch (most rows) and token limit of a row.
    max_tokens : int, "auto" or None, default "auto"
        Token budget of a packed batch (see
        :func:`harp.features.gradients.per_sample_gradients`); ``"auto"`` measures
        it from the free memory of a GPU and keeps fixed batches on the CPU.
    shard_rows : int, default=2048
        Rows per store shard: the unit of resume and of parallel work.
    context : RunContext or None, default=None
        The model's device and dtype, the progress display and the executor. With
        an executor the pending shards run as tasks (see :mod:`harp.execution`):
        each task loads the model from ``base_dir`` (once per worker process, on
        the context's device as that worker resolves it), computes its shard and
        writes it into the store; the store is finalised once every shard is in.
        Without one the shards are computed here, one after another. The features
        are bit-identical either way (same shards, seeded projection) given the
        same device and torch thread count per task.

    Returns
    -------
    FeatureStore
        Opened read-only and complete.
    """
    context = RunContext() if context is None else context
    spec = gradient_spec(
        base_dir,
        examples,
        checkpoint=checkpoint,
        dim=dim,
        projection=projection,
        seed=seed,
        optimizer=optimizer,
        max_length=max_length,
        dtype=context.dtype_name,
    )
    directory = (
        Path(store_root)
        / f"gradients-{fingerprint('gradients', content='', params=spec)[:16]}"
    )
    model_args = dict(
        base_dir=str(base_dir),
        checkpoint=checkpoint,
        dim=dim,
        projection=projection,
        seed=seed,
        optimizer=optimizer,
        context=context.for_worker(),
    )
    state: dict[str, Any] = {}

    def model_and_parts():
        # Built lazily: a complete store needs no model at all.
        if not state:
            state.update(_gradient_parts(**model_args))
        return state

    def out_dim() -> int:
        # A factored projection's width follows the model's blocks: ask the parts.
        width = model_and_parts()["dim"]
        log.info(
            "gradient features of %d rows -> %s (dim %d, about %s on disk)",
            len(examples),
            directory,
            width,
            format_bytes(estimate_store_bytes(len(examples), width, "float32")),
        )
        return width

    def compute_shard(k: int, start: int, stop: int) -> np.ndarray:
        return _gradient_block(
            model_and_parts(),
            examples.subset(range(start, stop)),
            batch_size=batch_size,
            max_length=max_length,
            max_tokens=max_tokens,
            progress=context.progress,
        )

    def shard_job(k: int, start: int, stop: int) -> tuple[Callable, dict[str, Any]]:
        return _gradient_shard_task, {
            "directory": str(directory),
            "shard": k,
            "rows": examples.subset(range(start, stop)),
            "model": model_args,
            "batch_size": batch_size,
            "max_length": max_length,
            "max_tokens": max_tokens,
        }

    return _complete_store(
        directory,
        examples,
        spec,
        out_dim,
        compute_shard,
        shard_rows,
        context.progress,
        executor=context.executor,
        shard_job=shard_job,
    )


def extract_embedding_features(
    examples: ExampleSet,
    store_root: str | Path,
    *,
    encoder: str = "auto",
    batch_size: int = 16,
    shard_rows: int = 8192,
    context: RunContext | None = None,
) -> FeatureStore:
    """Sentence embeddings of ``examples`` (``prompt + response``) in a feature store.

    ``encoder="tfidf"`` fits its IDF on ``examples`` alone, so its features are only
    comparable within one store.

    With an executor in ``context`` (see :func:`extract_gradient_features`), the
    shards of a neural encoder are embedded and written by tasks, each loading the
    encoder once per worker process. TF-IDF depends on the whole corpus and is
    cheap: it is always computed and written here, whatever the executor. A neural
    encoder runs on the context's device.
    """
    from harp.features.text import TextFeaturizer, resolve_encoder

    context = RunContext() if context is None else context
    resolved = resolve_encoder(encoder)
    device = "cpu" if resolved == "tfidf" else context.device_name
    precision = "fp32" if resolved == "tfidf" else context.encoder_dtype_name
    featurizer = TextFeaturizer(
        encoder=resolved,
        batch_size=batch_size,
        progress=context.progress,
        device=device,
        precision=precision,
    )
    spec = {"kind": "embeddings", "encoder": resolved, "data": examples.content_hash()}
    if precision != "fp32":  # fp32 stores keep the key they had before precisions
        spec["precision"] = precision
    directory = (
        Path(store_root)
        / f"embeddings-{fingerprint('embeddings', content='', params=spec)[:16]}"
    )
    texts = examples.texts
    whole: list[np.ndarray] = []

    def embed_all() -> np.ndarray:
        # TF-IDF depends on the whole corpus: embed once, then shard the result.
        if not whole:
            whole.append(featurizer.embed(texts))
        return whole[0]

    def out_dim() -> int:
        if resolved == "tfidf":
            return embed_all().shape[1]
        return featurizer.embed(texts[:1]).shape[1]

    def compute_shard(k: int, start: int, stop: int) -> np.ndarray:
        if resolved == "tfidf":
            return embed_all()[start:stop]
        return featurizer.embed(texts[start:stop])

    def shard_job(k: int, start: int, stop: int) -> tuple[Callable, dict[str, Any]]:
        return _embedding_shard_task, {
            "directory": str(directory),
            "shard": k,
            "texts": list(texts[start:stop]),
            "encoder": resolved,
            "batch_size": batch_size,
            # Settled here: the worker's context has its dtype settled for models.
            "precision": precision,
            "context": context.for_worker(),
        }

    return _complete_store(
        directory,
        examples,
        spec,
        out_dim,
        compute_shard,
        shard_rows,
        context.progress,
        executor=None if resolved == "tfidf" else context.executor,
        shard_job=shard_job,
    )


def hidden_spec(
    base_dir: str | Path,
    examples: ExampleSet,
    *,
    max_length: int = 512,
    dtype: str = "fp32",
) -> dict[str, Any]:
    """The spec that identifies a hidden-state feature store.

    The model (by content fingerprint), the pooling, the token limit, the data and
    the model's dtype when not fp32 (bf16 states differ); not the batch size or the
    device, which change the features only within rounding.
    """
    from harp.models.loading import model_fingerprint

    return {
        "kind": "hidden",
        "model": model_fingerprint(base_dir),
        "layer": "last",
        "pooling": "position-weighted-mean",
        "max_length": int(max_length),
        "data": examples.content_hash(),
        **({} if dtype == "fp32" else {"dtype": dtype}),
    }


def extract_hidden_features(
    base_dir: str | Path,
    examples: ExampleSet,
    store_root: str | Path,
    *,
    batch_size: int = 16,
    max_length: int = 512,
    shard_rows: int = 2048,
    context: RunContext | None = None,
) -> FeatureStore:
    """Position-weighted mean last-layer hidden states of ``examples``, in a store.

    Each row is read as finetuning reads it; see
    :func:`harp.features.hidden.hidden_state_embeddings` for the pooling. Rows are
    unit length (float32).

    Parameters
    ----------
    base_dir : str or Path
        The model folder (from :func:`harp.models.resolve_model`: a local Hugging
        Face folder or the built-in proxy), loaded with
        :func:`harp.models.load_model` on the context's device and dtype.
    examples : ExampleSet
        Rows to featurise.
    store_root : str or Path
        Folder under which the store ``hidden-<fingerprint>`` is created or reused.
    batch_size : int, default 16
        Rows per forward pass.
    max_length : int, default 512
        Token limit of a row (capped by the model's position limit).
    shard_rows : int, default 2048
        Rows per store shard: the unit of resume and of parallel work.
    context : RunContext or None, default None
        Device, dtype, progress and executor, as for
        :func:`extract_gradient_features`: with an executor each shard is a task
        that loads the model once per worker process.

    Returns
    -------
    FeatureStore
        Opened read-only and complete.
    """
    from harp.features.hidden import hidden_state_embeddings
    from harp.models.loading import load_model

    context = RunContext() if context is None else context
    spec = hidden_spec(
        base_dir, examples, max_length=max_length, dtype=context.dtype_name
    )
    directory = (
        Path(store_root)
        / f"hidden-{fingerprint('hidden', content='', params=spec)[:16]}"
    )
    state: dict[str, Any] = {}

    def model_and_tokenizer() -> tuple[Any, Any]:
        # Loaded lazily: a complete store needs no model at all.
        if not state:
            state["parts"] = load_model(base_dir, context=context)
        return state["parts"]

    def embed(rows: ExampleSet) -> np.ndarray:
        model, tokenizer = model_and_tokenizer()
        return hidden_state_embeddings(
            model,
            tokenizer,
            rows,
            batch_size=batch_size,
            max_length=max_length,
            progress=context.progress,
        )

    def out_dim() -> int:
        # The width of what the backbone returns (not always config.hidden_size).
        width = embed(examples.subset(range(1))).shape[1]
        log.info(
            "hidden-state features of %d rows -> %s (dim %d, about %s on disk)",
            len(examples),
            directory,
            width,
            format_bytes(estimate_store_bytes(len(examples), width, "float32")),
        )
        return width

    def compute_shard(k: int, start: int, stop: int) -> np.ndarray:
        return embed(examples.subset(range(start, stop)))

    def shard_job(k: int, start: int, stop: int) -> tuple[Callable, dict[str, Any]]:
        return _hidden_shard_task, {
            "directory": str(directory),
            "shard": k,
            "rows": examples.subset(range(start, stop)),
            "base_dir": str(base_dir),
            "batch_size": batch_size,
            "max_length": max_length,
            "context": context.for_worker(),
        }

    return _complete_store(
        directory,
        examples,
        spec,
        out_dim,
        compute_shard,
        shard_rows,
        context.progress,
        executor=context.executor,
        shard_job=shard_job,
    )


def _complete_store(
    directory: Path,
    examples: ExampleSet,
    spec: dict[str, Any],
    out_dim: Callable[[], int],
    compute_shard: Callable[[int, int, int], np.ndarray],
    shard_rows: int,
    progress: bool,
    *,
    executor: Any = None,
    shard_job: Callable[[int, int, int], tuple[Callable, Any]] | None = None,
):
    """Open the store at ``directory`` if complete; else create or resume and fill it.

    A complete store is opened before anything is computed (not even its width);
    otherwise missing shards are computed, and the store is finalised even when none
    is missing (a crash after the last shard leaves it unfinalised). With an
    ``executor``, ``shard_job(k, start, stop)`` gives the ``(task, argument)`` that
    computes and writes shard ``k`` in a worker; the pending shards are mapped over
    it, then the store is finalised here.
    """
    from harp.features.store import FeatureStore, fill_store

    suspect: list[int] = []
    if (directory / "manifest.json").exists():
        try:
            found = FeatureStore.open(
                directory, expect_spec=spec, expect_ids=examples.ids
            )
        except HarpError:
            pass  # incomplete: resumed below; mismatched: create() says what differs
        else:
            # Every shard is checked against its hash before it is used; a damaged
            # one (reported by name) is computed again below.
            suspect = found.pending_shards(verify=True)
            if not suspect:
                return found
    store = FeatureStore.create(
        directory,
        ids=examples.ids,
        dim=out_dim(),
        dtype="float32",
        spec=spec,
        shard_rows=shard_rows,
    )
    store.drop_damaged(suspect)  # only those: the others were just read
    if executor is None or shard_job is None:
        fill_store(store, compute_shard, progress=progress)
    else:
        from harp.execution import make_executor

        runner = make_executor(executor)
        pending = store.pending_shards()
        jobs = [shard_job(k, *store.shard_range(k)) for k in pending]
        if jobs:
            log.info(
                "feature store %s: %d of %d shards to compute on %s (%d workers)",
                directory,
                len(jobs),
                store.n_shards,
                runner.name,
                runner.n_workers,
            )
            task = jobs[0][0]
            try:
                runner.map(task, [arg for _, arg in jobs], desc=f"features {directory}")
            finally:
                if runner is not executor:
                    runner.shutdown()
        store.finalize()
    return FeatureStore.open(directory, expect_spec=spec, expect_ids=examples.ids)


# ---------------------------------------------------------------- shard tasks
#
# Module-level functions of plain picklable arguments, run by an executor in another
# process (or machine): each opens the store, skips a shard already written (a retry
# of a task that finished, or a shard done before a crash), computes and writes its
# own shard files, and returns a small marker. The model is loaded from its folder
# once per worker process and kept for the next shard of the same spec.


def _gradient_parts(
    *,
    base_dir: str | Path,
    checkpoint: Any,
    dim: int,
    projection: str,
    seed: int,
    optimizer: str,
    context: RunContext,
) -> dict[str, Any]:
    """The model (with its LoRA adapter), tokenizer, projector and preconditioner."""
    from harp.features.gradients import gradient_dim
    from harp.features.projection import RandomProjector, make_projector
    from harp.models.loading import attach_lora, load_model, load_tokenizer
    from harp.nn.encode import seeded

    if checkpoint is not None:
        model = checkpoint.load_model(base_dir, context=context)
        tokenizer = load_tokenizer(base_dir)
    else:
        model, tokenizer = load_model(base_dir, context=context)
        with seeded(seed):
            model = attach_lora(model)
    model.eval()
    projector = make_projector(model, dim, kind=projection, seed=seed)
    in_dim = gradient_dim(model)
    width = in_dim if projector is None else projector.out_dim
    if isinstance(projector, RandomProjector):
        log.info(
            "%d trainable gradient coordinates; a dense projection to %d needs "
            "about %s of memory (%s), plus one batch of activations",
            in_dim,
            width,
            format_bytes(
                projector.nbytes
                if projector.cached
                else projector.block_size * projector.dim * 4
            ),
            "cached" if projector.cached else "streamed",
        )
    else:
        log.info("%d trainable gradient coordinates -> %d features", in_dim, width)
    if projector is not None and width < 0.75 * dim:
        # Not rounding: the model's blocks cannot give that many (a factored block
        # has at most its matrix's entries). Say so rather than cut silently.
        log.warning(
            "dim=%d asked for, but the %s projection of this model gives at most "
            "%d features (its %d gradient coordinates); using %d",
            dim,
            projection,
            width,
            in_dim,
            width,
        )
    return {
        "model": model,
        "tokenizer": tokenizer,
        "projector": projector,
        "preconditioner": (
            checkpoint.optimizer_state() if optimizer == "adam" else None
        ),
        "dim": width,
    }


def _gradient_block(
    parts: dict[str, Any],
    rows: ExampleSet,
    *,
    batch_size: int,
    max_length: int,
    max_tokens: int | str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The projected gradients of ``rows``, one float32 row each."""
    from harp.features.gradients import per_sample_gradients

    block = np.empty((len(rows), parts["dim"]), dtype=np.float32)
    for idx, grads in per_sample_gradients(
        parts["model"],
        parts["tokenizer"],
        rows,
        batch_size=batch_size,
        max_length=max_length,
        max_tokens=max_tokens,
        projector=parts["projector"],
        preconditioner=parts["preconditioner"],
        progress=progress,
    ):
        block[np.asarray(idx)] = grads
    return block


def _writable_store(directory: str):
    """Reopen an existing (incomplete) store for writing, from what is on disk."""
    from harp.features.store import FeatureStore

    found = FeatureStore.open(directory, allow_incomplete=True)
    return FeatureStore.create(
        directory,
        ids=found.ids,
        dim=found.dim,
        dtype=found.dtype,
        spec=found.spec,
        shard_rows=found.shard_rows,
    )


def _gradient_shard_task(job: dict[str, Any]) -> dict[str, Any]:
    """Compute and write one shard of a gradient store (see ``_complete_store``)."""
    from harp.core.hashing import stable_json

    store = _writable_store(job["directory"])
    k = job["shard"]
    if store.is_done(k):
        return {"shard": k, "computed": False}
    model = job["model"]
    checkpoint = model["checkpoint"]
    where = None if checkpoint is None else [str(checkpoint.path), checkpoint.step]
    key = stable_json({**model, "checkpoint": where})
    parts = worker_cached(key, lambda: _gradient_parts(**model))
    block = _gradient_block(
        parts,
        job["rows"],
        batch_size=job["batch_size"],
        max_length=job["max_length"],
        max_tokens=job.get("max_tokens"),
    )
    store.write_shard(k, block)
    return {"shard": k, "computed": True}


def _embedding_shard_task(job: dict[str, Any]) -> dict[str, Any]:
    """Embed and write one shard of an embedding store (neural encoders only)."""
    from harp.features.text import TextFeaturizer

    store = _writable_store(job["directory"])
    k = job["shard"]
    if store.is_done(k):
        return {"shard": k, "computed": False}
    device = job["context"].device_name
    featurizer = worker_cached(
        f"embed:{job['encoder']}:{job['batch_size']}:{device}:{job['precision']}",
        lambda: TextFeaturizer(
            encoder=job["encoder"],
            batch_size=job["batch_size"],
            device=device,
            precision=job["precision"],
        ),
    )
    store.write_shard(k, featurizer.embed(job["texts"]))
    return {"shard": k, "computed": True}


def _hidden_shard_task(job: dict[str, Any]) -> dict[str, Any]:
    """Compute and write one shard of a hidden-state store."""
    from harp.features.hidden import hidden_state_embeddings
    from harp.models.loading import load_model

    store = _writable_store(job["directory"])
    k = job["shard"]
    if store.is_done(k):
        return {"shard": k, "computed": False}
    context = job["context"]
    model, tokenizer = worker_cached(
        f"hidden:{job['base_dir']}:{context.device_name}:{context.dtype_name}",
        lambda: load_model(job["base_dir"], context=context),
    )
    block = hidden_state_embeddings(
        model,
        tokenizer,
        job["rows"],
        batch_size=job["batch_size"],
        max_length=job["max_length"],
    )
    store.write_shard(k, block)
    return {"shard": k, "computed": True}
