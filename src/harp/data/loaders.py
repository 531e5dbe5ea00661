"""Load pools and targets from JSONL, JSON, Parquet, CSV/TSV, FLAN TSV or HF folders.

Every loader ends in :func:`load_examples`, which detects the file format and the
schema of each row, renders the row as one :class:`~harp.data.Example` (``prompt``,
``response``, ``domain``, stable ``id``) and keeps the original row so that a
selection can be written back in the pool's own format (see
:func:`harp.data.write_rows`).

Every problem with the input is a :class:`~harp.core.errors.DataError` naming the file,
the 1-based line (record number for JSON arrays and Parquet), the field and the fix.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harp.core.errors import DataError, ParameterError
from harp.core.records import (
    DEFAULT_DOMAIN,
    Example,
    ExampleSet,
    content_id,
    resolve_options,
)
from harp.data.options import flan_options

__all__ = ["FORMATS", "SCHEMAS", "as_example_set", "detect_format", "load_examples"]

logger = logging.getLogger(__name__)

#: File formats :func:`load_examples` reads (the ``format=`` values).
FORMATS = ("jsonl", "json", "parquet", "csv", "tsv", "flan-tsv", "hf-disk", "dir")

#: Row schemas recognised by field names, in the order they are tried, with the
#: fields each one requires.
SCHEMAS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "dolly": ("instruction", "response"),
    "flan-cot": ("question", "answer", "rationale"),
    "gsm8k": ("question", "answer"),
    "prompt-completion": ("prompt", "completion"),
    "prompt-response": ("prompt", "response"),
    "inputs-targets": ("inputs", "targets"),
}

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
}
_ALIASES = {
    "ndjson": "jsonl",
    "jsonlines": "jsonl",
    "pq": "parquet",
    "flan": "flan-tsv",
    "flan_tsv": "flan-tsv",
    "hf": "hf-disk",
    "arrow": "hf-disk",
    "directory": "dir",
}
# Keys under which a JSON object commonly holds its list of rows.
_LIST_KEYS = ("data", "examples", "train", "rows", "records", "instances", "items")
_SPLIT_SUFFIXES = ("_train", "_test", "_dev", "_validation", "_valid", "_val")
_ENDOFTEXT = "<|endoftext|>"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KNOWN_FIELDS = frozenset(
    {f for fields in SCHEMAS.values() for f in fields}
    | {"id", "input", "context", "category", "domain", "task", "label", "text"}
)
_ROLE_LABELS = {
    "system": "System",
    "user": "User",
    "human": "User",
    "prompter": "User",
    "assistant": "Assistant",
    "gpt": "Assistant",
    "bot": "Assistant",
    "model": "Assistant",
    "chatgpt": "Assistant",
    "tool": "Tool",
    "function": "Tool",
    "ipython": "Tool",
}
_FIELD_FLAGS = (
    "pass --prompt-field and --response-field (prompt_field=, response_field=)"
)


# --------------------------------------------------------------------------- formats


def _normalise_format(fmt: str, path: Path | None = None) -> str:
    name = _ALIASES.get(fmt.lower(), fmt.lower())
    if name not in FORMATS:
        raise DataError(
            f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", path=path
        )
    return name


def detect_format(path: str | Path) -> str:
    """Name the format of a data file or folder from its extension or content.

    Parameters
    ----------
    path : str or Path
        A file (``.jsonl``/``.ndjson``, ``.json``, ``.parquet``/``.pq``, ``.csv``,
        ``.tsv``; other names are sniffed) or a folder (a ``datasets.save_to_disk``
        folder, or a plain folder of data files).

    Returns
    -------
    str
        One of :data:`FORMATS`: ``"jsonl"``, ``"json"``, ``"parquet"``, ``"csv"``,
        ``"tsv"``, ``"flan-tsv"`` (a ``.tsv`` whose first line has three fields and
        no recognisable header), ``"hf-disk"`` or ``"dir"``.

    Raises
    ------
    DataError
        If the path does not exist, or its format cannot be told.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "pool.ndjson").write_text('{"prompt": "a", "response": "b"}\\n')
    >>> detect_format(d / "pool.ndjson")
    'jsonl'
    """
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or folder; check the path", path=p)
    if p.is_dir():
        if (p / "dataset_dict.json").is_file():
            return "hf-disk"
        if (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
            return "hf-disk"
        if _data_files(p):
            return "dir"
        entries = sorted(c.name for c in p.iterdir() if not c.name.startswith("."))
        shown = ", ".join(entries[:10]) + (", ..." if len(entries) > 10 else "")
        raise DataError(
            "a folder of unknown layout: it is neither a datasets.save_to_disk folder "
            "(dataset_info.json/state.json/dataset_dict.json) nor a folder of data "
            f"files ({', '.join(sorted(_EXTENSIONS))}); it holds [{shown}]; point at "
            "a data file or a subfolder that holds them",
            path=p,
        )
    if not p.is_file():
        raise DataError(
            "not a regular file (a pipe, device or socket): harp reads its input "
            "more than once; save it to a file first",
            path=p,
        )
    fmt = _EXTENSIONS.get(p.suffix.lower())
    if fmt == "tsv":
        return "flan-tsv" if _looks_like_flan_tsv(p) else "tsv"
    if fmt is not None:
        return fmt
    return _sniff(p)


def _data_files(folder: Path) -> list[Path]:
    return sorted(
        c
        for c in folder.iterdir()
        if c.is_file()
        and not c.name.startswith(".")
        and c.suffix.lower() in _EXTENSIONS
    )


def _first_line(path: Path) -> str:
    with open(path, "rb") as handle:
        raw = handle.readline(1 << 20)
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def _is_header(fields: list[str]) -> bool:
    if any(f.strip().lower() in _KNOWN_FIELDS for f in fields):
        return True
    return all(_IDENTIFIER.match(f.strip()) for f in fields)


def _looks_like_flan_tsv(path: Path) -> bool:
    fields = _first_line(path).split("\t")
    return len(fields) == 3 and not _is_header(fields)


#: Leading bytes of encodings harp does not read as text, and what to do.
_COMPRESSED = {
    b"\x1f\x8b": "gzip-compressed; decompress it first (gunzip -k FILE)",
    b"BZh": "bzip2-compressed; decompress it first (bunzip2 -k FILE)",
    b"\xfd7zXZ\x00": "xz-compressed; decompress it first (unxz -k FILE)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed; decompress it first (unzstd FILE)",
    b"PK\x03\x04": "a zip archive; extract the data file first (unzip FILE)",
}


def _refuse_compressed(path: Path, head: bytes) -> None:
    for magic, advice in _COMPRESSED.items():
        if head.startswith(magic):
            raise DataError(f"the file is {advice}", path=path)


def _sniff(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    _refuse_compressed(path, head)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        head = head.decode("utf-16", errors="replace").encode("utf-8")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        return "json"
    if text.startswith("{"):
        return "jsonl"
    raise DataError(
        f"cannot tell the format of a {path.suffix or 'extension-less'} file; name it "
        f"with one of {', '.join(sorted(_EXTENSIONS))} or pass format= "
        f"(one of {', '.join(FORMATS)})",
        path=path,
    )


# --------------------------------------------------------------------------- reading


#: The longest line harp reads, in bytes. No real row comes near it; a file of one
#: endless line (a sparse file, a binary blob renamed .jsonl) is refused when a line
#: passes it, so reading never holds more than this much of one line.
MAX_LINE_BYTES = 256 << 20


def _open_binary(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        reason = exc.strerror or exc
        raise DataError(f"cannot read the file: {reason}", path=path) from None


def _refuse_binary(path: Path, raw: bytes, line: int, offset: int) -> None:
    at = raw.find(b"\x00")
    if at >= 0:
        raise DataError(
            f"the file holds a NUL byte at byte offset {offset + at}: it is binary (or "
            "a sparse or damaged file), not text; pass the data file itself",
            path=path,
            line=line,
        )


def _utf16_lines(path: Path, data: bytes) -> Iterator[tuple[int, str]]:
    # UTF-16 with its byte-order mark (Windows tools write it): decoded as is. Such
    # files are small in practice; they are decoded whole.
    try:
        text = data.decode("utf-16")
    except UnicodeDecodeError:
        raise DataError(
            "the file starts with a UTF-16 byte-order mark but is not valid UTF-16; "
            "re-encode it as UTF-8, e.g. `iconv -f utf-16 -t utf-8 in > out`",
            path=path,
        ) from None
    pieces = text.split("\n")
    for lineno, piece in enumerate(pieces, start=1):
        last = lineno == len(pieces)
        if not (last and not piece):
            yield lineno, piece if last else piece + "\n"


def _text_lines(path: Path, *, rows: bool = True) -> Iterator[tuple[int, str]]:
    """``(line number, line with its end)`` of a text file, read one line at a time.

    UTF-8 (a BOM is dropped) or UTF-16 with its BOM. Compressed files, NUL bytes (a
    binary or sparse file), bad UTF-8 and, when the lines are ``rows``, lines over
    :data:`MAX_LINE_BYTES` are a DataError naming the line, found without reading
    the rest of the file.
    """
    max_line = MAX_LINE_BYTES if rows else None
    with _open_binary(path) as handle:
        head = handle.read(1 << 16)
        _refuse_compressed(path, head[:8])
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            yield from _utf16_lines(path, head + handle.read())
            return
        _refuse_binary(path, head[: head.find(b"\n") + 1 or len(head)], 1, 0)
        handle.seek(len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0)
        offset = handle.tell()
        lineno = 0
        while True:
            raw = handle.readline(-1 if max_line is None else max_line + 1)
            if not raw:
                return
            lineno += 1
            if max_line is not None and len(raw) > max_line:
                raise DataError(
                    f"the line is longer than {max_line >> 20} MiB: no row is "
                    "this long; the file is damaged or not a data file",
                    path=path,
                    line=lineno,
                )
            _refuse_binary(path, raw, lineno, offset)
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"the file is not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte "
                    f"offset {offset + exc.start} (column {exc.start + 1}) cannot be "
                    "decoded; re-encode the file as UTF-8 (from Latin-1, say: "
                    "`iconv -f latin1 -t utf-8 in > out`)",
                    path=path,
                    line=lineno,
                ) from None
            offset += len(raw)


def _read_text(path: Path) -> str:
    """The whole file as text (a JSON document), checked as :func:`_text_lines`.

    No limit per line: a minified JSON document is one line of any length.
    """
    return "".join(line for _, line in _text_lines(path, rows=False))


def _lines_of(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of text already in memory (a JSON Lines ``.json``)."""
    return enumerate(text.split("\n"), start=1)


