"""Exceptions that harp raises on purpose.

Every error a user can cause derives from :class:`HarpError`; the CLI prints such errors
as one line (no traceback) and exits with status 2. Messages say *where* (file, line,
field), *what* was wrong and *how to fix it*.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "HarpError",
    "DataError",
    "ParameterError",
    "NotFittedError",
    "ModelError",
    "NumericalError",
]


class HarpError(Exception):
    """Base class of every error harp raises because of user input or state."""


class DataError(HarpError, ValueError):
    """A data file (pool, target, subset) cannot be used as given.

    Parameters
    ----------
    message : str
        What is wrong and how to fix it.
    path : str or Path, optional
        The file concerned.
    line : int, optional
        1-based line (JSONL/CSV/TSV) or record number (JSON array, Parquet row + 1).
    field : str, optional
        The field concerned.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = []
        if self.path is not None:
            where.append(self.path if line is None else f"{self.path}:{line}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ParameterError(HarpError, ValueError):
    """A hyper-parameter or option has a value that is not allowed."""


class NotFittedError(HarpError, AttributeError):
    """A fitted attribute (ending in ``_``) was read before ``fit``."""


class ModelError(HarpError, RuntimeError):
    """A model directory cannot be loaded or used."""


class NumericalError(HarpError, FloatingPointError):
    """A loss, gradient or score became NaN or infinite."""
