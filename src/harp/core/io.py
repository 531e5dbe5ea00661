"""Atomic output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
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
    "os_error_line",
    "remove_stale_temporaries",
]

log = logging.getLogger(__name__)

# A temporary name: ``.<target>.<pid>-<host>.<random>.tmp`` (``.old`` for a folder
# being replaced). The writer's PID and a hash of where that PID means something let
# a later run tell a leftover of a killed writer from a file another process is still
# writing, the way git marks its gc.pid lock with the PID and the host name.
_TEMPORARY = re.compile(
    r"^\.(?P<target>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[^.]+\.(?:tmp|old)$"
)


@functools.cache
def _host_tag() -> str:
    """A hash of the host name and of the PID namespace: containers that share a
    host name (``--network host``) and a cache folder do not see each other's PIDs."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    where = f"{socket.gethostname()}\0{namespace}"
    return hashlib.sha256(where.encode()).hexdigest()[:8]


def _temporary_prefix(path: Path) -> str:
    # The PID is read at each call: a forked worker writes under its own.
    return f".{path.name}.{os.getpid()}-{_host_tag()}."


def _process_exists(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap check: never remove what might be in use
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # someone else's process, or no PID at all: leave it
    return True


#: Folders this process has swept whole: a killed writer's leftover predates the
#: sweep, so one sweep per folder and process finds it. Listing a cache folder of
#: 10,000 entries costs ~5 ms, ten times a small atomic write.
_SWEPT: set[str] = set()


def _sweep_once(directory: Path) -> None:
    if os.path.abspath(directory) not in _SWEPT:
        remove_stale_temporaries(directory)


def remove_stale_temporaries(
    directory: str | Path, target: str | None = None
) -> list[Path]:
    """Remove what killed writers left in ``directory``; return what was removed.

    :func:`atomic_open` and :func:`atomic_directory` remove their temporary file or
    folder on any exception, but a process killed outright (SIGKILL, out of memory,
    power loss) cannot, and its temporary stays beside the output. This removes such
    leftovers: temporaries whose writer ran on this host (in this PID namespace) and
    no longer exists. A temporary of a live process, or of another host or container
    sharing the folder, is left alone, so a sweep never breaks a write in progress.
    Failures to list or remove are ignored: tidying up must not stop a run.

    Parameters
    ----------
    directory : str or Path
        The folder to sweep (not its subfolders).
    target : str, optional
        Only the temporaries of the output with this file name.

    Returns
    -------
    list of Path
        The temporaries removed.
    """
    directory = Path(directory)
    prefix = "." if target is None else f".{target}."
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(prefix)]
    except OSError:
        return removed
    if target is None:
        _SWEPT.add(os.path.abspath(directory))
    for entry in entries:
        found = _TEMPORARY.match(entry.name)
        if (
            found is None
            or (target is not None and found["target"] != target)
            or found["host"] != _host_tag()
            or _process_exists(int(found["pid"]))
        ):
            continue
        path = directory / entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    if removed:
        log.info(
            "%s: removed %d temporary file(s) left by an interrupted run",
            directory,
            len(removed),
        )
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was, so a
    crash never leaves a half-written output behind; what killed writers left in
    ``path``'s folder is removed at this process's first write there
    (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        raise _naming(exc, path, None) from exc
    os.close(fd)
    try:
        # mkstemp makes the file 0600; an output gets what the user's umask allows.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path, tmp) from exc
        raise


def _naming(exc: OSError, path: Path, tmp: str | Path | None) -> OSError:
    """``exc`` naming the output ``path`` when it names no file or a temporary one.

    A write that fails (a full disk) carries no file name, and a temporary file or
    folder (or a file inside it) is a name the user never chose: the message must
    name the output they asked for. ``tmp`` None: any name is a temporary one.
    """
    if exc.errno is None:
        return exc
    name = exc.filename
    if name is not None and tmp is not None:
        if not isinstance(name, (str, os.PathLike)):
            return exc
        if not Path(os.fsdecode(name)).absolute().is_relative_to(Path(tmp).absolute()):
            return exc
    return type(exc)(exc.errno, exc.strerror, str(path))


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Fill a temporary folder next to ``path``; rename it onto ``path`` on success.

    The temporary folder lives in the same parent, so the final rename is atomic: a
    reader sees either no folder or a whole one, never half of it. On any exception
    the temporary folder is removed and ``path`` is left as it was; what killed
    writers left in ``path``'s folder is removed at this process's first write there
    (:func:`remove_stale_temporaries`).

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
    _sweep_once(path.parent)
    try:
        tmp = Path(
            tempfile.mkdtemp(
                prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent
            )
        )
    except OSError as exc:
        raise _naming(exc, path, None) from exc
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
                    prefix=_temporary_prefix(path), suffix=".old", dir=path.parent
                )
            )
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path, tmp) from exc
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
    """Refuse an output that would touch an input, or is not a file to (over)write.

    Refused, ``force`` or not: the path of an input file; a path inside an input
    folder (a folder pool, a saved dataset); a name ending in a separator or an
    existing folder (``--out`` names a file); an existing device, pipe or socket.
    An existing regular file is refused without ``force``.

    Raises
    ------
    HarpError
        One line naming the path and what to do instead.
    """
    text = str(path)
    out = Path(path)
    if text.endswith((os.sep, "/")) or out.is_dir():
        raise HarpError(
            f"{out}: is a folder; --out must name a file, e.g. {out / 'subset.jsonl'}"
        )
    resolved = out.resolve()
    sources = [(src, Path(src).resolve()) for src in inputs if src is not None]
    if any(source == resolved for _, source in sources):
        raise HarpError(
            f"{out}: refusing to write the output onto an input file; "
            "choose another --out"
        )
    for src, source in sources:
        if source.is_dir() and resolved.is_relative_to(source):
            raise HarpError(
                f"{out}: refusing to write inside the input folder {src}; "
                "choose an --out outside it"
            )
    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise HarpError(
                f"{out}: exists and is not a regular file (a device, pipe or "
                "socket); choose another --out"
            )
        if not force:
            raise HarpError(
                f"{out}: the output exists already; pass --force to overwrite it"
            )
    _check_writable_folder(out)
    return out