def _iter_jsonl(
    path: Path, lines: Iterable[tuple[int, str]]
) -> Iterator[tuple[int, Any]]:
    loads = json.loads
    for lineno, line in lines:
        if not line or line.isspace():
            continue
        try:
            yield lineno, loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if lineno == 1 and line.strip() in ("[", "{"):
                hint = " (the file looks like one JSON document: use format='json')"
            raise DataError(
                f"malformed JSON: {exc.msg} at column {exc.colno}{hint}; each line "
                "must be one complete JSON object; fix or remove the line",
                path=path,
                line=lineno,
            ) from None
        except (RecursionError, ValueError) as exc:
            # json.loads also fails outside JSONDecodeError: nesting too deep, or an
            # integer over Python's digit limit.
            raise DataError(
                f"malformed JSON: {_reason(exc)}; fix or remove the line",
                path=path,
                line=lineno,
            ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply to parse"
    return str(exc).split(";")[0]


def _json_rows(path: Path, text: str) -> tuple[list[tuple[int, Any]], str]:
    """``(record number, row)`` of a JSON file, and the format actually read.

    For a JSON Lines file named ``.json`` the numbers are line numbers.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            # A JSON Lines file named .json: common enough to read as such.
            logger.info("%s holds one JSON object per line; reading it as JSONL", path)
            return list(_iter_jsonl(path, _lines_of(text))), "jsonl"
        if not text.strip():
            raise DataError("the file has no rows; it is empty", path=path) from None
        raise DataError(
            f"malformed JSON: {exc.msg} at column {exc.colno}; fix the file "
            "(a JSON array of objects, or an object holding one)",
            path=path,
            line=exc.lineno,
        ) from None
    except (RecursionError, ValueError) as exc:
        raise DataError(f"malformed JSON: {_reason(exc)}", path=path) from None
    if isinstance(doc, list):
        return list(enumerate(doc, start=1)), "json"
    if isinstance(doc, dict):
        for key in _LIST_KEYS:
            if isinstance(doc.get(key), list):
                return list(enumerate(doc[key], start=1)), "json"
        lists = [k for k, v in doc.items() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(r, dict) for r in doc[lists[0]][:10]):
            return list(enumerate(doc[lists[0]], start=1)), "json"
        if _detect_schema(doc) is not None:
            return [(1, doc)], "json"
        raise DataError(
            "the JSON object holds no list of rows (looked for "
            f"{', '.join(_LIST_KEYS)}); it has keys [{', '.join(map(str, doc))}]; "
            "write the rows as a JSON array or as JSON Lines",
            path=path,
        )
    raise DataError(
        f"the file holds a JSON {_json_type(doc)}, not an array of objects; write the "
        "rows as a JSON array or as JSON Lines",
        path=path,
    )


@contextmanager
def _csv_field_limit() -> Iterator[None]:
    # The csv default (128 KiB per field) is far below the max_chars a row may have.
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _iter_delimited(
    path: Path, lines: Iterable[tuple[int, str]], delimiter: str
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header and an iterator of ``(line, row dict)`` of a CSV/TSV with a header."""
    what = "CSV" if delimiter == "," else "TSV"
    reader = csv.reader((line for _, line in lines), delimiter=delimiter)
    header: list[str] | None = None
    try:
        for record in reader:
            if record:
                header = record
                break
    except csv.Error as exc:
        raise DataError(
            f"malformed {what} header: {exc}", path=path, line=reader.line_num
        ) from None
    if header is None:
        raise DataError("the file has no rows; it is empty", path=path)
    header_line = reader.line_num
    seen: set[str] = set()
    for i, name in enumerate(header, start=1):
        if not name.strip():
            raise DataError(
                f"column {i} of the header has no name; name every column "
                "(the first line must be the header)",
                path=path,
                line=header_line,
            )
        if name in seen:
            raise DataError(
                f"the header names column {name!r} twice; column names must be unique",
                path=path,
                line=header_line,
                field=name,
            )
        seen.add(name)

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        width = len(header)
        end = header_line
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(
                    f"malformed {what} row: {exc}; check the quoting",
                    path=path,
                    line=end + 1,
                ) from None
            start, end = end + 1, reader.line_num
            if not record:
                continue
            if len(record) != width:
                raise DataError(
                    f"the row has {len(record)} columns; the header has {width} "
                    f"({', '.join(header)}); quote fields that contain "
                    f"{'commas' if delimiter == ',' else 'tabs'}, or fix the row",
                    path=path,
                    line=start,
                )
            yield start, dict(zip(header, record))

    return header, rows()


def _unescape_flan(text: str) -> str:
    return text.replace("\\n", "\n")


def _iter_flan_tsv(
    path: Path, lines: Iterable[tuple[int, str]]
) -> Iterator[tuple[int, dict[str, str]]]:
    # Equivalent to csv.reader(delimiter="\t", quoting=csv.QUOTE_NONE) on these files,
    # but a plain split is faster and cannot trip on a stray carriage return.
    for lineno, line in lines:
        line = line.removesuffix("\n").removesuffix("\r")
        if not line or line.isspace():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(
                f"the row has {len(fields)} tab-separated columns; a FLAN chain-of-"
                "thought TSV has exactly 3 (question, answer, rationale) and no "
                "header; remove stray tabs, or pass format='tsv' for a TSV with a "
                "header",
                path=path,
                line=lineno,
            )
        yield (
            lineno,
            {
                "question": _unescape_flan(fields[0]),
                "answer": _unescape_flan(fields[1]),
                "rationale": _unescape_flan(fields[2]),
            },
        )


def _arrow_error(path: Path, what: str, exc: BaseException) -> DataError:
    return DataError(
        f"cannot read the {what}: {type(exc).__name__}: {exc}; check that it is a "
        "complete, uncorrupted file (rewrite it, or convert it to JSONL)",
        path=path,
    )


def _read_parquet(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise DataError(
            "reading Parquet needs pyarrow; pip install pyarrow", path=path
        ) from None
    try:
        table = pq.read_table(path)
        return table.to_pylist(), list(table.column_names)
    except Exception as exc:  # pyarrow raises many unrelated types
        raise _arrow_error(path, "Parquet file", exc) from None


def _import_datasets() -> Any:
    """The ``datasets`` module, or None when it is not installed."""
    try:
        import datasets
    except ImportError:
        return None
    return datasets


def _resolve_hf_folder(path: Path) -> Path:
    """The Dataset folder to read: ``path`` itself or the ``train`` split of a dict."""
    marker = path / "dataset_dict.json"
    if not marker.is_file():
        return path
    try:
        splits = json.loads(marker.read_text(encoding="utf-8")).get("splits", [])
    except (OSError, ValueError, AttributeError):
        splits = []
    if not splits:
        splits = sorted(c.name for c in path.iterdir() if c.is_dir())
    if "train" in splits and (path / "train").is_dir():
        logger.info("%s is a DatasetDict; reading its 'train' split", path)
        return path / "train"
    raise DataError(
        f"a DatasetDict folder with splits [{', '.join(map(str, splits))}] and no "
        f"'train' split; point at one split folder, e.g. {path / str(splits[0])}"
        if splits
        else "a DatasetDict folder with no splits",
        path=path,
    )


def _read_hf_disk(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    folder = _resolve_hf_folder(path)
    datasets = _import_datasets()
    if datasets is not None:
        try:
            ds = datasets.load_from_disk(str(folder))
            if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - resolved
                ds = ds["train"]
            return ds.to_list(), list(ds.column_names)
        except Exception as exc:  # datasets/pyarrow raise many types
            raise _arrow_error(folder, "datasets.save_to_disk folder", exc) from None
    return _read_arrow_files(folder)


def _read_arrow_files(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a save_to_disk folder with pyarrow alone (``datasets`` not installed)."""
    import pyarrow as pa

    names: list[str] = []
    state = folder / "state.json"
    if state.is_file():
        try:
            files = json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])
            names = [f["filename"] for f in files]
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            names = []
    if not names:
        names = sorted(p.name for p in folder.glob("*.arrow"))
    if not names:
        raise DataError(
            "a datasets.save_to_disk folder without *.arrow files; save it again",
            path=folder,
        )
    try:
        tables = [pa.ipc.open_stream(str(folder / n)).read_all() for n in names]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return table.to_pylist(), list(table.column_names)
    except Exception as exc:  # pyarrow raises many unrelated types
        raise _arrow_error(folder, "datasets.save_to_disk folder", exc) from None


# --------------------------------------------------------------------------- schemas


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_SCHEMA_CACHE: dict[tuple[str, ...], str | None] = {}


def _match_schema(keys: tuple[str, ...]) -> str | None:
    try:
        return _SCHEMA_CACHE[keys]
    except KeyError:
        pass
    present = set(keys)
    found = next(
        (name for name, fields in SCHEMAS.items() if present.issuperset(fields)), None
    )
    if len(_SCHEMA_CACHE) < 4096:
        _SCHEMA_CACHE[keys] = found
    return found


def _detect_schema(row: dict[str, Any]) -> str | None:
    """The first schema whose fields the row has; null values count as absent.

    Tabular formats give every row every column, so a Parquet file mixing Alpaca and
    chat rows has ``messages: null`` on the Alpaca rows. When no schema matches the
    non-null fields, the row's keys decide, so that a null field is then reported
    as null rather than as missing.
    """
    filled = tuple(k for k, v in row.items() if v is not None)
    found = _match_schema(filled)
    if found is None and len(filled) != len(row):
        found = _match_schema(tuple(row))
    return found


def _fields_list(row: dict[str, Any]) -> str:
    return "[" + ", ".join(repr(str(k)) for k in row) + "]"


_DOMAIN_KEYS = ("domain", "task", "category")


def _missing(value: Any) -> bool:
    """None, "" and NaN (how pandas and Parquet spell a missing value) are missing."""
    return value is None or value == "" or (isinstance(value, float) and value != value)


def _domain_of(row: dict[str, Any]) -> str | None:
    """The domain a row names itself (``domain``, ``task``, then ``category``)."""
    for key in _DOMAIN_KEYS:
        value = row.get(key)
        if not _missing(value):
            return value if isinstance(value, str) else str(value)
    return None


def _explicit_id(row: dict[str, Any]) -> Any:
    """A row's own ``id`` value, or None when it has none (null and "" are none)."""
    value = row.get("id")
    if value is None or value == "":
        return None
    return value


def _finish_flan(rationale: str, answer: str) -> str:
    end = "" if answer.rstrip().endswith(".") else "."
    sentence = f"The answer is {answer}{end}"
    return f"{rationale}\n{sentence}" if rationale.strip() else sentence


@dataclass
class _Parser:
    """Turns one row dict into ``(prompt, response, domain, id, schema)``."""

    path: Path
    prompt_field: str | None
    response_field: str | None
    domain_field: str | None
    max_chars: int | None
    primary: str | None = None

    def error(self, line: int, message: str, field: str | None = None) -> DataError:
        return DataError(message, path=self.path, line=line, field=field)

    def text(
        self, row: dict[str, Any], key: str, line: int, *, optional: bool = False
    ) -> str:
        value = row.get(key)
        if isinstance(value, str):
            return value
        if value is None and optional:
            return ""
        if value is None:
            raise self.error(
                line, "is null; give it a non-empty string or drop the row", key
            )
        raise self.error(
            line,
            f"must be a string, got a JSON {_json_type(value)} ({_short(value)}); "
            "store the text as a string",
            key,
        )

    def missing(self, row: dict[str, Any], line: int, key: str, why: str) -> DataError:
        return self.error(
            line,
            f"missing field {key!r} ({why}); the row has fields {_fields_list(row)}; "
            f"rename the field or {_FIELD_FLAGS}",
            key,
        )

    def schema_of(self, row: dict[str, Any], line: int) -> str:
        schema = _detect_schema(row)
        if schema is not None:
            return schema
        # Report the field the row is closest to having, preferring the file's schema.
        candidates = list(SCHEMAS.items())
        if self.primary in SCHEMAS:
            candidates.insert(0, (self.primary, SCHEMAS[self.primary]))
        best, best_hits = None, 0
        for name, fields in candidates:
            hits = sum(f in row for f in fields)
            if hits > best_hits:
                best, best_hits = name, hits
        if best is not None:
            absent = next(f for f in SCHEMAS[best] if f not in row)
            why = f"the {best} schema needs {', '.join(SCHEMAS[best])}"
            raise self.missing(row, line, absent, why)
        known = "; ".join(f"{n}: {'/'.join(f)}" for n, f in SCHEMAS.items())
        raise self.error(
            line,
            f"unrecognised schema: the row has fields {_fields_list(row)}; harp reads "
            f"these schemas ({known}); otherwise {_FIELD_FLAGS}",
        )

    def render(
        self, schema: str, row: dict[str, Any], line: int
    ) -> tuple[str, str, str, str]:
        """Prompt, response, and the fields each came from."""
        if schema == "alpaca":
            prompt = self.text(row, "instruction", line)
            extra = self.text(row, "input", line, optional=True)
            if extra.strip():
                prompt = f"{prompt}\n\n{extra}"
            return prompt, self.text(row, "output", line), "instruction", "output"
        if schema == "dolly":
            prompt = self.text(row, "instruction", line)
            extra = self.text(row, "context", line, optional=True)
            if extra.strip():
                prompt = f"{prompt}\n\n{extra}"
            return prompt, self.text(row, "response", line), "instruction", "response"
        if schema == "gsm8k":
            q = self.text(row, "question", line)
            return q, self.text(row, "answer", line), "question", "answer"
        if schema == "flan-cot":
            prompt = self.text(row, "question", line)
            answer = self.text(row, "answer", line)
            if not answer.strip():
                raise self.error(line, "is empty; every row needs an answer", "answer")
            rationale = self.text(row, "rationale", line, optional=True)
            return prompt, _finish_flan(rationale, answer), "question", "rationale"
        if schema == "prompt-completion":
            completion = self.text(row, "completion", line)
            if completion.endswith(_ENDOFTEXT):
                completion = completion[: -len(_ENDOFTEXT)]
            p = self.text(row, "prompt", line)
            return p, completion, "prompt", "completion"
        if schema == "prompt-response":
            p = self.text(row, "prompt", line)
            return p, self.text(row, "response", line), "prompt", "response"
        if schema == "inputs-targets":
            p = self.text(row, "inputs", line)
            return p, self.text(row, "targets", line), "inputs", "targets"
        key = "messages" if schema == "chat" else "conversations"
        prompt, response = self.chat(row, key, line)
        return prompt, response, key, key

    def chat(self, row: dict[str, Any], key: str, line: int) -> tuple[str, str]:
        turns = row[key]
        if isinstance(turns, str) and turns.lstrip().startswith("["):
            # Tabular formats (CSV, Parquet) may hold the turns as JSON text.
            try:
                turns = json.loads(turns)
            except json.JSONDecodeError:
                pass
        if not isinstance(turns, (list, tuple)):
            raise self.error(
                line,
                f"must be a list of turns like {{'role': 'user', 'content': '...'}}, "
                f"got a JSON {_json_type(turns)}",
                key,
            )
        rendered: list[tuple[str, str]] = []
        last = -1
        for i, turn in enumerate(turns):
            where = f"{key}[{i}]"
            if not isinstance(turn, dict):
                raise self.error(
                    line,
                    f"must be an object with role and content, got a JSON "
                    f"{_json_type(turn)}",
                    where,
                )
            role_key = "role" if "role" in turn else "from"
            body_key = "content" if "content" in turn else "value"
            role = turn.get(role_key)
            if not isinstance(role, str):
                raise self.error(
                    line,
                    "needs a string 'role' (or ShareGPT 'from'): system, user or "
                    f"assistant; the turn has fields {_fields_list(turn)}",
                    f"{where}.{role_key}",
                )
            label = _ROLE_LABELS.get(role.strip().lower()) or role.strip().capitalize()
            content = _turn_text(turn.get(body_key))
            if content is None:
                raise self.error(
                    line,
                    f"must be a string (or a list of text parts), got a JSON "
                    f"{_json_type(turn.get(body_key))}",
                    f"{where}.{body_key}",
                )
            rendered.append((label, content))
            if label == "Assistant":
                last = i
        if last < 0:
            roles = sorted({label for label, _ in rendered})
            raise self.error(
                line,
                f"has no assistant turn (roles seen: {', '.join(roles) or 'none'}); "
                "the last assistant turn is the response, so add one or drop the row",
                key,
            )
        prompt = "\n".join(f"{label}: {content}" for label, content in rendered[:last])
        return prompt, rendered[last][1]

    def parse(
        self, row: Any, line: int, default_domain: str
    ) -> tuple[str, str, str, Any, str, tuple[str, ...], int | None]:
        if not isinstance(row, dict):
            raise self.error(
                line,
                f"the row is a JSON {_json_type(row)}, not an object; each row must "
                'be an object like {"prompt": "...", "response": "..."}',
            )
        pf, rf = self.prompt_field, self.response_field
        if pf is not None and rf is not None:
            schema = "custom"
            prompt = self.field_text(row, pf, line, "prompt_field")
            response = self.field_text(row, rf, line, "response_field")
            pkey, rkey = pf, rf
        else:
            schema = self.schema_of(row, line)
            if self.primary is None:
                self.primary = schema
            prompt, response, pkey, rkey = self.render(schema, row, line)
            if pf is not None:
                prompt, pkey = self.field_text(row, pf, line, "prompt_field"), pf
            if rf is not None:
                response, rkey = self.field_text(row, rf, line, "response_field"), rf
        if not prompt.strip():
            raise self.error(
                line,
                "the prompt is empty (only whitespace); every row needs a non-empty "
                "prompt; fill it in or drop the row",
                pkey,
            )
        if not response.strip():
            raise self.error(
                line,
                "the response is empty (only whitespace); every row needs a non-empty "
                "response; fill it in or drop the row",
                rkey,
            )
        if self.max_chars is not None:
            size = len(prompt) + len(response)
            if size > self.max_chars:
                raise self.error(
                    line,
                    f"row is {size} characters; the limit is {self.max_chars} "
                    "(max_chars); split or truncate it, or raise max_chars",
                    pkey if len(prompt) >= len(response) else rkey,
                )
        domain = self.domain(row, line, default_domain)
        options, gold = self.choice(schema, row, line, prompt, response)
        return prompt, response, domain, _explicit_id(row), schema, options, gold

    def choice(
        self, schema: str, row: dict[str, Any], line: int, prompt: str, response: str
    ) -> tuple[tuple[str, ...], int | None]:
        """A multiple-choice row's options and gold index (``((), None)`` if none)."""
        if row.get("options") is not None:
            try:
                return resolve_options(row["options"], row.get("gold"), response)
            except ValueError as exc:
                raise self.error(line, str(exc), "options") from None
        if schema == "flan-cot":
            found = flan_options(prompt, self.text(row, "answer", line))
            if found is not None:
                return found
        return (), None

    def field_text(self, row: dict[str, Any], key: str, line: int, flag: str) -> str:
        if key not in row:
            raise self.error(
                line,
                f"missing field {key!r} named by {flag}; the row has fields "
                f"{_fields_list(row)}",
                key,
            )
        return self.text(row, key, line)

    def domain(self, row: dict[str, Any], line: int, default: str) -> str:
        key = self.domain_field
        if key is None:
            key = next((k for k in _DOMAIN_KEYS if not _missing(row.get(k))), None)
            if key is None:
                return default
        elif key not in row:
            raise self.error(
                line,
                f"missing field {key!r} named by domain_field; the row has fields "
                f"{_fields_list(row)}",
                key,
            )
        value = row[key]
        if _missing(value):
            return default
        if isinstance(value, (dict, list, tuple)):
            raise self.error(
                line,
                f"must be a string label, got a JSON {_json_type(value)}",
                key,
            )
        return value if isinstance(value, str) else str(value)


def _turn_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        # OpenAI-style content parts: keep the text parts, in order.
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                return None
        return "\n".join(parts)
    return None


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- building


def domain_from_stem(stem: str) -> str:
    """The domain a file name stands for: its stem without a split suffix."""
    for suffix in _SPLIT_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


@dataclass
class _Builder:
    """Accumulates examples over one or more files, sharing the id namespace."""

    parser_args: dict[str, Any]
    on_invalid: str = "error"

    def __post_init__(self) -> None:
        self.examples: list[Example] = []
        self.rows: list[dict[str, Any]] = []
        self.schemas: dict[str, None] = {}
        # id -> "path:line" where it was first used, to name both lines on a clash.
        self.seen: dict[str, str] = {}

    def add(
        self, path: Path, records: Iterable[tuple[int, Any]], default_domain: str
    ) -> int:
        parser = _Parser(path=path, **self.parser_args)
        examples = self.examples
        start = len(examples)
        skipped: list[DataError] = []
        for line, row in records:
            if self.on_invalid == "skip":
                try:
                    self._add_row(parser, path, line, row, default_domain)
                except DataError as exc:
                    skipped.append(exc)
                continue
            self._add_row(parser, path, line, row, default_domain)
        if skipped:
            logger.warning(
                "%s: skipped %d invalid row(s) (on_invalid='skip'); first: %s",
                path,
                len(skipped),
                skipped[0],
            )
        return len(examples) - start

    def _add_row(
        self, parser: _Parser, path: Path, line: int, row: Any, default_domain: str
    ) -> None:
        seen, examples, rows = self.seen, self.examples, self.rows
        prompt, response, domain, raw_id, schema, options, gold = parser.parse(
            row, line, default_domain
        )
        source = f"{path}:{line}"
        if raw_id is not None:
            if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
                raise DataError(
                    f"must be a string or an integer, got a JSON "
                    f"{_json_type(raw_id)}; fix it or drop the field to use "
                    "content hashes",
                    path=path,
                    line=line,
                    field="id",
                )
            ex_id = str(raw_id)
            if ex_id in seen:
                raise DataError(
                    f"duplicate id {ex_id!r}: {seen[ex_id]} has it too; ids must "
                    "be unique; fix one of them, or drop the id field to use "
                    "content hashes",
                    path=path,
                    line=line,
                    field="id",
                )
        else:
            base = content_id(prompt, response)
            ex_id, count = base, 1
            while ex_id in seen:
                count += 1
                ex_id = f"{base}#{count}"
        seen[ex_id] = source
        examples.append(
            Example(ex_id, prompt, response, domain, source, line, options, gold)
        )
        rows.append(row)
        self.schemas[schema] = None


def _records_of(
    path: Path, fmt: str
) -> tuple[Iterable[tuple[int, Any]], tuple[str, ...], str]:
    """``(line, row)`` records of one file, its columns, and the format read."""
    if fmt == "parquet":
        rows, columns = _read_parquet(path)
        return enumerate(rows, start=1), tuple(columns), fmt
    if fmt == "hf-disk":
        rows, columns = _read_hf_disk(path)
        return enumerate(rows, start=1), tuple(columns), fmt
    if fmt == "json":
        rows_json, actual = _json_rows(path, _read_text(path))
        return rows_json, (), actual
    lines = _text_lines(path)
    if fmt == "jsonl":
        return _iter_jsonl(path, lines), (), fmt
    if fmt == "flan-tsv":
        return _iter_flan_tsv(path, lines), ("question", "answer", "rationale"), fmt
    header, records = _iter_delimited(path, lines, "," if fmt == "csv" else "\t")
    return records, tuple(header), fmt


def _load_folder(folder: Path, builder: _Builder) -> None:
    if not folder.is_dir():
        raise DataError("format='dir' needs a folder of data files", path=folder)
    files = _data_files(folder)
    if not files:
        detect_format(folder)  # raises the unknown-layout error, listing the folder
    for file in files:
        if file.stat().st_size == 0:
            logger.warning("%s is empty; skipped", file)
            continue
        records, _, _ = _records_of(file, detect_format(file))
        if builder.add(file, records, domain_from_stem(file.stem)) == 0:
            logger.warning("%s has no rows; skipped", file)


def load_examples(
    path: str | Path,
    *,
    format: str | None = None,
    prompt_field: str | None = None,
    response_field: str | None = None,
    domain_field: str | None = None,
    max_chars: int | None = 1_000_000,
    on_invalid: str = "error",
) -> ExampleSet:
    """Load a pool or target file into an :class:`~harp.data.ExampleSet`.

    Parameters
    ----------
    path : str or Path
        A data file or folder. Formats (see :func:`detect_format`): JSON Lines
        (``.jsonl``/``.ndjson``; blank lines skipped), a JSON array (``.json``; also
        an object holding the list under ``data``/``examples``/``train``/…, or a
        JSON Lines file named ``.json``), Parquet, CSV or TSV with a header row, the
        FLAN chain-of-thought TSV (no header; ``question``, ``answer``,
        ``rationale``; newlines written as ``\\n``), a ``datasets.save_to_disk``
        folder (a ``DatasetDict`` gives its ``train`` split), or a folder of data
        files read in name order, each file's stem being its rows' default domain.
    format : str, optional
        Force a format instead of detecting it: one of :data:`FORMATS`.
    prompt_field, response_field : str, optional
        Read the prompt/response from these fields (as is) instead of the detected
        schema; with both given any row schema works. The same flags are needed to
        reload a subset written from such a pool.
    domain_field : str, optional
        Field holding the domain label. Default: ``domain``, else ``task``, else
        ``category`` (Dolly), else the file's default domain (the stem, without a
        ``_train``-like suffix, for FLAN TSVs and files of a folder;
        :data:`~harp.data.DEFAULT_DOMAIN` otherwise).
    max_chars : int or None, default 1_000_000
        Largest ``len(prompt) + len(response)`` a row may have; None for no limit.
    on_invalid : {"error", "skip"}, default "error"
        What to do with a row that parses but fails validation (empty prompt or
        response, missing or mistyped field, over ``max_chars``, duplicate id, …):
        raise (``"error"``), or leave it out (``"skip"``) with one warning per file
        that counts the skipped rows and quotes the first error. Malformed JSON and
        other file-level faults are errors either way, and so is a file left with
        no rows.

    Returns
    -------
    ExampleSet
        The examples in file order, with the original rows, ``path``, ``format``,
        ``schema`` (``"mixed"`` when rows differ) and the ``columns`` of tabular
        formats.

    Raises
    ------
    ParameterError
        If ``max_chars`` is not a positive integer or None, or ``on_invalid`` is
        not ``"error"`` or ``"skip"``.
    DataError
        Naming the file, line (record number for JSON arrays and Parquet), field and
        fix, for: a missing file; a folder of unknown layout; no rows; bytes that
        are not UTF-8; malformed JSON; a row that is not an object; a missing or
        mistyped field; an empty prompt or response; a row over ``max_chars``; a CSV
        row with the wrong number of columns; an unrecognised schema; duplicate ids.

    Notes
    -----
    Schemas are recognised per row by field names (:data:`SCHEMAS`, first match):

    - ``chat`` (``messages``: ``role``/``content``) and ``sharegpt``
      (``conversations``: ``from``/``value``): the response is the last assistant
      turn; the prompt is the turns before it, one ``"Role: content"`` per turn
      joined by ``"\\n"``, with roles shown as ``System``, ``User`` (user, human),
      ``Assistant`` (assistant, gpt, model, bot) or ``Tool``; turns after the last
      assistant turn are dropped. A row without an assistant turn is an error.
    - ``alpaca`` (``instruction``/``input``/``output``) and ``dolly``
      (``instruction``/``context``/``response``): the prompt is the instruction,
      plus ``"\\n\\n"`` and the input/context when it is not blank.
    - ``flan-cot`` (``question``/``answer``/``rationale``): the prompt is the
      question; the response is ``f"{rationale}\\nThe answer is {answer}."`` (no
      extra ``.`` when the answer ends with one; just the sentence when the
      rationale is blank), so the final answer stays extractable.
    - ``gsm8k`` (``question``/``answer``): the answer is kept whole, ``#### N``
      line included.
    - ``prompt-completion`` (a trailing literal ``<|endoftext|>`` is removed, as in
      T0 data), ``prompt-response`` and ``inputs-targets``.

    Ids are a row's own ``id`` (string or integer) when it has one, else
    :func:`~harp.data.content_id` of the rendered prompt and response with ``#2``,
    ``#3``… for exact repeats: stable across runs and across file formats.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"}]
    >>> _ = (d / "pool.json").write_text(json.dumps(rows))
    >>> pool = load_examples(d / "pool.json")
    >>> pool.schema, pool[0].prompt, pool[0].response, pool[0].domain
    ('alpaca', 'Add 2 and 3.', '5', 'default')
    """
    if max_chars is not None and (isinstance(max_chars, bool) or max_chars < 1):
        raise ParameterError(
            f"max_chars must be a positive integer or None, got {max_chars!r}"
        )
    if on_invalid not in ("error", "skip"):
        raise ParameterError(
            f"on_invalid={on_invalid!r} is not allowed; expected 'error' or 'skip'"
        )
    p = Path(path)
    fmt = _normalise_format(format, p) if format is not None else detect_format(p)
    if not p.exists():
        raise DataError("no such file or folder; check the path", path=p)
    builder = _Builder(
        dict(
            prompt_field=prompt_field,
            response_field=response_field,
            domain_field=domain_field,
            max_chars=max_chars,
        ),
        on_invalid=on_invalid,
    )
    columns: tuple[str, ...] = ()
    with _csv_field_limit():
        if fmt == "dir":
            _load_folder(p, builder)
        else:
            if fmt == "hf-disk" and not p.is_dir():
                raise DataError(
                    "format='hf-disk' needs a datasets.save_to_disk folder", path=p
                )
            if fmt != "hf-disk" and p.is_dir():
                raise DataError(
                    f"is a folder; format={fmt!r} needs a file (pass format='dir' to "
                    "read every data file in the folder)",
                    path=p,
                )
            records, columns, fmt = _records_of(p, fmt)
            default = domain_from_stem(p.stem) if fmt == "flan-tsv" else DEFAULT_DOMAIN
            builder.add(p, records, default)
    if not builder.examples:
        raise DataError("the file has no rows; add rows or check the path", path=p)
    schemas = list(builder.schemas)
    schema = schemas[0] if len(schemas) == 1 else "mixed"
    logger.debug(
        "loaded %d rows from %s (%s, %s)", len(builder.examples), p, fmt, schema
    )
    return ExampleSet(
        examples=tuple(builder.examples),
        rows=tuple(builder.rows),
        path=str(p),
        format=fmt,
        schema=schema,
        columns=columns,
    )


def as_example_set(data: Any) -> ExampleSet:
    """Coerce a set, a list of dicts or of examples, or a path into a set."""
    if isinstance(data, ExampleSet):
        return data
    if isinstance(data, (str, Path)) or hasattr(data, "__fspath__"):
        return load_examples(Path(data))
    if isinstance(data, Sequence) and all(isinstance(r, Example) for r in data):
        return ExampleSet(tuple(data))
    if isinstance(data, Sequence):
        return ExampleSet.from_records(data)
    raise TypeError(
        f"expected an ExampleSet, a path or a list of dicts, got {type(data).__name__}"
    )
