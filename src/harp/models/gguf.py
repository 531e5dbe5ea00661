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
import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import logging
import re
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from harp._version import __version__
from harp.core.errors import ModelError, ParameterError
from harp.core.hashing import fingerprint, sha256_hex, stable_json
from harp.core.io import atomic_directory, atomic_write_json
from harp.models.loading import (
    check_weights_cover,
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


@contextlib.contextmanager
def _header_errors(path: Path) -> Iterator[None]:
    """A GGUF header that cannot be read becomes one ModelError naming the file."""
    try:
        yield
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the file ({exc.strerror})") from exc
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(
            f"{path}: truncated or corrupt GGUF file (metadata unreadable: {exc})"
        ) from exc


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
    with _header_errors(path), open(path, "rb") as handle:
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
        _skip_array(handle, item, count)
    else:
        raise ValueError(f"unknown metadata type {kind}")


def _skip_array(handle: IO[bytes], item: int, count: int) -> None:
    if item in _SCALAR_SIZES:
        handle.seek(_SCALAR_SIZES[item] * count, 1)
    else:  # each item is read: a corrupt count stops at the end of the file
        for _ in range(count):
            _skip_value(handle, item)


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


# -- checking the tensors against the header ----------------------------------------
#: struct formats of GGUF's scalar metadata types (type id -> format).
_SCALAR_FORMATS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_INTEGER_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
#: Longest integer array kept from the metadata (per-layer sizes); longer ones,
#: the tokenizer's included, are skipped.
_MAX_KEPT_ARRAY = 1 << 16
#: Most dimensions a tensor may have (GGML uses at most 4).
_MAX_DIMS = 8
#: Fewest bytes one metadata entry / one tensor description takes in a file.
_MIN_KEY_BYTES, _MIN_TENSOR_BYTES = 12, 24
#: Sizes in the header (``<architecture>.<key>``) that must be >= 1 when present.
_HEADER_SIZES = (
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "vocab_size",
)
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")
#: What every block holds, by part: the layouts llama.cpp writes each part in
#: (all tensors of one layout). A part no block of the file has is not asked for
#: (a Mamba file has no MLP); per-layer sizes of 0 in the header drop it too.
_BLOCK_PARTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "attention": (
        ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight"),
        ("attn_qkv.weight", "attn_output.weight"),  # fused (Phi-3, Falcon, GPT-2)
        ("ssm_in.weight", "ssm_out.weight"),  # Mamba's mixer
        ("shortconv.in_proj.weight", "shortconv.out_proj.weight"),  # LFM2's
    ),
    "MLP": (
        ("ffn_up.weight", "ffn_down.weight"),
        ("ffn_gate_inp.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"),
    ),
}
#: Header sizes per layer whose 0 means a layer without that part (DeciLM, LFM2).
_PART_SIZES = {
    "attention": ("attention.head_count", "attention.head_count_kv"),
    "MLP": ("feed_forward_length",),
}
#: Tensors a block needs when some block of the file has them and this block has
#: the given part, or the given tensor: norms and gates.
_COMPANIONS = (
    ("attn_norm.weight", "attention"),
    ("ffn_norm.weight", "MLP"),
    ("ffn_gate.weight", "ffn_up.weight"),
    ("ffn_gate_exps.weight", "ffn_up_exps.weight"),
)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What a GGUF file's header says and which tensors (and shapes) it holds."""

    #: Scalar and string entries, and short integer arrays (as tuples).
    metadata: dict[str, Any]
    #: Every array entry's length.
    lengths: dict[str, int]
    #: Tensor name -> shape, outermost dimension first (as torch writes it).
    tensors: dict[str, tuple[int, ...]]


