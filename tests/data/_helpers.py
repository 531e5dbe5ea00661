"""Helpers shared by the data tests: where the shared real data lives, writing JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared data folder {SHARED} is absent"
)


def shared(rel: str) -> Path:
    """A file of ``../shared/data``; skips the test when it is absent."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} is absent from the shared data")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """Write ``rows`` as JSON Lines (UTF-8) and return ``path``."""
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path