def _check_writable_folder(out: Path) -> None:
    """Refuse, before any work, an output whose folder cannot be made or written."""
    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise HarpError(
            f"{out}: {folder} is a file, not a folder; " + _OS_ADVICE[errno.ENOTDIR]
        )
    if os.access(folder, os.W_OK | os.X_OK):
        return
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    code = errno.EROFS if read_only else errno.EACCES
    raise HarpError(f"{out}: {folder} cannot be written ({_OS_ADVICE[code]})")


#: What to do about the outside world's refusals, by errno.
_OS_ADVICE = {
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOSPC: "no space left on the device; free some or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded; free some or choose another folder",
    errno.ENAMETOOLONG: "the name is too long for the file system; shorten it",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "it is a folder; name a file",
    errno.EACCES: "permission denied; check the permissions or choose another path",
    errno.EPERM: "not permitted; check the permissions or choose another path",
    errno.ENOENT: "no such file or folder; check the path",
}


def os_error_line(exc: OSError) -> str:
    """One line for a refusal of the file system: the path, what, and what to do.

    Examples
    --------
    >>> import errno
    >>> os_error_line(OSError(errno.ENAMETOOLONG, "File name too long", "/d/x"))
    '/d/x: File name too long (the name is too long for the file system; shorten it)'
    """
    where = exc.filename if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    what = exc.strerror or type(exc).__name__
    advice = _OS_ADVICE.get(exc.errno or -1)
    return f"{where}: {what}" + (f" ({advice})" if advice else "")