def _read_layout(path: Path) -> _Layout:
    """The metadata and tensor descriptions of a GGUF file (no tensor data read).

    Memory stays bounded whatever the header says: counts are checked against the
    file's size and every entry is read from the file.
    """
    size = path.stat().st_size
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    tensors: dict[str, tuple[int, ...]] = {}
    with open(path, "rb") as handle:
        _, n_tensors, n_keys = struct.unpack("<IQQ", _read(handle, 24)[4:])
        if n_keys * _MIN_KEY_BYTES > size or n_tensors * _MIN_TENSOR_BYTES > size:
            raise ValueError(
                f"{n_keys} metadata entries and {n_tensors} tensors do not fit in "
                f"{size} bytes"
            )
        for _ in range(n_keys):
            key = _read_string(handle)
            (kind,) = struct.unpack("<I", _read(handle, 4))
            if kind in _SCALAR_FORMATS:
                fmt = "<" + _SCALAR_FORMATS[kind]
                (metadata[key],) = struct.unpack(
                    fmt, _read(handle, struct.calcsize(fmt))
                )
            elif kind == _STRING:
                metadata[key] = _read_string(handle)
            elif kind == _ARRAY:
                item, count = struct.unpack("<IQ", _read(handle, 12))
                lengths[key] = count
                if (
                    item in _INTEGER_TYPES
                    and count <= _MAX_KEPT_ARRAY
                    and not key.startswith("tokenizer.")
                ):
                    fmt = f"<{count}{_SCALAR_FORMATS[item]}"
                    metadata[key] = struct.unpack(
                        fmt, _read(handle, struct.calcsize(fmt))
                    )
                else:
                    _skip_array(handle, item, count)
            else:
                raise ValueError(f"unknown metadata type {kind}")
        for _ in range(n_tensors):
            name = _read_string(handle)
            (n_dims,) = struct.unpack("<I", _read(handle, 4))
            if n_dims > _MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            dims = struct.unpack(f"<{n_dims}Q", _read(handle, 8 * n_dims))
            _read(handle, 12)  # the quantization type and the data offset
            tensors[name] = tuple(reversed(dims))  # GGUF lists the innermost first
    return _Layout(metadata, lengths, tensors)


def _check_tensors(path: Path) -> None:
    """Refuse a GGUF file whose tensors do not make the model its header describes.

    transformers builds the model from the header and fills every tensor the file
    lacks with random values, saying so only in a log report; an absurd
    ``block_count`` makes it build a config (and model) of that many layers. This
    reads only the header and tensor descriptions (milliseconds, bounded memory)
    and names the first missing or misshapen tensor.

    Raises
    ------
    harp.core.errors.ModelError
        One line naming the file and the first problem.
    """
    with _header_errors(path):
        layout = _read_layout(path)
    meta = layout.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return  # transformers says what it cannot read
    for key in _HEADER_SIZES:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ModelError(
                f"{path}: {arch}.{key}={value} in the header is not a size (expected "
                "a whole number >= 1); the file is corrupt"
            )
    blocks = _header_int(meta, arch, "block_count")
    if blocks is None or "t5" in arch:
        return  # no layer count, or an encoder-decoder (not a causal LM)
    _check_block_names(path, layout, arch, blocks)
    _check_shapes(path, layout, arch)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _header_int(meta: Mapping[str, Any], arch: str, key: str) -> int | None:
    value = meta.get(f"{arch}.{key}")
    return value if _is_int(value) else None


