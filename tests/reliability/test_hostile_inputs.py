"""Hostile input through `harp select`: one clean line, and no output left behind.

Each case writes a pool (and maybe a target), runs the command, and asserts exit code 2,
a message naming the file, the line and/or field where that makes sense, no traceback,
and that neither the output nor its sidecar exists afterwards.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from harp.app.cli import app

runner = CliRunner()
GOOD = {"prompt": "q", "response": "a"}


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _good(n=10) -> bytes:
    return _jsonl(
        {"prompt": f"question {i}", "response": f"answer {i}"} for i in range(n)
    )


# (case id, pool bytes, target bytes or None, extra CLI args, expected fragments)
CASES = [
    (
        "malformed json line",
        _good(3) + b'{"prompt": "x", \n',
        None,
        [],
        ["pool.jsonl:4"],
    ),
    ("row not an object", _good(2) + b"[1, 2]\n", None, [], ["pool.jsonl:3"]),
    (
        "wrong type",
        _jsonl([GOOD, {"prompt": "q", "response": 5}]),
        None,
        [],
        ["pool.jsonl:2", "response"],
    ),
    (
        "missing response",
        _jsonl([GOOD, {"prompt": "only"}]),
        None,
        [],
        ["pool.jsonl:2"],
    ),
    (
        "empty response",
        _jsonl([GOOD, {"prompt": "q2", "response": "   "}]),
        None,
        [],
        ["pool.jsonl:2", "response"],
    ),
    (
        "empty prompt",
        _jsonl([GOOD, {"prompt": "", "response": "a2"}]),
        None,
        [],
        ["pool.jsonl:2", "prompt"],
    ),
    (
        "non-utf8 bytes",
        _good(2) + b'{"prompt": "\xff\xfe", "response": "a"}\n',
        None,
        [],
        ["pool.jsonl:3"],
    ),
    (
        "10 MB single row",
        _jsonl([GOOD, {"prompt": "x" * 10_000_000, "response": "a"}]),
        None,
        [],
        ["pool.jsonl:2"],
    ),
    (
        "NUL bytes in a later line",
        _good(2) + b'{"prompt": "a\x00\x00", "response": "b"}\n',
        None,
        [],
        ["pool.jsonl:3", "NUL byte"],
    ),
    (
        "target with a NUL byte",
        _good(),
        _good(1) + b"\x00",
        ["--method", "dsir"],
        ["target.jsonl:2", "NUL byte"],
    ),
    ("empty pool", b"", None, [], ["pool.jsonl"]),
    ("blank-lines-only pool", b"\n\n  \n", None, [], ["pool.jsonl"]),
    (
        "duplicate ids",
        _jsonl([{"id": 1, **GOOD}, {"id": 1, "prompt": "b", "response": "c"}]),
        None,
        [],
        ["pool.jsonl:2", "id"],
    ),
    ("empty target", _good(), b"", ["--method", "dsir"], ["target.jsonl"]),
    (
        "target with no usable rows",
        _good(),
        _jsonl([{"text": "no schema"}]),
        ["--method", "dsir"],
        ["target.jsonl:1"],
    ),
    ("budget 0", _good(), None, ["--budget", "0"], ["budget", "at least 1"]),
    ("budget negative", _good(), None, ["--budget", "-5"], ["budget", "at least 1"]),
    (
        "budget larger than pool",
        _good(),
        None,
        ["--budget", "11"],
        ["larger than the pool (10 rows)"],
    ),
    ("budget 10%%", _good(), None, ["--budget", "10%%"], ["cannot be read"]),
    ("budget abc", _good(), None, ["--budget", "abc"], ["cannot be read"]),
    ("budget 0%", _good(), None, ["--budget", "0%"], ["percentage"]),
    ("budget 1.5", _good(), None, ["--budget", "1.5"], ["fraction"]),
    ("unknown method", _good(), None, ["--method", "nope"], ["unknown method 'nope'"]),
    (
        "method needs a target",
        _good(),
        None,
        ["--method", "similarity"],
        ["needs a target"],
    ),
    ("unknown method parameter", _good(), None, ["-p", "bogus=1"], ["bogus"]),
    (
        "bad method parameter value",
        _good(),
        _good(),
        ["--method", "dsir", "-p", "num_buckets=-3"],
        ["num_buckets"],
    ),
]


@pytest.mark.parametrize(
    "pool_bytes, target_bytes, args, fragments",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_hostile_input_gives_one_clean_line_and_no_output(
    tmp_path, pool_bytes, target_bytes, args, fragments
):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(pool_bytes)
    cmd = ["select", "--pool", str(pool), "--out", str(tmp_path / "out.jsonl"), *args]
    if target_bytes is not None:
        target = tmp_path / "target.jsonl"
        target.write_bytes(target_bytes)
        cmd += ["--target", str(target)]
    before = pool.read_bytes()
    result = runner.invoke(app, cmd)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error:"), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "out.jsonl.meta.json").exists()
    assert pool.read_bytes() == before  # inputs are never modified


def test_missing_pool_file(tmp_path):
    result = runner.invoke(
        app,
        [
            "select",
            "--pool",
            str(tmp_path / "nope.jsonl"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "nope.jsonl" in result.output


def _numbered_rows(rows=12) -> str:
    return "".join(
        json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(rows)
    )


@pytest.mark.parametrize("name", ["pool.jsonl", "pool.jsonl.gz", "pool"])
def test_compressed_input_is_named_for_what_it_is(tmp_path, name):
    import gzip

    pool = tmp_path / name
    pool.write_bytes(gzip.compress(_numbered_rows().encode()))
    result = runner.invoke(
        app, ["select", "--pool", str(pool), "--out", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 2
    assert "gzip-compressed; decompress it first" in result.output
    assert "latin1" not in result.output


def test_utf16_input_is_read(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(_numbered_rows().encode("utf-16"))
    out = tmp_path / "o.jsonl"
    result = runner.invoke(
        app, ["select", "--pool", str(pool), "--budget", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_device_is_refused_not_half_read(tmp_path, kind):
    import os

    pool = tmp_path / "pool.jsonl"
    if kind == "fifo":
        os.mkfifo(pool)
    else:
        pool.symlink_to("/dev/zero")
    result = runner.invoke(
        app, ["select", "--pool", str(pool), "--out", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 2
    assert "not a regular file" in result.output


def test_a_nan_domain_is_a_missing_domain_not_one_named_nan(tmp_path):
    from harp.data import load_examples

    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        '{"prompt": "a", "response": "b", "domain": NaN}\n'
        '{"prompt": "c", "response": "d", "domain": "x"}\n'
    )
    domains = [e.domain for e in load_examples(pool)]
    assert "nan" not in domains and domains[1] == "x"


def test_a_sparse_file_is_refused_at_once_in_bounded_memory(tmp_path):
    """A 2 GiB file of zeros (a sparse file) is refused without reading it whole."""
    import time
    import tracemalloc

    from harp.core.errors import DataError
    from harp.data import load_examples

    pool = tmp_path / "pool.jsonl"
    with open(pool, "wb") as handle:
        handle.truncate(2 << 30)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DataError, match="NUL byte") as info:
        load_examples(pool)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert f"{pool}:1" in str(info.value)
    assert peak < 16 << 20 and seconds < 10


@pytest.mark.parametrize("name", ["pool.jsonl", "pool.csv", "pool.tsv"])
def test_a_line_over_the_limit_is_refused_by_its_number(tmp_path, monkeypatch, name):
    from harp.core.errors import DataError
    from harp.data import load_examples, loaders

    monkeypatch.setattr(loaders, "MAX_LINE_BYTES", 1000)
    pool = tmp_path / name
    if name.endswith("jsonl"):
        long_row = json.dumps({"prompt": "x" * 2000, "response": "a"}) + "\n"
        pool.write_bytes(_good(3) + long_row.encode())
        line = 4
    else:
        sep = "," if name.endswith("csv") else "\t"
        pool.write_text(f"prompt{sep}response\nq{sep}a\n{'x' * 2000}{sep}a\n")
        line = 3
    with pytest.raises(DataError, match="longer than") as info:
        load_examples(pool)
    assert f"{pool}:{line}" in str(info.value)


def test_a_json_document_on_one_long_line_is_not_held_to_the_line_limit(
    tmp_path, monkeypatch
):
    """A minified JSON array is one line of any length: only rows are limited."""
    from harp.data import load_examples, loaders

    monkeypatch.setattr(loaders, "MAX_LINE_BYTES", 1000)
    pool = tmp_path / "pool.json"
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(200)]
    pool.write_text(json.dumps(rows))
    assert len(pool.read_bytes()) > 1000 and b"\n" not in pool.read_bytes()
    assert len(load_examples(pool)) == 200


def test_rows_read_one_line_at_a_time_match_the_whole_file(tmp_path):
    """Streaming keeps every row format's meaning: CRLF ends, quoted newlines, BOMs."""
    from harp.data import load_examples

    csv_path = tmp_path / "a.csv"
    csv_path.write_bytes(b'\xef\xbb\xbfprompt,response\r\n"two\r\nlines",b\r\nc,d\r\n')
    rows = load_examples(csv_path)
    assert [(e.prompt, e.response) for e in rows] == [("two\r\nlines", "b"), ("c", "d")]
    flan = tmp_path / "f.tsv"
    flan.write_bytes(b"q1\ta1\tr1\r\nq2\\nmore\ta2\tr2")
    assert len(load_examples(flan, format="flan-tsv")) == 2
    jsonl = tmp_path / "j.jsonl"
    jsonl.write_bytes(
        b'{"prompt": "p", "response": "r"}\r\n\r\n{"prompt": "q", "response": "s"}'
    )
    assert [e.prompt for e in load_examples(jsonl)] == ["p", "q"]
