"""`load`: open a package as what its manifest's graph contract says it is, a text decoder or an encoder."""

from __future__ import annotations

import inspect
from pathlib import Path

from edgekit.runtime.encoder import Encoder
from edgekit.runtime.generator import Model
from edgekit.runtime.loader import describe_kind, is_encoder

from edgekit.package import read_manifest


def load(path: str | Path, **kwargs: object) -> Model | Encoder:
    """Load a package folder: a Model (keywords device, fast, max_length, threads, spinning, verify, draft,
    float_passes, idle_caches: see Model), or an Encoder for a sentence-embedding package (device, fast, threads,
    verify). A keyword the package's kind does not take raises TypeError naming it and the package's kind."""
    manifest = read_manifest(path)
    kind = Encoder if is_encoder(manifest) else Model
    taken = [name for name in inspect.signature(kind).parameters if name != "path"]
    wrong = [name for name in kwargs if name not in taken]
    if wrong:
        raise TypeError(f"{path} is {describe_kind(manifest)}: {kind.__name__} takes no {', '.join(wrong)} "
                        f"(it takes {', '.join(taken)})")
    return kind(path, **kwargs)  # type: ignore[arg-type]
