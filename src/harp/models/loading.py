"""Load, save, adapt (LoRA) and fingerprint local Hugging Face causal language models.

Nothing here downloads: every load is ``local_files_only=True``. Weights are read from
safetensors files; pickle checkpoints (``pytorch_model.bin``) are read only when the
caller opts in with ``allow_pickle=True``, and remote code runs only with
``trust_remote_code=True``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from harp.core.context import RunContext
from harp.core.errors import ModelError, ParameterError
from harp.core.io import atomic_directory
from harp.nn.threads import apply_thread_policy

if TYPE_CHECKING:  # pragma: no cover
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from harp.nn.stacked import StackedAdapters

__all__ = [
    "check_model_dir",
    "check_weights_cover",
    "is_peft",
    "load_model",
    "quiet_transformers",
    "load_tokenizer",
    "save_model",
    "attach_lora",
    "stacked_lora",
    "model_fingerprint",
    "weight_files",
    "LLAMA_ATTENTION_MODULES",
]

logger = logging.getLogger(__name__)

#: LoRA targets used by default on Llama-style models (Llama, Mistral, Qwen, Gemma…).
LLAMA_ATTENTION_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

_SAFE_NAMES = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@contextlib.contextmanager
def quiet_transformers(progress: bool = False) -> Iterator[None]:
    """Hide transformers' own progress bars (loading/writing shards) unless asked."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not progress:
            hf_logging.enable_progress_bar()


def weight_files(path: str | Path) -> dict[str, list[Path]]:
    """The weight files of a model directory, by kind.

    Parameters
    ----------
    path : str or Path
        A model directory.

    Returns
    -------
    dict
        ``{"safetensors": [...], "pickle": [...]}``: the ``*.safetensors`` files and
        index of the directory, and its ``pytorch_model*.bin`` files and index (sorted
        by name). Either list may be empty.
    """
    directory = Path(path)
    safe = sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and (p.name.endswith(".safetensors") or p.name == _SAFE_NAMES[1])
        and not p.name.startswith("adapter_")
    )
    pickle = sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and p.name.startswith("pytorch_model")
        and (p.name.endswith(".bin") or p.name == _PICKLE_NAMES[1])
    )
    return {"safetensors": safe, "pickle": pickle}


def check_model_dir(path: Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """Raise a clear :class:`ModelError` for every way ``path`` is not loadable.

    A GGUF file (a path ending in ``.gguf``, or a file starting with the GGUF magic
    bytes) is accepted too: only its header is checked here
    (:func:`harp.models.gguf.check_gguf_file`); :func:`load_model` and
    :func:`harp.models.resolve_model` convert it.

    Returns
    -------
    dict
        The folder's ``config.json``; for a GGUF file, its header summary
        (``{"format": "gguf", "architecture", ...}``).
    """
    # Imported here: harp.models.gguf imports this module.
    from harp.models.gguf import check_gguf_file, is_gguf_file

    if is_gguf_file(path):
        return check_gguf_file(path)
    if not path.exists():
        raise ModelError(
            f"{path}: model directory not found; pass the path of a local Hugging Face "
            "model folder (config.json + weights + tokenizer files)"
        )
    if not path.is_dir():
        raise ModelError(
            f"{path}: is not a directory; a model is a folder holding config.json, "
            "the weights and the tokenizer files"
        )
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"{path}: no config.json found; is this a Hugging Face model folder? "
            "(save one with model.save_pretrained(dir) or harp.models.save_model)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{config_path}: expected a JSON object")
    _check_config_sizes(config_path, config)
    files = weight_files(path)
    if not files["safetensors"] and not files["pickle"]:
        raise ModelError(
            f"{path}: no model weights found (expected model.safetensors or "
            "pytorch_model.bin); the folder has config.json only — copy the weight "
            "files next to it, or save the model with save_pretrained"
        )
    auto_map = config.get("auto_map") or {}
    if auto_map and not trust_remote_code:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        model_type = config.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ModelError(
                f"{path}: config.json maps to custom code (auto_map: "
                f"{', '.join(sorted(auto_map))}) for model_type {model_type!r}, which "
                "transformers does not know; loading it would run Python code from "
                "the folder. Only if you trust that code: --trust-remote-code (or "
                "RunContext(trust_remote_code=True))"
            )
        logger.info(
            "%s: config.json has an auto_map; using transformers' own %r classes "
            "(trust_remote_code=False)",
            path,
            model_type,
        )
    return config


