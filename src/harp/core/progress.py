"""The one progress bar of harp: a rich bar when asked for, nothing otherwise."""

from __future__ import annotations

from types import TracebackType
from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A transient rich progress bar, or a no-op when ``enabled`` is False.

    Parameters
    ----------
    enabled : bool
        Show the bar (typically ``context.progress``).
    description : str
        Text left of the bar.
    total : int or None
        Steps to completion (None: unknown).

    Examples
    --------
    >>> with ProgressBar(False, "work", 3) as bar:
    ...     for _ in range(3):
    ...         bar.advance()
    """

    def __init__(self, enabled: bool, description: str, total: int | None) -> None:
        self.enabled = bool(enabled)
        self.description = description
        self.total = total
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._task = self._bar.add_task(self.description, total=self.total)
            self._bar.start()
        return self

    def advance(self, steps: int = 1, *, description: str | None = None) -> None:
        """Move the bar on by ``steps`` (and change its text, when given)."""
        if self._bar is not None:
            extra = {} if description is None else {"description": description}
            self._bar.update(self._task, advance=steps, **extra)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
