"""Atomic outputs: a file or folder appears whole or not at all, and a killed writer's
temporary is removed without disturbing a live one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harp.core.artifact import JsonCache
from harp.core.io import atomic_directory, atomic_write_text, remove_stale_temporaries


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_directory_replaces_only_when_asked(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_directory(target) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# A writer that opens its temporary, says so, and waits: killed there, it leaves the
# temporary behind as SIGKILL or an out-of-memory kill would; released, it finishes.
_WRITER = """
import sys
from harp.core.io import {opener}
with {opener}(sys.argv[1]{mode}) as handle:
    {fill}
    print("open", flush=True)
    sys.stdin.readline()
"""
_FILE_WRITER = _WRITER.format(
    opener="atomic_open", mode=', "w"', fill='handle.write("from the writer")'
)
_FOLDER_WRITER = _WRITER.format(
    opener="atomic_directory",
    mode=", overwrite=True",
    fill='(handle / "a.txt").write_text("from the writer")',
)


def _start_writer(source: str, target):
    writer = subprocess.Popen(
        [sys.executable, "-c", source, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline() == "open\n"
    return writer


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("source", [_FILE_WRITER, _FOLDER_WRITER])
def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path, source):
    target = tmp_path / "out.json"
    writer = _start_writer(source, target)
    writer.kill()
    writer.wait()
    (left,) = _temporaries(tmp_path)
    assert left.startswith(f".out.json.{writer.pid}-") and left.endswith(".tmp")
    if source is _FILE_WRITER:
        atomic_write_text(target, "second")
        assert target.read_text() == "second"
    else:
        with atomic_directory(target) as folder:
            (folder / "b.txt").write_text("second")
        assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert _temporaries(tmp_path) == []


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "out.json"
    writer = _start_writer(_FILE_WRITER, target)
    try:
        atomic_write_text(target, "meanwhile")
        assert remove_stale_temporaries(tmp_path) == []
        assert len(_temporaries(tmp_path)) == 1
    finally:
        writer.communicate("\n")
    assert writer.returncode == 0
    assert target.read_text() == "from the writer"  # its rename found its file
    assert _temporaries(tmp_path) == []


def test_only_the_named_outputs_and_this_hosts_temporaries_are_swept(tmp_path):
    writer = _start_writer(_FILE_WRITER, tmp_path / "a.json")
    writer.kill()
    writer.wait()
    (mine,) = _temporaries(tmp_path)
    # The same dead PID on another host sharing the folder: maybe alive there.
    elsewhere = tmp_path / mine.replace(mine.split(".")[3], f"{writer.pid}-00000000")
    elsewhere.write_text("")
    user_file = tmp_path / ".notes.tmp"  # not harp's name: never touched
    user_file.write_text("mine")

    assert remove_stale_temporaries(tmp_path, target="b.json") == []
    assert remove_stale_temporaries(tmp_path) == [tmp_path / mine]
    assert _temporaries(tmp_path) == sorted([elsewhere.name, ".notes.tmp"])


def test_a_cache_opened_after_a_killed_put_holds_no_temporary(tmp_path):
    writer = _start_writer(_FILE_WRITER, tmp_path / "other-key.json")
    writer.kill()
    writer.wait()
    assert len(_temporaries(tmp_path)) == 1
    cache = JsonCache(tmp_path)
    assert _temporaries(tmp_path) == []
    assert cache.get("other-key") is None
