"""The runtime imports and generates with torch, transformers, optimum, gguf and onnx made unimportable: a device
needs numpy, onnxruntime and tokenizers only (graphs are lowered at export)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "optimum", "gguf", "onnx"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    from edgekit.runtime import GenerationConfig, load

    model = load(sys.argv[1])
    ids = list(model.generate_ids(model.encode("Hello"), GenerationConfig(max_new_tokens=5, stop_token_ids=())))
    assert len(ids) == 5, ids
    assert not any(m.split(".")[0] in ("torch", "transformers", "onnx") for m in sys.modules)
    print("generated", ids)
""")


def test_runtime_generates_without_torch(tiny_gguf_pkg: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_gguf_pkg)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "generated" in result.stdout


def test_blocking_really_blocks() -> None:
    """The test above would prove nothing if the block did not work."""
    for module in ("torch", "onnx"):
        code = SCRIPT.split("from edgekit")[0] + f"import {module}\n"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert result.returncode != 0 and "blocked in this test" in result.stderr
