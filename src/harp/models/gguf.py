"""Models from GGUF files: dequantize a llama.cpp checkpoint into a Hugging Face folder.

A ``.gguf`` file (llama.cpp's format: weights, often 4- or 8-bit quantized, plus the
config and the tokenizer as metadata) is the one way a real pretrained model reaches
these machines (DESIGN §4). transformers reads such a file with
``from_pretrained(dir, gguf_file=name)`` and dequantizes it, but the model it returns
keeps a GGUF quantization marker and will not ``save_pretrained``. Here the weights
are moved into a freshly built model of the same class (no quantization config),
cast to the requested dtype and saved as safetensors beside the tokenizer (chat
template included), so that :func:`harp.models.load_model` and every ``--model``
flag read the result like any other local model folder.

A ``.gguf`` path is accepted wherever a model folder is: :func:`cached_gguf_model`
converts it once into ``cache_dir/models/<content fingerprint>`` and reuses that
folder on later runs.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata
import importlib.util
import json
import logging
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from harp._version import __version__
from harp.core.errors import ModelError, ParameterError
from harp.core.hashing import fingerprint, sha256_hex, stable_json
from harp.core.io import atomic_directory, atomic_write_json
from harp.models.loading import (
    model_fingerprint,
    quiet_transformers,
    save_model,
    weight_digest,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_DTYPE",
    "GGUF_DTYPES",
    "GGUF_MARKER",
    "cached_gguf_model",
    "check_gguf_file",
    "convert_gguf",
    "converted_marker",
    "gguf_fingerprint",
    "is_gguf_file",
]

logger = logging.getLogger(__name__)

#: File in a converted folder recording what it was converted from.
GGUF_MARKER = "harp-gguf.json"
#: The ``dtype`` values of a conversion and the torch dtypes they name.
GGUF_DTYPES: Mapping[str, str] = {
    "bf16": "bfloat16",
    "fp32": "float32",
    "fp16": "float16",
}
#: The default ``dtype``: half the size of fp32, and far finer than 4- or 8-bit blocks.
DEFAULT_DTYPE = "bf16"

_MAGIC = b"GGUF"
#: GGUF versions transformers' readers handle (v1 had 32-bit counts and is obsolete).
_VERSIONS = (2, 3)
#: Byte sizes of GGUF's scalar metadata types (type id -> size).
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
#: Metadata keys read before giving up on finding ``general.architecture``.
_MAX_KEYS_SCANNED = 64


# -- recognising and checking a file -------------------------------------------------
def is_gguf_file(path: str | Path) -> bool:
    """Whether ``path`` names a GGUF file rather than a model folder.

    A path ending in ``.gguf`` (any case) counts even when it does not exist, so
    that the error says a GGUF file is missing rather than a folder; any other
    existing file counts when it starts with the GGUF magic bytes.

    Parameters
    ----------
    path : str or Path
        A ``--model`` value.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_gguf_file("models/SmolLM2.Q4_1.GGUF"), is_gguf_file("models/my-llama")
    (True, False)
    """
    path = Path(path).expanduser()
    if path.suffix.lower() == ".gguf":
        return True
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == _MAGIC
    except OSError:
        return False


def check_gguf_file(path: str | Path) -> dict[str, Any]:
    """Raise a clear :class:`ModelError` unless ``path`` is a readable GGUF file.

    Only the header is read (magic bytes, version, counts, and the
    ``general.architecture`` key, which llama.cpp writes first): this takes
    microseconds whatever the file's size. A file damaged further in is caught by
    the conversion.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    dict
        ``{"format": "gguf", "gguf_version", "tensors", "metadata_keys",
        "architecture"}`` (``architecture`` is None when the key is not among the
        first metadata entries).

    Raises
    ------
    harp.core.errors.ModelError
        When the file is missing, a folder, unreadable, not GGUF (bad magic bytes),
        of an unsupported GGUF version, or cut short inside its header.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(
            f"{path}: GGUF file not found; pass the path of a .gguf model file or of "
            "a local Hugging Face model folder"
        )
    if path.is_dir():
        raise ModelError(
            f"{path}: is a directory, not a GGUF file; pass the folder without the "
            ".gguf suffix, or the .gguf file inside it"
        )
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
            if head[:4] != _MAGIC:
                raise ModelError(
                    f"{path}: not a GGUF file (it does not start with the bytes "
                    "'GGUF'); pass a llama.cpp .gguf model file or a Hugging Face "
                    "model folder"
                )
            if len(head) < 24:
                raise ModelError(f"{path}: truncated GGUF file (header cut short)")
            version, tensors, keys = struct.unpack("<IQQ", head[4:])
            if version not in _VERSIONS:
                raise ModelError(
                    f"{path}: GGUF version {version} is not supported (expected "
                    f"{' or '.join(map(str, _VERSIONS))}); re-export the model with "
                    "a recent llama.cpp"
                )
            architecture = _scan_architecture(handle, keys)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the file ({exc.strerror})") from exc
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(
            f"{path}: truncated or corrupt GGUF file (metadata unreadable: {exc})"
        ) from exc
    return {
        "format": "gguf",
        "gguf_version": version,
        "tensors": tensors,
        "metadata_keys": keys,
        "architecture": architecture,
    }


