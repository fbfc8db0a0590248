"""The load-time coverage line of an NPU provider, remembered per user, so it costs one extra session once.

Counting the nodes a provider takes needs a session with onnxruntime's verbose log on (runtime.coverage), and
the session the runtime keeps must be a quiet one: QNN logs every run at the verbose level, and run options do
not quiet it (measured, onnxruntime-qnn 2.7.0). So the count is a second session, about as costly as the
first (QNN compiles the graph again: seconds for SmolLM2-135M's static graphs). Which nodes a provider takes
depends only on the graph file (its structure and types; weights live in the external data), the provider,
its options and the onnxruntime and plugin versions: the line is kept under a key of exactly those, in the
user's cache folder (`$XDG_CACHE_HOME/edgekit/coverage`, else `~/.cache/edgekit/coverage`). A cache that
cannot be read or written is skipped: the line is then measured each load, as without a cache.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

MAX_LINE = 1000  # a coverage line is short; anything longer in the cache is not one of ours


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgekit" / "coverage"


def cached_line(graph: Path, provider: str, options: dict[str, str], distribution: str,
                measure: Callable[[], str]) -> str:
    """The coverage line of `graph` on `provider` (its plugin wheel `distribution`, provider `options`): from the
    cache, else `measure()`, then kept."""
    path = cache_folder() / f"{_key(graph, provider, options, distribution)}.txt"
    try:
        line = path.read_text(encoding="utf-8")
        if 0 < len(line) <= MAX_LINE and "\n" not in line:
            return line
    except (OSError, UnicodeDecodeError):
        pass
    line = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(line, encoding="utf-8")
        partial.replace(path)  # atomic: another process reads the old line or the new one, never half of one
    except OSError:
        pass
    return line


def _key(graph: Path, provider: str, options: dict[str, str], distribution: str) -> str:
    digest = hashlib.sha256(graph.read_bytes())
    try:
        plugin = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        plugin = "unknown"
    digest.update(json.dumps([provider, sorted(options.items()), ort.__version__, plugin]).encode())
    return digest.hexdigest()
