"""Content hashes and fingerprints used for ids and cache keys."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["sha256_hex", "stable_json", "fingerprint"]

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