def _check_block_names(path: Path, layout: _Layout, arch: str, count: int) -> None:
    """Refuse a file lacking a tensor its ``block_count`` and layers ask for."""
    tensors = layout.tensors
    incomplete = "the file is truncated or not a complete model"
    where = f"block_count={count} in the header"
    held: dict[int, list[str]] = {}
    for name in tensors:
        match = _BLOCK_TENSOR.fullmatch(name)
        if match:
            held.setdefault(int(match[1]), []).append(match[2])
    beyond = [i for i in held if i >= count]
    if beyond:
        first = min(beyond)
        raise ModelError(
            f"{path}: tensor blk.{first}.{held[first][0]} lies beyond the last block "
            f"({where}); the header does not match the tensors (corrupt file)"
        )
    if "token_embd.weight" not in tensors:
        raise ModelError(f"{path}: tensor token_embd.weight is missing; {incomplete}")
    blocks = {i: set(names) for i, names in held.items()}
    # How many blocks follow each layout: a block missing a tensor of every layout
    # is named after the file's usual one.
    usage = {
        layout_: sum(all(t in have for t in layout_) for have in blocks.values())
        for layouts in _BLOCK_PARTS.values()
        for layout_ in layouts
    }
    used = {t for have in blocks.values() for t in have}
    reference = held[min(held)] if held else ["attn_norm.weight"]
    i = 0
    while i < count:  # stops at the first block the file lacks: never count steps
        have = blocks.get(i)
        if have is None:
            raise ModelError(
                f"{path}: tensor blk.{i}.{reference[0]} is missing ({where}); "
                f"{incomplete}"
            )
        lacking = _lacking_in_block(have, i, layout.metadata, arch, usage, used)
        if lacking is not None:
            raise ModelError(
                f"{path}: tensor blk.{i}.{lacking} is missing ({where}); {incomplete}"
            )
        i += 1
    if "output_norm.weight" not in tensors and "token_embd_norm.weight" not in tensors:
        raise ModelError(f"{path}: tensor output_norm.weight is missing; {incomplete}")


def _lacking_in_block(
    have: set[str],
    index: int,
    meta: Mapping[str, Any],
    arch: str,
    usage: Mapping[tuple[str, ...], int],
    used: set[str],
) -> str | None:
    """The first tensor (name after ``blk.N.``) block ``index`` lacks, or None."""
    parts: dict[str, bool] = {}
    for part, layouts in _BLOCK_PARTS.items():
        present = any(t in have for layout_ in layouts for t in layout_)
        parts[part] = present
        if not any(t in used for layout_ in layouts for t in layout_):
            continue  # no block of this file has the part (Mamba's MLP)
        if not present and _layer_size_is_zero(meta, arch, part, index):
            continue  # the header says this layer has none
        best = max(layouts, key=lambda lay: (sum(t in have for t in lay), usage[lay]))
        for tensor in best:
            if tensor not in have:
                return tensor
    for tensor, trigger in _COMPANIONS:
        needed = parts[trigger] if trigger in parts else trigger in have
        if needed and tensor in used and tensor not in have:
            return tensor
    return None


def _layer_size_is_zero(
    meta: Mapping[str, Any], arch: str, part: str, index: int
) -> bool:
    for key in _PART_SIZES[part]:
        sizes = meta.get(f"{arch}.{key}")
        if isinstance(sizes, tuple) and index < len(sizes) and sizes[index] == 0:
            return True
    return False


def _check_shapes(path: Path, layout: _Layout, arch: str) -> None:
    """Refuse tensors whose shapes contradict the header's sizes (where cheap)."""
    meta, tensors = layout.metadata, layout.tensors

    def refuse(name: str, what: str) -> ModelError:
        return ModelError(
            f"{path}: tensor {name} has shape {list(tensors[name])}, but {what} in "
            "the header; the header does not match the tensors (corrupt or edited "
            "file)"
        )

    hidden = _header_int(meta, arch, "embedding_length")
    heads = _header_int(meta, arch, "attention.head_count")
    kv_heads = _header_int(meta, arch, "attention.head_count_kv")
    ffn = _header_int(meta, arch, "feed_forward_length")
    vocab = _header_int(meta, arch, "vocab_size")
    vocab_key = f"{arch}.vocab_size={vocab}"
    if vocab is None and "tokenizer.ggml.tokens" in layout.lengths:
        vocab = layout.lengths["tokenizer.ggml.tokens"]
        vocab_key = f"tokenizer.ggml.tokens lists {vocab} tokens"
    embedding = tensors["token_embd.weight"]
    if len(embedding) != 2:
        raise refuse("token_embd.weight", "a 2-D matrix is expected")
    if hidden is not None and embedding[1] != hidden:
        raise refuse("token_embd.weight", f"{arch}.embedding_length={hidden}")
    if vocab is not None and embedding[0] != vocab:
        raise refuse("token_embd.weight", vocab_key)
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise ModelError(
            f"{path}: {arch}.attention.head_count={heads} is not a multiple of "
            f"{arch}.attention.head_count_kv={kv_heads} in the header; the file is "
            "corrupt"
        )
    for name in sorted(tensors, key=_block_order):
        match = _BLOCK_TENSOR.fullmatch(name)
        if match is None:
            continue
        kind, shape = match[2], tensors[name]
        matrix = len(shape) == 2
        if hidden is not None and matrix:
            if kind in _READS_HIDDEN and shape[1] != hidden:
                raise refuse(name, f"{arch}.embedding_length={hidden}")
            if kind in _WRITES_HIDDEN and shape[0] != hidden:
                raise refuse(name, f"{arch}.embedding_length={hidden}")
        if kind == "attn_q.weight" and heads is not None and shape[0] % heads:
            raise refuse(name, f"{arch}.attention.head_count={heads} (rows per head)")
        if kind == "attn_k.weight" and kv_heads is not None and shape[0] % kv_heads:
            raise refuse(
                name, f"{arch}.attention.head_count_kv={kv_heads} (rows per head)"
            )
        if ffn is not None and matrix:
            gated = f"blk.{match[1]}.ffn_gate.weight" in tensors
            if kind == "ffn_down.weight" and shape[1] != ffn:
                raise refuse(name, f"{arch}.feed_forward_length={ffn}")
            # Phi-3 fuses gate and up into one ffn_up of twice the rows: only a
            # gated block's ffn_up has exactly feed_forward_length rows.
            if kind in ("ffn_gate.weight", "ffn_up.weight") and gated:
                if shape[0] != ffn:
                    raise refuse(name, f"{arch}.feed_forward_length={ffn}")


