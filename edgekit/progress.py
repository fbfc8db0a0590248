"""The one progress helper: library code reports long steps through it, never by printing."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr, shown only on a terminal (a log gets no carriage-return noise) and
    hidden when EDGEKIT_QUIET=1."""
    quiet = os.environ.get("EDGEKIT_QUIET") == "1" or not sys.stderr.isatty()
    yield from tqdm(items, desc=desc, total=total, disable=quiet, file=sys.stderr, leave=False)