def load_model(
    path: str | Path,
    *,
    context: RunContext | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal language model and its tokenizer, onto the run's device.

    The model is placed once, here: on ``context``'s device in its dtype. Nothing
    downstream moves it; encoders and loops create their tensors on its device.

    Parameters
    ----------
    path : str or Path
        A Hugging Face model folder: ``config.json``, weights (``model.safetensors``,
        a sharded safetensors index, or — with ``allow_pickle`` —
        ``pytorch_model.bin``)
        and tokenizer files. Or a GGUF file (``.gguf``), converted once into
        ``context.cache_dir/models`` (:func:`harp.models.gguf.cached_gguf_model`)
        and loaded from there.
    trust_remote_code : bool, default False
        Allow a config whose ``auto_map`` points at Python files in the folder. Off by
        default: such code runs with your privileges. The context's
        ``trust_remote_code`` grants it too.
    context : RunContext or None, default None
        Device and dtype policy (None: the default context, ``device="auto"``,
        ``dtype="auto"``: bf16 on a GPU that supports it, fp32 on the CPU).
    allow_pickle : bool, default False
        Read ``pytorch_model.bin`` checkpoints when the folder has no safetensors
        files. Off by default because such files are pickles; safetensors are always
        preferred when both exist. The context's ``allow_pickle`` grants it too.
    progress : bool, default False
        Show transformers' weight-loading progress bar.

    Returns
    -------
    model : transformers.PreTrainedModel
        The model, in ``eval()`` mode.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer; when it has no pad token, the EOS token is used as pad token.

    Raises
    ------
    harp.core.errors.ModelError
        When the path is missing or not a directory, has no ``config.json``, has no
        weights, needs remote code without ``trust_remote_code``, has only pickle
        weights without ``allow_pickle``, or when transformers cannot load it; for
        a GGUF file, as :func:`harp.models.convert_gguf`.

    Examples
    --------
    >>> from harp.models import build_proxy, ProxyConfig, save_model
    >>> import tempfile
    >>> model, tok = build_proxy(ProxyConfig(hidden_size=16, num_layers=1,
    ...                                      num_heads=2, intermediate_size=32))
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_model(model, tok, folder)
    >>> loaded, tok2 = load_model(folder)
    >>> type(loaded).__name__
    'LlamaForCausalLM'
    """
    from transformers import AutoModelForCausalLM

    context = RunContext() if context is None else context
    device = context.torch_device()
    dtype = context.torch_dtype()
    trust_remote_code = trust_remote_code or context.trust_remote_code
    allow_pickle = allow_pickle or context.allow_pickle
    path = Path(path).expanduser()
    # Imported here: harp.models.gguf imports this module.
    from harp.models.gguf import cached_gguf_model, is_gguf_file

    if is_gguf_file(path):
        path = cached_gguf_model(path, context.cache_dir, progress=progress)
    config = check_model_dir(path, trust_remote_code)
    files = weight_files(path)
    if files["safetensors"]:
        use_safetensors = True
    elif allow_pickle:
        use_safetensors = False
        logger.warning("%s: loading pickle weights (allow_pickle=True)", path)
    else:
        raise ModelError(
            f"{path}: only pickle weights found "
            f"({', '.join(p.name for p in files['pickle'])}); harp does not unpickle "
            "files unless asked. If you trust the file: --allow-pickle (or "
            "RunContext(allow_pickle=True)); or "
            "convert it to model.safetensors"
        )
    try:
        with quiet_transformers(progress):
            loaded = AutoModelForCausalLM.from_pretrained(
                str(path),
                local_files_only=True,
                trust_remote_code=trust_remote_code,
                use_safetensors=use_safetensors,
                dtype=dtype,
                output_loading_info=True,
            )
        model, info = cast("tuple[Any, dict[str, Any]]", loaded)
    except Exception as exc:  # transformers raises many types; keep the cause
        raise ModelError(
            f"{path}: transformers could not load the model "
            f"(model_type {config.get('model_type')!r}): {exc}"
        ) from exc
    check_weights_cover(path, info)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    _ensure_pad_token(model, tokenizer, path)
    if device.type != "cpu":
        model.to(device)
    apply_thread_policy(model, context.threads)
    model.eval()
    return model, tokenizer


#: Sizes of a config.json that must be whole numbers >= 1 where present.
_CONFIG_SIZES = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)


def _check_config_sizes(config_path: Path, config: dict[str, Any]) -> None:
    """Refuse sizes no model can have (transformers fails deep inside on them)."""
    for key in _CONFIG_SIZES:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(
                f"{config_path}: {key}={value!r} is not a size; expected a whole "
                "number >= 1 (fix config.json, or save the model again)"
            )


def check_weights_cover(
    path: Path,
    info: dict[str, Any],
    *,
    described_by: str = "config.json",
    fix: str = "Fix config.json (layer count, sizes) to match the weights, or save "
    "the model again",
) -> None:
    """Refuse a model whose weights miss tensors its description asks for.

    transformers fills them with random values and says so in a log line; a
    selection made with such a model is silently meaningless.

    Parameters
    ----------
    path : Path
        The model folder or file, for the message.
    info : dict
        transformers' loading info (``output_loading_info=True``).
    described_by : str, default "config.json"
        What asked for the tensors (a GGUF file's header).
    fix : str
        What the user should do.
    """
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ModelError(
            f"{path}: the weights lack {len(missing)} tensor(s) that {described_by} "
            f"asks for (e.g. {', '.join(missing[:3])}); transformers would fill them "
            f"with random values. {fix}"
        )
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        logger.warning(
            "%s: %d tensor(s) in the weight files are not used by config.json's "
            "model (e.g. %s)",
            path,
            len(unexpected),
            ", ".join(unexpected[:3]),
        )


def load_tokenizer(
    path: str | Path, *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local model folder (for callers that load the model
    another way, e.g. a warm-up checkpoint's adapter).

    Raises
    ------
    harp.core.errors.ModelError
        When the folder holds no usable tokenizer.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise ModelError(
            f"{path}: no usable tokenizer in the model folder ({exc}); save the "
            "tokenizer next to the model with tokenizer.save_pretrained(dir)"
        ) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _ensure_pad_token(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path | str
) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"{path}: the tokenizer has neither a pad nor an EOS token; harp needs "
                "one of them to pad batches"
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("%s: tokenizer has no pad token; using EOS as pad", path)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def save_model(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path,
) -> Path:
    """Save a model (as safetensors) and its tokenizer into one loadable folder.

    A peft model is saved **merged** (a copy's adapters folded into the base
    weights), so the folder is a plain causal LM that :func:`load_model` reads. When
    ``directory`` does not exist yet, the folder is written under a temporary name
    and renamed at the end, so a crash never leaves half a model behind.

    Parameters
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
        The model to save; it is not modified.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer.
    directory : str or Path
        Target folder (created; existing files with the same names are replaced).

    Returns
    -------
    Path
        ``directory``.
    """
    directory = Path(directory).expanduser()
    if is_peft(model):
        model = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
    if directory.exists():
        if not directory.is_dir():
            raise ModelError(f"{directory}: exists and is not a directory")
        _save_files(model, tokenizer, directory)
        return directory
    with atomic_directory(directory) as tmp:
        _save_files(model, tokenizer, tmp)
    return directory


def _save_files(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write the weights and the tokenizer into ``folder``; a full disk is an OSError.

    safetensors reports a failed write as its own error carrying "(os error N)";
    it becomes the OSError it is, so harp's boundary says it in one line.
    """
    try:
        with quiet_transformers(False):
            model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    except OSError:
        raise
    except Exception as exc:
        match = re.search(r"\(os error (\d+)\)", str(exc))
        if match is None:
            raise
        code = int(match[1])
        raise OSError(code, os.strerror(code), str(folder)) from exc


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a peft model (it carries adapters)."""
    with contextlib.suppress(ImportError):
        from peft import PeftModel

        return isinstance(model, PeftModel)
    return False


def default_lora_targets(model: Any) -> list[str] | str:
    """LoRA target modules of ``model``: Llama-style attention projections if present.

    Parameters
    ----------
    model : torch.nn.Module
        The model to adapt.

    Returns
    -------
    list of str or str
        The names from :data:`LLAMA_ATTENTION_MODULES` that occur as module-name
        suffixes in the model, or ``"all-linear"`` when none does.
    """
    import torch

    leaf_names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    found = [m for m in LLAMA_ATTENTION_MODULES if m in leaf_names]
    return found if found else "all-linear"


def attach_lora(
    model: PreTrainedModel,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: list[str] | tuple[str, ...] | str | None = None,
) -> PeftModel:
    """Wrap a causal LM in a fresh peft LoRA adapter; only the adapter trains.

    peft injects the adapter layers **into** ``model`` (in place): afterwards the
    object passed in carries the adapters too. Keep a separate copy (or reload from
    disk) if the untouched base model is still needed. LoRA ``B`` matrices start at
    zero, so the wrapped model initially computes exactly what the base did; ``A`` is
    drawn from torch's global RNG (seed it for reproducibility —
    :func:`harp.training.finetune` does).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The base model.
    r : int, default 8
        LoRA rank.
    alpha : float, default 16
        LoRA alpha (updates are scaled by ``alpha / r``).
    dropout : float, default 0.0
        Dropout on the adapter input.
    target_modules : list of str or str or None, default None
        Module names to adapt; None uses the attention projections
        ``q_proj, k_proj, v_proj, o_proj`` of Llama-style models and falls back to
        ``"all-linear"`` for other architectures.

    Returns
    -------
    peft.PeftModel
        The wrapped model (task type ``CAUSAL_LM``).

    Raises
    ------
    harp.core.errors.ModelError
        When peft cannot find the target modules.
    """
    from peft import LoraConfig, get_peft_model

    if target_modules is None:
        target_modules = default_lora_targets(model)
    elif not isinstance(target_modules, str):
        target_modules = list(target_modules)
        if target_modules == ["all-linear"]:
            target_modules = "all-linear"
    lora_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=int(r),
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft accepts a float
        lora_dropout=float(dropout),
        target_modules=target_modules,
        bias="none",
    )
    try:
        with warnings.catch_warnings():
            # peft reads transformers' renamed ``is_gradient_checkpointing``; the
            # FutureWarning is theirs to fix and means nothing to a harp user.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, lora_config)
    except ValueError as exc:
        raise ModelError(
            f"cannot attach LoRA to {type(model).__name__} with target_modules="
            f"{target_modules!r}: {exc}"
        ) from exc


def stacked_lora(
    model: PreTrainedModel,
    count: int,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: list[str] | tuple[str, ...] | str | None = None,
    seeds: Sequence[int] | None = None,
) -> StackedAdapters:
    """``count`` fresh LoRA adapters on ``model``, to train in one batched forward.

    Each adapter starts exactly where :func:`attach_lora` with the same arguments and
    the same RNG state would start (peft attaches one, its initial weights are read,
    and it is removed again), and the layers adapted are the ones peft adapts. With
    ``seeds`` (one per adapter), adapter ``k`` starts where :func:`attach_lora`
    starts under torch's global RNG seeded with ``seeds[k]`` (the caller's RNG is
    left as it was); without, every adapter starts from the one draw of the current
    RNG. The adapters attach by hooks (:class:`harp.nn.StackedAdapters`): the
    model's modules are untouched, and ``remove()`` restores it.

    Raises
    ------
    harp.core.errors.ModelError
        When peft cannot find the target modules, or adapts a layer that is not a
        plain linear layer (stacked adapters support ``torch.nn.Linear`` only).
    harp.core.errors.ParameterError
        When ``seeds`` does not give one seed per adapter.
    """
    from harp.nn.encode import model_device, seeded
    from harp.nn.stacked import StackedAdapters

    if is_peft(model):
        raise ModelError("stacked adapters need a base model, not a PeftModel")
    settings = dict(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules)
    if seeds is None:
        initial, scaling = _lora_start(model, **settings)
        return StackedAdapters(initial, count=count, scaling=scaling, dropout=dropout)
    if len(seeds) != count:
        raise ParameterError(f"{len(seeds)} seeds for {count} adapters; give one each")
    starts: dict[int, dict[Any, tuple[Any, Any]]] = {}
    scaling = float(alpha) / int(r)
    for seed in seeds:
        if int(seed) not in starts:
            with seeded(int(seed), model_device(model)):
                starts[int(seed)], scaling = _lora_start(model, **settings)
    return StackedAdapters(
        [starts[int(seed)] for seed in seeds],
        count=count,
        scaling=scaling,
        dropout=dropout,
    )


def _lora_start(
    model: PreTrainedModel, **settings: Any
) -> tuple[dict[Any, tuple[Any, Any]], float]:
    """The initial ``(A, B)`` of every layer peft adapts (peft attaches an adapter
    with ``settings`` and the current RNG, and removes it), and the LoRA scale."""
    import torch
    from peft.tuners.lora import LoraLayer

    peft_model = attach_lora(model, **settings)
    initial: dict[Any, tuple[Any, Any]] = {}
    scaling = float(settings["alpha"]) / int(settings["r"])
    unsupported = None
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        if (
            not isinstance(base, torch.nn.Linear)
            or getattr(module, "fan_in_fan_out", False)
            or module.lora_variant
        ):
            unsupported = f"{name} ({type(base).__name__})"
            break
        a_layer: Any = module.lora_A["default"]
        b_layer: Any = module.lora_B["default"]
        initial[base] = (
            a_layer.weight.detach().clone(),
            b_layer.weight.detach().clone(),
        )
        scaling = float(module.scaling["default"])
    peft_model.unload()  # the same modules as before, without the adapter
    if unsupported is not None:
        raise ModelError(
            f"stacked adapters adapt linear layers only; peft adapts {unsupported}"
        )
    return initial, scaling


def weight_digest(path: Path, *, refresh: bool = False) -> str:
    """The SHA-256 of a whole weight file, remembered per file version.

    Memoised in the model cache (``harp.models.fetch.model_cache() / "digests"``) by
    path, size, modification time and inode (:func:`harp.core.hashing.file_sha256`),
    so a large model is read once; ``refresh=True`` reads it again.
    """
    from harp.core.hashing import file_sha256
    from harp.models.fetch import model_cache  # fetch imports this module

    return file_sha256(path, memo_dir=model_cache() / "digests", refresh=refresh)


def model_fingerprint(path: str | Path, *, full: bool = False) -> str:
    """A content fingerprint of a model folder, for cache keys.

    It hashes ``config.json`` and, for every weight file (safetensors and pickle
    checkpoints and their indexes), its name, size and the SHA-256 of every byte
    (:func:`weight_digest`: paid once per version of a file, then remembered by its
    size and modification time). Tokenizer files are included when present (a
    different vocabulary is a different model).

    A GGUF file's fingerprint is :func:`harp.models.gguf.gguf_fingerprint` (its
    size and content, the same way), so that a cache keyed by it needs no
    conversion to be looked up.

    Parameters
    ----------
    path : str or Path
        A model folder (checked as in :func:`load_model`), or a GGUF file.
    full : bool, default False
        Read every weight file again instead of trusting the remembered digests.

    Returns
    -------
    str
        32 hex digits.

    Raises
    ------
    harp.core.errors.ModelError
        When the folder is not a loadable model folder.
    """
    path = Path(path).expanduser()
    # Imported here: harp.models.gguf imports this module.
    from harp.models.gguf import gguf_fingerprint, is_gguf_file

    if is_gguf_file(path):
        return gguf_fingerprint(path, full=full)
    check_model_dir(path, trust_remote_code=True)
    files = weight_files(path)
    entries: list[tuple[str, int, str]] = []
    named = [path / "config.json"]
    named += [path / n for n in ("tokenizer.json", "tokenizer_config.json")]
    for file in named + files["safetensors"] + files["pickle"]:
        if file.is_file():
            digest = weight_digest(file, refresh=full)
            entries.append((file.name, file.stat().st_size, digest))
    payload = json.dumps(entries, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]
