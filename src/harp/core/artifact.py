"""A folder of JSON results keyed by fingerprint: what makes long runs resumable."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from harp.core.io import atomic_write_json

__all__ = ["JsonCache"]

log = logging.getLogger(__name__)


class JsonCache:
    """JSON results of finished steps, one file per key, each written atomically.

    A run that stores every finished step here and looks it up before doing it again
    resumes after a crash without repeating finished work: a file either holds a
    whole result or does not exist (it is renamed into place), and a torn file left
    by an older, non-atomic writer is treated as missing.

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

    def path(self, key: str) -> Path:
        """The file that holds ``key``'s result."""
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result of ``key``, or None when it was never finished."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            log.warning("ignoring unreadable cache file %s (recomputing)", path)
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` under ``key`` (atomically: all or nothing)."""
        atomic_write_json(self.path(key), value)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None
