"""A folder of JSON results keyed by fingerprint: what makes long runs resumable."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from harp.core.hashing import sha256_hex, stable_json
from harp.core.io import atomic_write_json, remove_stale_temporaries

__all__ = ["JsonCache"]

log = logging.getLogger(__name__)


class JsonCache:
    """JSON results of finished steps, one file per key, each written atomically.

    A run that stores every finished step here and looks it up before doing it again
    resumes after a crash without repeating finished work: a file either holds a
    whole result or does not exist (it is renamed into place). Each file carries its
    key and the SHA-256 of its value, checked on every read: a file that was
    truncated, edited or written for another key is reported in one line naming it
    and counts as missing, so the step is computed again and the file replaced. The
    temporary files of writers killed mid-write are removed when the cache is opened.

    Parameters
    ----------
    directory : str or Path
        The cache folder (created when missing).

    Examples
    --------
    >>> import tempfile
    >>> cache = JsonCache(tempfile.mkdtemp())
    >>> cache.get("abc") is None
    True
    >>> cache.put("abc", {"score": 0.5})
    >>> cache.get("abc")
    {'score': 0.5}
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.directory)

    def path(self, key: str) -> Path:
        """The file that holds ``key``'s result."""
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result of ``key``, or None when never finished (or damaged)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            return self._damaged(path, f"unreadable: {exc}")
        if not isinstance(entry, dict) or set(entry) != {"key", "sha256", "value"}:
            return self._damaged(path, "not a harp cache entry")
        if entry["key"] != key:
            return self._damaged(path, f"it holds the result of {entry['key']!r}")
        value = entry["value"]
        if (
            not isinstance(value, dict)
            or sha256_hex(stable_json(value)) != entry["sha256"]
        ):
            return self._damaged(path, "its content does not match its checksum")
        return value

    @staticmethod
    def _damaged(path: Path, why: str) -> None:
        log.warning("%s: damaged cache entry (%s); computing it again", path, why)
        return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` under ``key`` (atomically: all or nothing)."""
        entry = {"key": key, "sha256": sha256_hex(stable_json(value)), "value": value}
        atomic_write_json(self.path(key), entry)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None
