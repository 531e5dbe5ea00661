"""Content hashes and fingerprints used for ids and cache keys."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from harp.core.io import atomic_write_text

__all__ = ["sha256_hex", "stable_json", "fingerprint", "file_sha256"]

#: Bump when a cached artefact's layout or meaning changes; it enters every fingerprint.
SCHEMA_VERSION = 1


def sha256_hex(data: str | bytes, length: int | None = None) -> str:
    """Hex SHA-256 of ``data`` (str is UTF-8 encoded), optionally truncated."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    return digest if length is None else digest[:length]


def stable_json(obj: Any) -> str:
    """Compact JSON with sorted keys: the same object always gives the same text."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )


def fingerprint(
    stage: str, *, content: str, params: dict[str, Any], seed: Any = None
) -> str:
    """Cache key of a stage: input hash, stage name, params, seed, schema version.

    Pass only non-default params: a new defaulted parameter then keeps old caches valid.
    """
    payload = {
        "stage": stage,
        "content": content,
        "params": params,
        "seed": seed,
        "schema": SCHEMA_VERSION,
    }
    return sha256_hex(stable_json(payload), 32)


#: Whole-file digests computed in this process, by (path, size, mtime, inode).
_FILE_DIGESTS: dict[tuple[str, int, int, int], str] = {}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def file_sha256(
    path: str | Path, *, memo_dir: str | Path | None = None, refresh: bool = False
) -> str:
    """The SHA-256 of every byte of a file, paid once per version of the file.

    The digest is remembered by the file's resolved path, size, modification time
    and inode, in this process and, with ``memo_dir``, on disk (one small file per
    version; a memo that cannot be written is skipped), so a 15 GB weight file is
    read once, not at every run. An edit changes the modification time, so it is
    hashed again.

    Parameters
    ----------
    path : str or Path
        The file.
    memo_dir : str or Path or None, default None
        Folder of the on-disk memo.
    refresh : bool, default False
        Ignore the memos and read the file.

    Returns
    -------
    str
        64 hex digits.
    """
    path = Path(path)
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ino)
    memo = None
    if memo_dir is not None:
        memo = Path(memo_dir) / f"{sha256_hex(stable_json(key), 32)}.sha256"
    if not refresh:
        if key in _FILE_DIGESTS:
            return _FILE_DIGESTS[key]
        if memo is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                text = memo.read_text(encoding="ascii").strip()
                if _HEX64.fullmatch(text):
                    _FILE_DIGESTS[key] = text
                    return text
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    _FILE_DIGESTS[key] = value
    if memo is not None:
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(memo, value + "\n")
    return value
