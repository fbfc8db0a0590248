"""The runtime imports, generates and embeds with torch, transformers, optimum, gguf and onnx made unimportable: a
device needs numpy, onnxruntime and tokenizers only (graphs are lowered at export)."""

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
                raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)  # as if not installed
            return None

    sys.meta_path.insert(0, Block())
    from edgekit.runtime import GenerationConfig, load

    model = load(sys.argv[1])
    ids = list(model.generate_ids(model.encode("Hello"), GenerationConfig(max_new_tokens=5, stop_token_ids=())))
    assert len(ids) == 5, ids
    assert not any(m.split(".")[0] in ("torch", "transformers", "onnx") for m in sys.modules)
    print("generated", ids)
""")


def test_runtime_generates_without_torch(tiny_gguf_pkg: Path, tiny_gpt2_pkg: Path) -> None:
    """A native package and one built through optimum (its concatenated KV cache)."""
    for pkg in (tiny_gguf_pkg, tiny_gpt2_pkg):
        result = subprocess.run([sys.executable, "-c", SCRIPT, str(pkg)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert "generated" in result.stdout


EMBED = SCRIPT.split("from edgekit")[0] + textwrap.dedent("""
    from edgekit.runtime import Encoder, load
    from edgekit.runtime.bench_encoder import run_encoder_sweep
    from edgekit.runtime.bench_formats import FORMATS, render

    encoder = load(sys.argv[1])
    assert isinstance(encoder, Encoder)
    vectors = encoder.embed(["Hello", "A longer sentence to embed."], batch_size=1)
    assert vectors.shape == (2, encoder.dimension), vectors.shape
    assert all(render(run_encoder_sweep(sys.argv[1], (1,), rounds=1), fmt) for fmt in FORMATS)
    assert not any(m.split(".")[0] in ("torch", "transformers", "optimum", "onnx") for m in sys.modules)
    print("embedded", vectors.shape)
""")


def test_runtime_embeds_and_benches_without_torch(tiny_encoder_pkg: Path) -> None:
    result = subprocess.run([sys.executable, "-c", EMBED, str(tiny_encoder_pkg)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "embedded (2, 32)" in result.stdout


def test_blocking_really_blocks() -> None:
    """The test above would prove nothing if the block did not work."""
    for module in ("torch", "onnx"):
        code = SCRIPT.split("from edgekit")[0] + f"import {module}\n"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert result.returncode != 0 and "blocked in this test" in result.stderr


def test_workstation_command_on_a_device_install_names_the_extra(tiny_gguf_file: Path, tmp_path: Path) -> None:
    """`edgekit export` where only the runtime is installed: one line naming the extra, exit 2, nothing written."""
    code = SCRIPT.split("from edgekit")[0] + "from edgekit.cli import main\nmain()\n"
    out = tmp_path / "pkg"
    result = subprocess.run([sys.executable, "-c", code, "export", str(tiny_gguf_file), "-o", str(out)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        ("edgekit: error: `edgekit export` needs the workstation packages (onnx is not installed): "
        "pip install 'edgekit[export]'")]
    assert list(tmp_path.iterdir()) == []
