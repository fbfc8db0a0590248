"""CUDA: the runtime on CUDAExecutionProvider and the PyTorch reference on the GPU. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from edgekit.runtime import GenerationConfig, load

pytestmark = pytest.mark.cuda

needs_ort_cuda = pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                    reason="onnxruntime has no CUDAExecutionProvider here")


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@needs_ort_cuda
def test_runtime_on_cuda_matches_cpu(tiny_gguf_pkg: Path) -> None:
    cpu, gpu = load(tiny_gguf_pkg), load(tiny_gguf_pkg, device="cuda")
    assert gpu.provider == "CUDAExecutionProvider"
    ids = cpu.encode("The quick brown fox jumps over the lazy dog")
    np.testing.assert_allclose(gpu.logits(ids), cpu.logits(ids), atol=2e-3, rtol=0)
    gen = GenerationConfig(max_new_tokens=16, stop_token_ids=())
    assert list(gpu.generate_ids(ids, gen)) == list(cpu.generate_ids(ids, gen))


@pytest.mark.skipif(not _torch_cuda(), reason="torch sees no CUDA GPU")
def test_reference_on_cuda_matches_cpu(tiny_gguf_file: Path) -> None:
    from edgekit.exporters.reference import TorchReference

    ids = [504, 3575, 282, 4649, 314]
    cpu, gpu = TorchReference(str(tiny_gguf_file), "cpu"), TorchReference(str(tiny_gguf_file), "cuda")
    assert gpu.device == "cuda"
    np.testing.assert_allclose(gpu.logits(ids), cpu.logits(ids), atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def cuda_pkg(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_file: Path) -> Path:
    """The tiny model with a graph lowered for CUDA (exporting needs no GPU)."""
    from edgekit.exporters.pipeline import export

    out = tmp_path_factory.mktemp("cuda") / "pkg"
    export(str(tiny_gguf_file), out, targets=("cpu", "cuda"))
    return out


@needs_ort_cuda
@pytest.mark.skipif(not _torch_cuda(), reason="torch sees no CUDA GPU")
def test_validate_on_cuda_both_sides(cuda_pkg: Path, tiny_gguf_file: Path) -> None:
    """`edgekit validate --device cuda --runtime-device cuda`: PyTorch and the package both on the GPU, the same
    metrics as on CPU."""
    import json

    from click.testing import CliRunner

    from edgekit.cli import main

    result = CliRunner().invoke(main, ["validate", str(cuda_pkg), "--reference", str(tiny_gguf_file), "--device",
                                       "cuda", "--runtime-device", "cuda", "--tokens", "16", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference_device"] == "cuda" and report["passed"]


@needs_ort_cuda
def test_bench_on_cuda(cuda_pkg: Path) -> None:
    import json

    from click.testing import CliRunner

    from edgekit.cli import main

    result = CliRunner().invoke(main, ["bench", str(cuda_pkg), "--device", "cuda", "--prompt-lengths", "16",
                                       "--new-tokens", "8", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert "CUDAExecutionProvider" in json.dumps(json.loads(result.stdout))


@pytest.mark.skipif(not _torch_cuda(), reason="torch sees no CUDA GPU")
def test_prune_recovery_runs_on_the_gpu(tmp_path: Path) -> None:
    """Recovery distils on the GPU when torch sees one, lowers KL there, and leaves a folder that reloads on the
    CPU and exports to a package equal to the pruned model."""
    from edgekit.exporters.pipeline import export
    from edgekit.exporters.prune import PruneRequest, load_pruned, prune
    from edgekit.exporters.reference import TorchReference
    from edgekit.exporters.validate import Thresholds, validate
    from factories import tiny_hf_model

    from edgekit.evaltext import default_text

    src = tiny_hf_model(tmp_path / "src", num_hidden_layers=4)
    (tmp_path / "calib.txt").write_text(default_text()[:12_000])
    result = prune(str(src), tmp_path / "out", PruneRequest(ratio=0.03), calib=str(tmp_path / "calib.txt"),
                   recover_steps=8)
    recovery = result.record["recovery"]
    assert recovery["device"] == "cuda" and recovery["kl_after"] < recovery["kl_before"]
    assert next(load_pruned(tmp_path / "out").parameters()).device.type == "cpu"
    export(str(tmp_path / "out"), tmp_path / "pkg")
    report = validate(load(tmp_path / "pkg"), TorchReference(str(tmp_path / "out"), "cpu"), 16, None, Thresholds())
    assert report.passed
