"""Writing a selection: the rows in the pool's own format plus a metadata sidecar."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from harp.core.io import check_output_path
from harp.core.records import ExampleSet
from harp.core.selection import Selection
from harp.selectors.base import Diagnostics

__all__ = ["environment_info", "sidecar_path", "write_selection"]

_PACKAGES = (
    "harp-select",
    "numpy",
    "scipy",
    "scikit-learn",
    "torch",
    "transformers",
    "peft",
    "sentence-transformers",
    "pyarrow",
)


def sidecar_path(out: str | Path) -> Path:
    """The metadata file beside an output: ``a.jsonl`` → ``a.jsonl.meta.json``."""
    out = Path(out)
    return out.with_name(out.name + ".meta.json")


def _git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info() -> dict[str, Any]:
    """Versions of Python, harp and the libraries behind results; git sha; time."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "versions": versions,
        "git_sha": _git_sha(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_selection(
    pool: ExampleSet,
    selection: Selection,
    out: str | Path,
    *,
    target: ExampleSet | None = None,
    config: dict[str, Any] | None = None,
    force: bool = False,
    out_format: str | None = None,
    diagnostics: Diagnostics | None = None,
) -> tuple[Path, Path]:
    """Write the selected rows and a ``.meta.json`` sidecar; return both paths.

    The rows keep the pool's own format and schema (see :func:`harp.data.write_rows`).
    The sidecar holds the method, parameters, seed, budget, indices in pick order, ids,
    per-row scores, per-pick gains, cost and timings, the resolved config, input paths
    and content hashes, and package versions. Both are written atomically; an existing
    output is refused unless ``force`` (checked for both files before anything is
    written, so a refusal leaves nothing half-done). A method's ``diagnostics`` (the
    HARP tree and posteriors, the log-det greedy trace) go into the sidecar too, for
    ``harp inspect``.
    """
    from harp.data.writers import write_rows

    inputs = tuple(
        p for p in (pool.path, target.path if target is not None else None) if p
    )
    out = check_output_path(out, inputs=inputs, force=force)
    meta = sidecar_path(out)
    check_output_path(meta, inputs=inputs, force=force)
    rows_path = Path(
        write_rows(pool, selection.indices, out, format=out_format, force=force)
    )
    extra = {
        "inputs": {
            "pool": {"path": pool.path, "rows": len(pool), "hash": pool.content_hash()},
            "target": None
            if target is None
            else {
                "path": target.path,
                "rows": len(target),
                "hash": target.content_hash(),
            },
        },
        "output": str(rows_path),
        "config": config or {},
        "environment": environment_info(),
    }
    if diagnostics is not None:
        extra["diagnostics"] = diagnostics.to_dict()
    try:
        selection.save(meta, extra=extra)
    except BaseException:
        # Both or neither: rows without their sidecar would block the rerun.
        with contextlib.suppress(OSError):
            rows_path.unlink()
        raise
    return rows_path, meta
