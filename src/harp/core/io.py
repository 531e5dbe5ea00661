"""Atomic output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from harp.core.errors import HarpError

__all__ = [
    "atomic_directory",
    "atomic_open",
    "atomic_write_text",
    "atomic_write_json",
    "check_output_path",
]


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was, so a
    crash never leaves a half-written output behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Fill a temporary folder next to ``path``; rename it onto ``path`` on success.

    The temporary folder lives in the same parent, so the final rename is atomic: a
    reader sees either no folder or a whole one, never half of it. On any exception
    the temporary folder is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or Path
        The folder to create.
    overwrite : bool, default False
        Replace an existing ``path``. The old folder is renamed aside first and
        removed only once the new one is in place.

    Yields
    ------
    Path
        The temporary folder to write into.

    Raises
    ------
    FileExistsError
        When ``path`` exists at the end and ``overwrite`` is False (checked after the
        work, so that two writers racing for one cache folder both finish cleanly and
        the second one learns it lost).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_directory(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("hi")
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    )
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an output folder is not
        if not overwrite or not (path.exists() or path.is_symlink()):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                # A non-empty folder or a file is in the way (rename replaces only
                # an empty folder): another writer got there first.
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise FileExistsError(f"{path}: exists already") from exc
                raise
        else:
            old = Path(
                tempfile.mkdtemp(
                    prefix=f".{path.name}.", suffix=".old", dir=path.parent
                )
            )
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )


def check_output_path(
    path: str | Path, *, inputs: tuple[str | Path, ...] = (), force: bool = False
) -> Path:
    """Refuse to write onto an input, or onto an existing file without ``force``."""
    out = Path(path)
    resolved = out.resolve()
    for src in inputs:
        if src is not None and Path(src).resolve() == resolved:
            raise HarpError(
                f"{out}: refusing to write the output onto an input file; "
                "choose another --out"
            )
    if out.exists() and not force:
        raise HarpError(
            f"{out}: the output exists already; pass --force to overwrite it"
        )
    if out.exists() and out.is_dir():
        raise HarpError(f"{out}: is a directory; --out must name a file")
    return out
