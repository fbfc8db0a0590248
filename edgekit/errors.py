"""One exception type for every user-facing failure, printed by the CLI as a single line."""

from __future__ import annotations

from pathlib import Path


class EdgekitError(Exception):
    """A failure the user can act on: the message names the file or tensor and what was expected."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


def first_line(exc: BaseException) -> str:
    """The first line of a library's (often multi-line) error message, else the error's type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