#: Block matrices whose columns / rows are the hidden size (torch order).
_READS_HIDDEN = frozenset(
    {
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
    }
)
_WRITES_HIDDEN = frozenset({"attn_output.weight", "ffn_down.weight"})


def _block_order(name: str) -> tuple[int, str]:
    match = _BLOCK_TENSOR.fullmatch(name)
    return (int(match[1]), match[2]) if match else (-1, name)


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


class _LoadReports(logging.Filter):
    """Holds back transformers' multi-line LOAD REPORT (harp says it in one line)."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" in message:
            self.reports.append(message)
            return False
        return True


@contextlib.contextmanager
def _held_load_reports() -> Iterator[list[str]]:
    """Keep transformers' weight-loading reports off the terminal; yield them.

    transformers logs a table of missing, unexpected or mismatched tensors as one
    warning; harp checks the same things itself and raises one line instead.
    """
    target = logging.getLogger("transformers.modeling_utils")
    keeper = _LoadReports()
    target.addFilter(keeper)
    try:
        yield keeper.reports
    finally:
        target.removeFilter(keeper)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _load_failure(exc: BaseException, reports: Sequence[str]) -> str:
    """What a failed load says, in one line.

    transformers' message often only says "look at the above report", which was
    held back: the report's first row (key, status, details) says what is wrong,
    and the exception's own text is the fallback.
    """
    for report in reports:
        for line in _ANSI.sub("", report).splitlines():
            cells = [cell.strip() for cell in line.split("|")]
            if len(cells) < 2 or cells[0] in ("", "Key") or set(cells[0]) <= {"-", "+"}:
                continue
            return _one_line(ValueError(" ".join(cell for cell in cells if cell)))
    return _one_line(exc)


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
    loaded: Any  # a (model, loading info) pair, which transformers' stub omits
    reports: list[str] = []
    try:
        with (
            quiet_transformers(progress),
            _dequantize_bar(progress),
            _held_load_reports() as reports,
        ):
            loaded = AutoModelForCausalLM.from_pretrained(
                str(path.parent),
                gguf_file=path.name,
                dtype=torch.float32,
                local_files_only=True,
                output_loading_info=True,
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
            f"{arch} (truncated or corrupt file?): {_load_failure(exc, reports)}"
        ) from exc
    model, info = loaded
    check_weights_cover(
        path,
        info,
        described_by="its header",
        fix="The file is truncated or not a complete model",
    )
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
    reports: list[str] = []
    try:
        with quiet_transformers(False), _held_load_reports() as reports:
            loaded = type(model).from_pretrained(
                None,
                config=config,
                state_dict=model.state_dict(),
                dtype=torch_dtype,
                output_loading_info=True,
            )
    except Exception as exc:  # transformers raises many types; keep the cause
        # Some transformers versions (5.17) raise here, pointing at the report that
        # was held back, where others return the mismatch in the loading info.
        raise ModelError(
            f"{path}: the dequantized weights do not fit a plain "
            f"{type(model).__name__} ({_load_failure(exc, reports)}); the file is "
            "not a complete model of its architecture"
        ) from exc
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


def _check_finite(model: PreTrainedModel, path: Path, dtype: str) -> None:
    """Refuse weights that are NaN or infinite (a damaged file, or fp16 overflow)."""
    import torch

    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            fits = "" if dtype != "fp16" else " or its values overflow fp16 (use bf16)"
            raise ModelError(
                f"{path}: {bad} of the {tensor.numel()} values of {name} are NaN or "
                f"infinite after dequantizing to {dtype}: the file is damaged{fits}; "
                "nothing was written"
            )


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _replaceable(out: Path, source: Path) -> None:
    """Refuse to replace ``out`` unless it is a model folder harp converted.

    ``overwrite`` (``--force``) swaps in a new conversion for an old one; it must
    not delete a user's data file or a folder of theirs given as ``--out`` by
    mistake.
    """
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise ModelError(
            f"{out}: is a file, not a model folder harp converted; refusing to "
            "replace it; choose another --out (output folder)"
        )
    if not (out / GGUF_MARKER).is_file():
        raise ModelError(
            f"{out}: not a model folder harp converted (no {GGUF_MARKER}); refusing "
            "to replace it; choose another --out (output folder)"
        )
    if source.resolve().is_relative_to(out.resolve()):
        raise ModelError(
            f"{out}: holds the input file {source.name}; refusing to replace it; "
            "choose another --out (output folder)"
        )


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
    only_replace_converted: bool = False,
) -> dict[str, Any]:
    """Convert ``path`` into the folder ``out`` (atomically); return its marker.

    Raises FileExistsError when ``out`` appeared meanwhile and not ``overwrite``,
    and an OSError naming ``out`` when writing fails. With
    ``only_replace_converted``, an ``out`` that is not a converted folder when the
    new one is swapped in is refused (it may have appeared meanwhile).
    """
    header = check_gguf_file(path) if header is None else header
    # Before transformers builds anything from the header (an absurd block_count
    # would make it build a config of that many layers).
    _check_tensors(path)
    _require_gguf_package(path)
    import transformers

    content = gguf_fingerprint(path) if content is None else content
    start = time.perf_counter()
    model, tokenizer = _dequantize(path, header["architecture"], progress)
    plain = _plain_copy(model, dtype, path)
    del model  # a second full copy of the weights is not needed any more
    _check_finite(plain, path, dtype)
    n_params = sum(p.numel() for p in plain.parameters())
    # A failed write (a full disk) names ``out``, not the temporary folder.
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
        if overwrite and only_replace_converted:
            _replaceable(out, path)  # again: out may have changed meanwhile
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
        complete). Only a folder written by this function (one holding
        ``harp-gguf.json``) is replaced: a file or any other folder is refused.
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
        When the file is missing, not GGUF, truncated or corrupt, lacks a tensor
        its header asks for (a layer of ``block_count``, an attention or MLP
        weight) or holds one whose shape contradicts the header's sizes, is of an
        architecture transformers cannot load, when the ``gguf`` package is not
        installed, or when ``out_dir`` exists and ``overwrite`` is False or it is
        not a folder converted by harp.
    OSError
        When writing ``out_dir`` fails (a full disk); it names ``out_dir``.
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
    if overwrite:
        _replaceable(out, path)
    try:
        _convert_into(
            path,
            out,
            dtype=dtype,
            overwrite=overwrite,
            progress=progress,
            provenance=provenance,
            header=header,
            only_replace_converted=True,
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
