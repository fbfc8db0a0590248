"""Read a JSON file that came from outside (a checkpoint's configs, a package's manifest) as one checked step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError


def read_json(path: str | Path, what: str = "") -> Any:
    """The parsed document; damage of any kind (bad UTF-8 or syntax, nesting past Python's recursion limit,
    integers of more than 4300 digits) is one EdgekitError naming the file. `what` prefixes the message."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:200]
        raise EdgekitError(f"{what}not valid JSON ({reason})", path) from exc


def read_json_object(path: str | Path, what: str = "") -> dict[str, Any]:
    """read_json, and the document must be an object."""
    doc = read_json(path, what)
    if not isinstance(doc, dict):
        raise EdgekitError(f"{what}not a JSON object (found {type(doc).__name__})", path)
    return doc