def _read(handle: IO[bytes], size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("unexpected end of file")
    return data


def _read_string(handle: IO[bytes]) -> str:
    (length,) = struct.unpack("<Q", _read(handle, 8))
    if length > 1 << 24:  # no key or architecture name is 16 MiB long: garbage
        raise ValueError(f"implausible string length {length}")
    return _read(handle, length).decode("utf-8")


def _skip_value(handle: IO[bytes], kind: int) -> None:
    if kind in _SCALAR_SIZES:
        _read(handle, _SCALAR_SIZES[kind])
    elif kind == _STRING:
        _read_string(handle)
    elif kind == _ARRAY:
        item, count = struct.unpack("<IQ", _read(handle, 12))
        if item in _SCALAR_SIZES:
            handle.seek(_SCALAR_SIZES[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(handle, item)
    else:
        raise ValueError(f"unknown metadata type {kind}")


def _scan_architecture(handle: IO[bytes], keys: int) -> str | None:
    """``general.architecture`` from the first metadata entries, or None."""
    for _ in range(min(keys, _MAX_KEYS_SCANNED)):
        key = _read_string(handle)
        (kind,) = struct.unpack("<I", _read(handle, 4))
        if key == "general.architecture" and kind == _STRING:
            return _read_string(handle)
        _skip_value(handle, kind)
    return None


def gguf_fingerprint(path: str | Path, *, full: bool = False) -> str:
    """A content fingerprint of a GGUF file, for cache keys.

    The same policy as :func:`harp.models.model_fingerprint`: the file's size and
    SHA-256, from three 4 MiB samples when it is larger than 256 MiB unless
    ``full=True``. The file's name and place do not enter it: a renamed or copied
    file is the same model.

    Parameters
    ----------
    path : str or Path
        A GGUF file (checked with :func:`check_gguf_file`).
    full : bool, default False
        Read the file again instead of trusting its remembered digest.

    Returns
    -------
    str
        32 hex digits.
    """
    path = Path(path).expanduser()
    check_gguf_file(path)
    entry = ["gguf", path.stat().st_size, weight_digest(path, refresh=full)]
    return sha256_hex(stable_json(entry), 32)


# -- converting ----------------------------------------------------------------------
def _check_dtype(dtype: object) -> str:
    if not isinstance(dtype, str) or dtype not in GGUF_DTYPES:
        raise ParameterError(
            f"dtype={dtype!r} is not allowed; expected one of "
            f"{', '.join(repr(d) for d in GGUF_DTYPES)}"
        )
    return dtype


def _require_gguf_package(path: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"{path}: reading GGUF files needs the 'gguf' package: pip install gguf"
        )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def _dequantize_bar(progress: bool) -> Iterator[None]:
    """Silence the tqdm bar of transformers' GGUF loader unless ``progress``.

    That loader draws its bar with tqdm directly, outside the logging switch that
    :func:`quiet_transformers` turns off; a library must not print unasked.
    """
    legacy: Any = None
    with contextlib.suppress(ImportError):  # another transformers layout: no patch
        from transformers import modeling_gguf_pytorch_utils as legacy
    bar = getattr(legacy, "tqdm", None)
    if progress or bar is None:
        yield
        return
    setattr(legacy, "tqdm", functools.partial(bar, disable=True))
    try:
        yield
    finally:
        setattr(legacy, "tqdm", bar)


def _dequantize(
    path: Path, architecture: str | None, progress: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """transformers' dequantized model (fp32) and tokenizer of a GGUF file."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        from transformers import GgufConfig

        # Without it, newer transformers may keep the weights in packed GGUF blocks
        # (custom modules) when a kernel is installed; harp wants plain tensors.
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    try:
        with quiet_transformers(progress), _dequantize_bar(progress):
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent),
                gguf_file=path.name,
                dtype=torch.float32,
                local_files_only=True,
                **kwargs,
            )
            tokenizer = AutoTokenizer.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True
            )
    except Exception as exc:  # transformers raises many types; keep the cause
        arch = f"architecture {architecture!r}" if architecture else "this file"
        if "not supported" in str(exc) or "Unrecognized configuration" in str(exc):
            raise ModelError(
                f"{path}: transformers {transformers.__version__} cannot load GGUF "
                f"{arch} as a causal LM ({_one_line(exc)}); convert the original "
                "checkpoint instead, or upgrade transformers"
            ) from exc
        raise ModelError(
            f"{path}: transformers {transformers.__version__} could not read "
            f"{arch} (truncated or corrupt file?): {_one_line(exc)}"
        ) from exc
    return model, tokenizer


def _plain_copy(model: PreTrainedModel, dtype: str, path: Path) -> PreTrainedModel:
    """The same weights in a freshly built model of the same class, cast to ``dtype``.

    The dequantized model keeps transformers' GGUF quantizer attached and refuses
    ``save_pretrained``; a model built from its config without
    ``quantization_config`` has no such state. Building it through
    ``from_pretrained(None, state_dict=...)`` skips a random initialisation that
    would cost seconds on a real model, and reports keys that do not fit.
    """
    import torch

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = path.stem  # not the folder it happened to be read from
    torch_dtype = getattr(torch, GGUF_DTYPES[dtype])
    loaded: Any  # a (model, loading info) pair, which transformers' stub omits
    with quiet_transformers(False):
        loaded = type(model).from_pretrained(
            None,
            config=config,
            state_dict=model.state_dict(),
            dtype=torch_dtype,
            output_loading_info=True,
        )
    fresh, info = loaded
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise ModelError(
            f"{path}: the dequantized weights do not fit a plain "
            f"{type(fresh).__name__} ({_one_line(ValueError(problems or info))})"
        )
    if getattr(config, "tie_word_embeddings", False):
        out, inp = fresh.get_output_embeddings(), fresh.get_input_embeddings()
        if out is not None and out.weight is not inp.weight:
            # A broken tie would save a second, diverging output matrix.
            raise ModelError(
                f"{path}: the rebuilt model lost its tied input/output embeddings"
            )
    fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.eval()
    return fresh


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _convert_into(
    path: Path,
    out: Path,
    *,
    dtype: str,
    overwrite: bool,
    progress: bool,
    provenance: Mapping[str, Any] | None = None,
    header: dict[str, Any] | None = None,
    content: str | None = None,
) -> dict[str, Any]:
    """Convert ``path`` into the folder ``out`` (atomically); return its marker.

    Raises FileExistsError when ``out`` appeared meanwhile and not ``overwrite``.
    """
    import transformers

    header = check_gguf_file(path) if header is None else header
    _require_gguf_package(path)
    content = gguf_fingerprint(path) if content is None else content
    start = time.perf_counter()
    model, tokenizer = _dequantize(path, header["architecture"], progress)
    plain = _plain_copy(model, dtype, path)
    del model  # a second full copy of the weights is not needed any more
    n_params = sum(p.numel() for p in plain.parameters())
    with atomic_directory(out, overwrite=overwrite) as tmp:
        save_model(plain, tokenizer, tmp)
        marker = {
            "fingerprint": _cache_key(content, dtype),
            "source": {
                "name": path.name,
                "bytes": path.stat().st_size,
                "content": content,
                "architecture": header["architecture"],
            },
            "dtype": dtype,
            "model_type": plain.config.model_type,
            "parameters": int(n_params),
            "model": model_fingerprint(tmp),
            "seconds": round(time.perf_counter() - start, 2),
            "versions": {
                "harp": __version__,
                "transformers": transformers.__version__,
                "gguf": importlib.metadata.version("gguf"),
            },
            **dict(provenance or {}),
        }
        atomic_write_json(tmp / GGUF_MARKER, marker)
        size = _folder_bytes(tmp)
    logger.info(
        "converted %s in %.1f s: %s, %.1fM parameters, %s, %.0f MB -> %s",
        path.name,
        marker["seconds"],
        marker["model_type"],
        n_params / 1e6,
        dtype,
        size / 1e6,
        out,
    )
    return marker


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = DEFAULT_DTYPE,
    overwrite: bool = False,
    progress: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Convert a GGUF model file into a Hugging Face model folder.

    The file's quantized blocks are dequantized by transformers, moved into a plain
    model of the same class (e.g. ``LlamaForCausalLM``; tied embeddings stay tied)
    and saved as safetensors in ``dtype``, beside the tokenizer rebuilt from the
    file's metadata (its chat template included). A ``harp-gguf.json`` marker
    records the source file's name, size and content fingerprint, the dtype, the
    folder's :func:`harp.models.model_fingerprint` and the library versions. The
    folder is written under a temporary name beside ``out_dir`` and renamed at the
    end, so a crash never leaves half a model behind.

    Parameters
    ----------
    gguf_path : str or Path
        A llama.cpp ``.gguf`` file of an architecture transformers reads (Llama,
        Mistral, Qwen2/3, Gemma…).
    out_dir : str or Path
        The folder to write; it must not exist unless ``overwrite``.
    dtype : {"bf16", "fp32", "fp16"}, default "bf16"
        Weights' dtype in the folder. bf16 halves the size of fp32 and is far finer
        than the 4- or 8-bit blocks it comes from; fp32 keeps the dequantized
        values exactly.
    overwrite : bool, default False
        Replace an existing ``out_dir`` (swapped in only once the new folder is
        complete).
    progress : bool, default False
        Show transformers' progress bars.
    provenance : mapping, optional
        Extra JSON-able entries for the marker (e.g. the package it came from).

    Returns
    -------
    Path
        ``out_dir``, a folder that :func:`harp.models.load_model` reads.

    Raises
    ------
    harp.core.errors.ModelError
        When the file is missing, not GGUF, truncated or corrupt, of an
        architecture transformers cannot load, when the ``gguf`` package is not
        installed, or when ``out_dir`` exists and ``overwrite`` is False.
    harp.core.errors.ParameterError
        For an unknown ``dtype``.

    See Also
    --------
    cached_gguf_model : the same, once per file, into a run's cache.

    Notes
    -----
    Converting SmolLM2-135M-Instruct (Q4_1, 98 MB) takes about half a minute on two
    CPU cores and gives a 269 MB bf16 folder.

    Examples
    --------
    >>> convert_gguf("no/such/model.gguf", "out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    harp.core.errors.ModelError: no/such/model.gguf: GGUF file not found; ...
    """
    dtype = _check_dtype(dtype)
    path = Path(gguf_path).expanduser()
    out = Path(out_dir).expanduser()
    header = check_gguf_file(path)
    if out.resolve() == path.resolve():
        raise ModelError(f"{out}: refusing to write the model folder onto its input")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ModelError(
            f"{out}: exists already; choose another output folder or pass "
            "overwrite=True (--force) to replace it"
        )
    try:
        _convert_into(
            path,
            out,
            dtype=dtype,
            overwrite=overwrite,
            progress=progress,
            provenance=provenance,
            header=header,
        )
    except FileExistsError:
        raise ModelError(
            f"{out}: appeared while converting; pass overwrite=True (--force) to "
            "replace it"
        ) from None
    return out


# -- the cache ----------------------------------------------------------------------
def _cache_key(content: str, dtype: str) -> str:
    # Defaults stay out of the key (STYLE §8): a bf16 folder is named by content alone.
    params = {} if dtype == DEFAULT_DTYPE else {"dtype": dtype}
    return fingerprint("gguf-model", content=content, params=params)


def converted_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of a complete, unchanged converted folder, or None.

    Parameters
    ----------
    folder : str or Path
        A folder written by :func:`convert_gguf`.

    Returns
    -------
    dict or None
        Its ``harp-gguf.json``, when the folder's current
        :func:`harp.models.model_fingerprint` (config, tokenizer and weights) still
        equals the one recorded at conversion; None when the marker is missing or
        unreadable, or the folder was changed since.
    """
    marker_path = Path(folder).expanduser() / GGUF_MARKER
    if not marker_path.is_file():
        return None
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        if not isinstance(marker, dict):
            return None
        if model_fingerprint(marker_path.parent) != marker.get("model"):
            return None
    except (OSError, ValueError, ModelError):
        return None
    return marker


def cached_gguf_model(
    gguf_path: str | Path,
    cache_dir: str | Path,
    *,
    dtype: str = DEFAULT_DTYPE,
    progress: bool = False,
) -> Path:
    """The model folder converted from a GGUF file, converting it on first use.

    The folder is ``cache_dir/models/<key>``, where the key fingerprints the file's
    content (see :func:`gguf_fingerprint`) and a non-default ``dtype``: the same
    file, wherever it lies and whatever its name, is converted once. A later call
    reuses the folder after checking its marker and its model fingerprint; a
    folder that is incomplete or was changed is converted again.

    Parameters
    ----------
    gguf_path : str or Path
        A ``.gguf`` model file.
    cache_dir : str or Path
        The run's cache folder (``RunContext.cache_dir``).
    dtype : {"bf16", "fp32", "fp16"}, default "bf16"
        Weights' dtype in the folder; :func:`harp.models.load_model` then casts to
        the run's dtype.
    progress : bool, default False
        Show transformers' progress bars while converting.

    Returns
    -------
    Path
        A model folder that :func:`harp.models.load_model` reads.

    Raises
    ------
    harp.core.errors.ModelError
        As :func:`convert_gguf`.
    """
    dtype = _check_dtype(dtype)
    path = Path(gguf_path).expanduser()
    header = check_gguf_file(path)
    content = gguf_fingerprint(path)
    key = _cache_key(content, dtype)
    folder = Path(cache_dir).expanduser() / "models" / key
    marker = converted_marker(folder)
    if marker is not None and marker.get("fingerprint") == key:
        logger.info("reusing %s converted from %s", folder, path.name)
        return folder
    existed = folder.exists()
    if existed:
        logger.warning("%s: incomplete or changed; converting %s again", folder, path)
    logger.info(
        "converting %s (%.0f MB, GGUF) into a %s model folder in %s (once; later "
        "runs reuse it)",
        path.name,
        path.stat().st_size / 1e6,
        dtype,
        folder,
    )
    try:
        _convert_into(
            path,
            folder,
            dtype=dtype,
            overwrite=existed,
            progress=progress,
            header=header,
            content=content,
        )
    except FileExistsError:
        # Another run converted the same file meanwhile: use its folder if whole.
        marker = converted_marker(folder)
        if marker is None or marker.get("fingerprint") != key:
            raise ModelError(
                f"{folder}: another process wrote this cache folder meanwhile and it "
                "is not a complete conversion; delete it and run again"
            ) from None
    return folder
