"""Outputs never touch inputs; the outside world's refusals are one line, exit 2."""

from __future__ import annotations

import errno
import json
import os

import pytest
from typer.testing import CliRunner

from harp.app.cli import app

runner = CliRunner()


def _rows(n=30):
    return [
        {"prompt": f"Add {i} and {i + 1}.", "response": str(2 * i + 1)}
        for i in range(n)
    ]


def _select(pool, out, *extra):
    args = ["select", "--pool", str(pool), "--budget", "3", "--out", str(out)]
    return runner.invoke(app, [*args, *extra])


@pytest.fixture
def folder_pool(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for part in ("a", "b"):
        (folder / f"{part}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _rows())
        )
    return folder


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("name", ["a.jsonl", "new.jsonl", "a.jsonl.meta.json"])
def test_no_output_inside_a_folder_pool_even_with_force(folder_pool, name):
    before = _snapshot(folder_pool)
    result = _select(folder_pool, folder_pool / name, "--force")
    assert result.exit_code == 2
    assert "refusing to write inside the input folder" in result.output
    assert _snapshot(folder_pool) == before


def test_an_out_that_names_a_folder_is_refused_with_an_example(tmp_path, folder_pool):
    target = tmp_path / "newdir"
    result = _select(folder_pool, f"{target}/")
    assert result.exit_code == 2
    assert "is a folder; --out must name a file" in result.output
    assert not target.exists()


def test_a_device_is_never_replaced_by_a_file(folder_pool):
    result = _select(folder_pool, "/dev/null", "--force")
    assert result.exit_code == 2
    assert "not a regular file" in result.output
    assert not os.path.isfile("/dev/null")


def test_outputs_honour_the_umask(tmp_path, folder_pool):
    old = os.umask(0o022)
    try:
        result = _select(folder_pool, tmp_path / "o.jsonl")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for path in (tmp_path / "o.jsonl", tmp_path / "o.jsonl.meta.json"):
        assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "code, advice",
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EROFS, "the file system is read-only"),
        (errno.ENAMETOOLONG, "the name is too long"),
    ],
)
def test_a_sidecar_that_cannot_be_written_leaves_neither_file(
    tmp_path, folder_pool, monkeypatch, code, advice
):
    from harp.core.selection import Selection

    def refuse(self, path, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(Selection, "save", refuse)
    out = tmp_path / "o.jsonl"
    result = _select(folder_pool, out)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "o.jsonl.meta.json" in lines[0] and advice in lines[0]
    # Both or neither: the rerun is not blocked by a rows file without its sidecar.
    assert not out.exists() and not (tmp_path / "o.jsonl.meta.json").exists()
    monkeypatch.undo()
    assert _select(folder_pool, out).exit_code == 0


@pytest.mark.parametrize(
    "options, advice",
    [("rw", "no space left on the device"), ("ro", "the file system is read-only")],
)
def test_a_real_full_or_read_only_file_system_is_one_line(
    tmp_path, small_mount, options, advice
):
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"prompt": f"question {i} " + "x" * 4000, "response": "a"} for i in range(40)
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = small_mount(options)
    out = folder / "o.jsonl"
    result = runner.invoke(
        app, ["select", "--pool", str(pool), "--budget", "40", "--out", str(out)]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    # The line names the file asked for, not a temporary one, and says what to do.
    assert len(lines) == 1 and f"{out}:" in lines[0] and advice in lines[0], lines
    assert list(folder.iterdir()) == []  # nothing partial left behind
