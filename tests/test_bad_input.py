"""Bad input: one line naming the file and what is wrong, exit status 2, and nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from edgekit.runtime import load
from factories import tiny_gguf

from edgekit.cli import main
from edgekit.errors import EdgekitError


def _fails(args: list[str], *expected: str) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgekit: error: "), err
    for text in expected:
        assert text in err, err
    return err


def _no_partial_output(folder: Path) -> None:
    assert not (folder / "out").exists()
    assert not list(folder.glob(".out.partial-*"))


def test_missing_file(tmp_path: Path) -> None:
    _fails(["export", str(tmp_path / "nope.gguf"), "-o", str(tmp_path / "out")], "nope.gguf", "no such file")
    _no_partial_output(tmp_path)


def test_wrong_magic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(100))
    _fails(["export", str(bad), "-o", str(tmp_path / "out")], "bad.gguf", "not a GGUF file", "b'GGML'")
    _no_partial_output(tmp_path)


def test_truncated_gguf(tmp_path: Path, tiny_gguf_file: Path) -> None:
    cut = tmp_path / "cut.gguf"
    data = tiny_gguf_file.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    _fails(["export", str(cut), "-o", str(tmp_path / "out")], "cut.gguf", "truncated")
    _no_partial_output(tmp_path)


def test_unsupported_architecture(tmp_path: Path, tiny_hf: Path) -> None:
    src = tiny_gguf(tmp_path / "falcon.gguf", tiny_hf, arch="falcon")
    _fails(["export", str(src), "-o", str(tmp_path / "out")], "falcon.gguf", "unsupported architecture 'falcon'")
    _no_partial_output(tmp_path)


def test_unsupported_quant_type(tmp_path: Path, tiny_hf: Path) -> None:
    src = tiny_gguf(tmp_path / "iq4.gguf", tiny_hf, linear_type="IQ4_NL")  # a non-linear codebook: no block-affine form
    _fails(["export", str(src), "-o", str(tmp_path / "out")], "iq4.gguf", "blk.0.attn_q.weight",
           "unsupported quantization type IQ4_NL")
    _no_partial_output(tmp_path)


def test_existing_output_is_not_overwritten(tmp_path: Path, tiny_gguf_file: Path) -> None:
    (tmp_path / "out").mkdir()
    _fails(["export", str(tiny_gguf_file), "-o", str(tmp_path / "out")], "already exists")


def test_failure_while_writing_leaves_nothing(tmp_path: Path, tiny_gguf_file: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenizers import Tokenizer

    def broken_save(self: Tokenizer, path: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Tokenizer, "save", broken_save)
    result = CliRunner().invoke(main, ["export", str(tiny_gguf_file), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0
    _no_partial_output(tmp_path)


@pytest.fixture
def pkg_copy(tmp_path: Path, tiny_gguf_pkg: Path) -> Path:
    return Path(shutil.copytree(tiny_gguf_pkg, tmp_path / "pkg"))


def test_tampered_package(pkg_copy: Path) -> None:
    data = pkg_copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    _fails(["run", str(pkg_copy), "--prompt", "hi"], "model.onnx.data", "hash mismatch")


def test_truncated_package_file(pkg_copy: Path) -> None:
    tok = pkg_copy / "tokenizer.json"
    tok.write_bytes(tok.read_bytes()[:100])
    _fails(["run", str(pkg_copy), "--prompt", "hi"], "tokenizer.json", "size")


def test_missing_manifest(pkg_copy: Path) -> None:
    (pkg_copy / "manifest.json").unlink()
    _fails(["run", str(pkg_copy), "--prompt", "hi"], "manifest.json is missing")


def test_unknown_op_in_package(pkg_copy: Path) -> None:
    import json

    m = json.loads((pkg_copy / "manifest.json").read_text())
    m["graph"]["custom_ops"].append("MatMulBlockQ5")
    (pkg_copy / "manifest.json").write_text(json.dumps(m))
    _fails(["run", str(pkg_copy), "--prompt", "hi"], "unknown edgekit op", "MatMulBlockQ5")


def test_prompt_longer_than_context(tiny_gguf_pkg: Path) -> None:
    _fails(["run", str(tiny_gguf_pkg), "--prompt", "word " * 50, "--max-length", "16"],
           "prompt has", "the context holds 16")


def test_model_section_longer_than_the_graph_is_one_line(tmp_path: Path, tiny_gguf_pkg: Path) -> None:
    """A manifest claiming more positions than the graph's rotary table holds (hashes intact): generating past the
    table is one line, not onnxruntime's traceback."""
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_gguf_pkg, pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    table = m["model"]["max_position_embeddings"]
    m["model"]["max_position_embeddings"] = 4 * table
    (pkg / "manifest.json").write_text(json.dumps(m))
    model = load(pkg, max_length=2 * table)
    with pytest.raises(EdgekitError, match="corrupt package: the graph failed at"):
        model.logits(list(range(1, table + 10)))


def _drop_listing(name: str) -> object:
    return lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != name}}


@pytest.mark.parametrize("edit,message", [
    (_drop_listing("model.cpu.onnx"), "model.cpu.onnx is not listed (with its hash) in the manifest"),
    (lambda m: {**m, "files": {}}, "is not listed (with its hash) in the manifest"),
    (lambda m: {**m, "graph": {**m["graph"], "file": "../model.onnx"}}, "outside the package"),
    (lambda m: {**m, "graph": {**m["graph"], "file": "/etc/passwd"}}, "outside the package"),
    (lambda m: {**m, "tokenizer": {**m["tokenizer"], "file": "/dev/zero"}}, "outside the package"),
])
def test_unlisted_files_and_escaping_paths_are_refused(tmp_path: Path, tiny_gguf_pkg: Path, edit, message: str) -> None:
    """Every file the loader opens is inside the package and listed with its hash: one line otherwise."""
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_gguf_pkg, pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    (pkg / "manifest.json").write_text(json.dumps(edit(m)))
    _fails(["run", str(pkg), "--prompt", "hi"], message)


def test_a_symlink_out_of_the_package_is_refused(tmp_path: Path, tiny_gguf_pkg: Path) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_gguf_pkg, pkg)
    (pkg / "tokenizer.json").unlink()
    (pkg / "tokenizer.json").symlink_to(tiny_gguf_pkg / "tokenizer.json")  # same bytes, outside the folder
    _fails(["run", str(pkg), "--prompt", "hi"], "leads outside the package folder")
