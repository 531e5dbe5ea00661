"""Write a selection back in the pool's own format and schema.

:func:`write_rows` writes the *original* rows of an :class:`~harp.data.ExampleSet`
(not the normalised prompt/response records), so a subset of an Alpaca JSON file is
an Alpaca JSON file, a subset of a Parquet file is a Parquet file, and so on. Output
is atomic (a temporary file beside the target, renamed on success), an existing
output is refused without ``force`` and an input is never written over.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harp.core.errors import DataError, ParameterError
from harp.core.io import atomic_open, check_output_path
from harp.core.records import DEFAULT_DOMAIN, ExampleSet, content_id
from harp.data.loaders import (
    _ALIASES,
    _EXTENSIONS,
    _domain_of,
    _explicit_id,
    detect_format,
    domain_from_stem,
)

__all__ = ["OUTPUT_FORMATS", "detect_format", "write_rows"]

logger = logging.getLogger(__name__)

#: Formats :func:`write_rows` can write.
OUTPUT_FORMATS = ("jsonl", "json", "parquet", "csv", "tsv", "flan-tsv")

# Formats that are one family: a .tsv output of a FLAN pool stays FLAN TSV.
_FAMILY = {"flan-tsv": "tsv"}
_FLAN_COLUMNS = ("question", "answer", "rationale")


def _output_format(examples: ExampleSet, out: Path, format: str | None) -> str:
    """The format to write: explicit, else the extension's, else the pool's."""
    pool_fmt = examples.format if examples.rows else "memory"
    # Folders, save_to_disk folders and in-memory sets have no file format: JSONL.
    own = pool_fmt if pool_fmt in OUTPUT_FORMATS else "jsonl"
    if format is not None and format.lower() != "auto":
        name = _ALIASES.get(format.lower(), format.lower())
        if name not in OUTPUT_FORMATS:
            raise ParameterError(
                f"format={format!r} cannot be written; use one of "
                f"{', '.join(OUTPUT_FORMATS)} (or None for the pool's own format)"
            )
        return name
    by_ext = _EXTENSIONS.get(out.suffix.lower())
    if by_ext is None or _FAMILY.get(own, own) == by_ext:
        return own
    if pool_fmt in OUTPUT_FORMATS:
        logger.info(
            "%s: writing %s as its extension says (the pool is %s)", out, by_ext, own
        )
    return by_ext


def _check_indices(indices: Iterable[int], n: int) -> list[int]:
    try:
        idx = [int(i) for i in indices]
    except (TypeError, ValueError):
        raise ParameterError("indices must be integers (row positions in the pool)")
    seen: set[int] = set()
    for i in idx:
        if not 0 <= i < n:
            raise ParameterError(
                f"index {i} is out of range for a pool of {n} rows; indices must be "
                f"in [0, {n})"
            )
        if i in seen:
            raise ParameterError(
                f"index {i} is given twice; each row can be written once"
            )
        seen.add(i)
    return idx


def _output_rows(
    examples: ExampleSet, idx: list[int], fmt: str, out: Path
) -> list[dict[str, Any]]:
    """The rows to write, with ``id``/``domain`` added only where reloading needs them.

    A row's id or domain may come from outside the row: the ``#2`` suffix of an
    exact repeat depends on what came before it, and the domain of a row in a
    folder or a FLAN TSV comes from its file name (or from ``domain_field``). Such
    rows gain an ``id``/``domain`` field so that the output reloads with the same
    ids and domains as ``examples.subset(indices)``.
    """
    if not examples.rows or examples.format == "memory":
        # In-memory sets (and sets built from bare Examples) have no file rows.
        return [
            {"id": e.id, "prompt": e.prompt, "response": e.response, "domain": e.domain}
            for e in (examples.examples[i] for i in idx)
        ]
    if fmt == "flan-tsv":
        return _flan_rows(examples, idx, out)
    reload_domain = DEFAULT_DOMAIN
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    added_ids = added_domains = 0
    for i in idx:
        example, row = examples.examples[i], examples.rows[i]
        extra: dict[str, Any] = {}
        if _explicit_id(row) is None:
            # Replay the loader's repeat numbering on the output's own order.
            base = content_id(example.prompt, example.response)
            candidate, count = base, 1
            while candidate in seen:
                count += 1
                candidate = f"{base}#{count}"
            if candidate != example.id:
                extra["id"] = example.id
                added_ids += 1
        seen.add(example.id)
        own_domain = _domain_of(row)
        if (own_domain if own_domain is not None else reload_domain) != example.domain:
            if "domain" in row and row["domain"] not in (None, ""):
                logger.debug("row %d keeps its own 'domain' field", i)
            else:
                extra["domain"] = example.domain
                added_domains += 1
        rows.append({**row, **extra} if extra else row)
    if added_ids or added_domains:
        logger.info(
            "%s: added 'id' to %d and 'domain' to %d rows so that the output reloads "
            "with the pool's ids and domains",
            out,
            added_ids,
            added_domains,
        )
    return rows


def _flan_rows(examples: ExampleSet, idx: list[int], out: Path) -> list[dict[str, Any]]:
    rows = []
    for i in idx:
        row = examples.rows[i]
        missing = [c for c in _FLAN_COLUMNS if not isinstance(row.get(c), str)]
        if missing:
            raise DataError(
                f"cannot write this row as a FLAN TSV: it needs string fields "
                f"{', '.join(_FLAN_COLUMNS)} and lacks {', '.join(missing)}; write "
                "JSONL instead",
                path=examples.examples[i].source.rpartition(":")[0] or None,
                line=examples.examples[i].line,
                field=missing[0],
            )
        rows.append(row)
    stem_domain = domain_from_stem(out.stem)
    if any(examples.examples[i].domain != stem_domain for i in idx):
        logger.warning(
            "%s: a FLAN TSV has no domain field; reloaded, its rows get the domain "
            "%r from the file name",
            out,
            stem_domain,
        )
    return rows


def _columns(examples: ExampleSet, rows: list[dict[str, Any]]) -> list[str]:
    """Pool column order first (tabular pools), then any other keys as first seen."""
    columns = dict.fromkeys(examples.columns if examples.rows else ())
    for row in rows:
        for key in row:
            if key not in columns:
                columns[key] = None
    return [str(c) for c in columns]


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, default=str)


def _write_jsonl(out: Path, rows: list[dict[str, Any]]) -> None:
    dumps = json.dumps
    with atomic_open(out, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(dumps(row, ensure_ascii=False, default=str))
            handle.write("\n")


def _write_json(out: Path, rows: list[dict[str, Any]]) -> None:
    text = json.dumps(rows, ensure_ascii=False, indent=2, default=str)
    with atomic_open(out, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text + "\n")


def _write_delimited(
    out: Path, rows: list[dict[str, Any]], columns: list[str], delimiter: str
) -> None:
    buffer = io.StringIO()
    # "\r\n" (RFC 4180) also makes the writer quote fields holding a lone "\r",
    # which a "\n" terminator would leave bare, breaking the row on reading.
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    with atomic_open(out, "w", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())


def _escape_flan(text: str, out: Path, field: str) -> str:
    for bad, name in (("\t", "a tab"), ("\\n", "a literal backslash-n")):
        if bad in text:
            raise DataError(
                f"holds {name}, which a FLAN TSV cannot represent; write JSONL instead",
                path=out,
                field=field,
            )
    return text.replace("\r\n", "\n").replace("\n", "\\n")


def _write_flan_tsv(out: Path, rows: list[dict[str, Any]]) -> None:
    lines = [
        "\t".join(_escape_flan(row[c], out, c) for c in _FLAN_COLUMNS) + "\n"
        for row in rows
    ]
    with atomic_open(out, "w", encoding="utf-8", newline="") as handle:
        handle.writelines(lines)


def _write_parquet(
    out: Path, rows: list[dict[str, Any]], columns: list[str], source_schema: Any
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Column-wise, so that keys missing from the first rows still get a column.
    data = {c: [row.get(c) for row in rows] for c in columns}
    table = None
    if source_schema is not None and list(source_schema.names) == columns:
        try:
            # Keep the pool's column types (int32, timestamps…) when they still fit.
            table = pa.Table.from_pydict(data, schema=source_schema)
        except Exception:  # pyarrow raises many types; fall back to inference
            table = None
    if table is None:
        try:
            table = pa.Table.from_pydict(data)
        except Exception as exc:  # pyarrow raises many unrelated types
            raise DataError(
                f"cannot write these rows as Parquet ({type(exc).__name__}: {exc}); "
                "a column mixes types; write JSONL instead (name the output .jsonl)",
                path=out,
            ) from None
    with atomic_open(out, "wb") as handle:
        pq.write_table(table, handle)


def _source_parquet_schema(examples: ExampleSet) -> Any:
    if examples.format != "parquet" or not examples.path:
        return None
    try:
        import pyarrow.parquet as pq

        return pq.read_schema(examples.path)
    except Exception:  # the pool may be gone or unreadable: infer types instead
        return None


def write_rows(
    examples: ExampleSet,
    indices: Iterable[int],
    path: str | Path,
    *,
    format: str | None = None,
    force: bool = False,
) -> Path:
    """Write the rows at ``indices`` (in that order) in the pool's own format.

    Parameters
    ----------
    examples : ExampleSet
        The loaded pool (see :func:`harp.data.load_examples`).
    indices : iterable of int
        Row positions in ``examples``, each at most once; written in this order.
    path : str or Path
        The output file. Its parent folders are created.
    format : str, optional
        Output format: one of :data:`OUTPUT_FORMATS`, or None/``"auto"``. When
        None, the pool's own format is written, unless the extension of ``path``
        names another format (``subset.parquet`` of a JSONL pool is Parquet).
    force : bool, default False
        Overwrite an existing output. An input file is never overwritten.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    HarpError
        If ``path`` exists (without ``force``), is a folder, or is an input file.
    DataError
        If the rows cannot be represented in the output format.
    ParameterError
        If an index is out of range or repeated, or ``format`` is unknown.

    Notes
    -----
    - JSONL, JSON (an array, even when the pool held it under a key), Parquet (the
      pool's column types kept when possible), CSV and TSV (the pool's delimiter
      and column order, ``"\\r\\n"`` line ends; nested values as JSON text) and FLAN
      TSV (headerless, ``question``/``answer``/``rationale``, newlines escaped as
      ``\\n``) echo the original rows.
    - ``datasets.save_to_disk`` folders and folders of files are written as JSONL;
      in-memory sets as JSONL of ``{"id", "prompt", "response", "domain"}``.
    - Rows whose id or domain came from outside the row (the ``#2`` suffix of an
      exact repeat written out of order; a domain from a file name or
      ``domain_field``) gain an ``id``/``domain`` field, so that
      ``load_examples(write_rows(s, idx, out))`` has the ids, prompts, responses and
      domains of ``s.subset(idx)`` (given the same field options). A FLAN TSV
      cannot hold them: its rows get the domain of the output's file name.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from harp.data import ExampleSet, load_examples
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> pool = ExampleSet.from_records(
    ...     [{"prompt": "1+1", "response": "2"}, {"prompt": "2+2", "response": "4"}]
    ... )
    >>> out = write_rows(pool, [1], d / "subset.jsonl")
    >>> [e.prompt for e in load_examples(out)]
    ['2+2']
    """
    out = Path(path)
    inputs: set[str] = {examples.path} if examples.path else set()
    # A folder pool's inputs are its files: name them all, not only the folder.
    inputs.update(e.source.rpartition(":")[0] for e in examples.examples if e.source)
    inputs.discard("")
    inputs.discard("<memory>")
    check_output_path(out, inputs=tuple(sorted(inputs)), force=force)
    idx = _check_indices(indices, len(examples))
    fmt = _output_format(examples, out, format)
    rows = _output_rows(examples, idx, fmt, out)
    if fmt == "jsonl":
        _write_jsonl(out, rows)
    elif fmt == "json":
        _write_json(out, rows)
    elif fmt == "flan-tsv":
        _write_flan_tsv(out, rows)
    elif fmt == "parquet":
        columns = _columns(examples, rows)
        _write_parquet(out, rows, columns, _source_parquet_schema(examples))
    else:
        columns = _columns(examples, rows)
        _write_delimited(out, rows, columns, "," if fmt == "csv" else "\t")
    logger.info("wrote %d rows to %s (%s)", len(rows), out, fmt)
    return out
