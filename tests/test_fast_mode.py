"""Fast mode's per-layer accuracy level: the measured int8-activation error, the nodes chosen to stay exact, and
the lowering that keeps them at accuracy level 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edgekit.exporters.lowering import ACCURACY_EXACT, ACCURACY_INT8, lower
from edgekit.exporters.quantize.fast_mode import EXACT_SHARE, activation_errors, exact_nodes, int8_blocks
from edgekit.exporters.reference import TorchReference

from edgekit.node_names import projection_node
from edgekit.package import GRAPH_FILE
from edgekit.targets import TARGETS


def test_projection_nodes_cover_fused_and_single_projections() -> None:
    assert projection_node("layers.3.k") == projection_node("layers.3.qkv.matmul") == "layers.3.qkv"
    assert projection_node("layers.3.up.matmul") == "layers.3.gate_up"
    assert projection_node("layers.12.down") == "layers.12.down" and projection_node("lm_head.matmul") == "lm_head"


def test_int8_blocks_round_each_block_to_its_own_scale() -> None:
    x = torch.tensor([[1.0, -0.5, 0.25, 127.0, 3.0, 0.0]])
    q = int8_blocks(x, 3)  # blocks [1, -0.5, 0.25] (scale 1/127) and [127, 3, 0] (scale 1), exact for these
    torch.testing.assert_close(q, torch.tensor([[1.0, -0.5, 0.25, 127.0, 3.0, 0.0]]), atol=0.5 / 127, rtol=0)
    y = torch.randn(4, 100, dtype=torch.float64) * 5
    step = int8_blocks(y, 32) - y
    assert float(step.abs().max()) <= float(y.abs().max()) / 127 / 2 + 1e-12


def test_exact_nodes_take_outliers_within_the_budget() -> None:
    sizes = {f"layers.{i}.{p}": 100 for i in range(5) for p in ("qkv", "o", "gate_up", "down")}
    errors = dict.fromkeys(sizes, 1e-4)
    assert exact_nodes(errors, sizes) == []  # uniform error: nothing stands out
    errors.update({"layers.2.qkv": 5e-3, "layers.4.qkv": 3e-3, "layers.1.down": 1e-3, "layers.0.o": 9e-4,
                   "layers.3.o": 8e-4})
    chosen = exact_nodes(errors, sizes)
    assert chosen == sorted(["layers.2.qkv", "layers.4.qkv", "layers.1.down", "layers.0.o"])  # 4 x 100 <= 20%
    assert len(chosen) * 100 <= EXACT_SHARE * sum(sizes.values())


def test_activation_errors_see_an_outlier_channel(tiny_hf: Path) -> None:
    model = TorchReference(str(tiny_hf), "cpu").model
    windows = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 16))
    blocks = {f"layers.{i}.{p}": 32 for i in range(len(model.model.layers)) for p in ("q", "k", "v", "o", "down")}
    before = activation_errors(model, windows, blocks)
    assert set(before) == {f"layers.{i}.{p}" for i in range(len(model.model.layers)) for p in ("qkv", "o", "down")}
    with torch.no_grad():  # one huge input channel to layer 0's attention: its other channels lose precision
        model.model.layers[0].input_layernorm.weight[3] = 200.0
    after = activation_errors(model, windows, blocks)
    assert after["layers.0.qkv"] > 3 * before["layers.0.qkv"]


@pytest.mark.parametrize("fast", [False, True])
def test_lowering_keeps_exact_nodes_at_level_0(tiny_gguf_pkg: Path, fast: bool) -> None:
    model = onnx.load(str(tiny_gguf_pkg / GRAPH_FILE))
    lowered = lower(model, TARGETS["cpu"], fast=fast, exact_nodes=frozenset({"layers.0.qkv"}))
    levels = {n.output[0]: next(a.i for a in n.attribute if a.name == "accuracy_level")
              for n in lowered.graph.node if n.op_type == "MatMulNBits"}
    assert levels, "the tiny package has no MatMulNBits after lowering"
    for out, level in levels.items():
        exact = not fast or out.startswith("layers.0.qkv")
        assert level == (ACCURACY_EXACT if exact else ACCURACY_INT8), out


def _fast_levels(pkg: Path) -> dict[str, int]:
    """accuracy_level of each MatMulNBits in the package's CPU fast graph, by output name."""
    graph = onnx.load(str(pkg / TARGETS["cpu"].graph_file("fast")), load_external_data=False)
    return {n.output[0]: next(a.i for a in n.attribute if a.name == "accuracy_level")
            for n in graph.graph.node if n.op_type == "MatMulNBits"}


def test_int8_everywhere_ignores_the_measured_list(tmp_path: Path, tiny_gguf_file: Path) -> None:
    from dataclasses import replace

    from edgekit.exporters.pipeline import int8_everywhere, prepare, write_package

    from edgekit.package import read_manifest

    contents = prepare(str(tiny_gguf_file))
    measured = replace(contents.built.recipe, fast_exact=["layers.0.qkv"])
    contents = replace(contents, built=replace(contents.built, recipe=measured))
    everywhere = int8_everywhere(contents)  # before writing `contents`: both must be writable
    write_package(contents, tmp_path / "listed")
    write_package(everywhere, tmp_path / "everywhere")
    listed, all_int8 = _fast_levels(tmp_path / "listed"), _fast_levels(tmp_path / "everywhere")
    assert listed.keys() == all_int8.keys() and any(o.startswith("layers.0.qkv") for o in listed)
    assert {o for o, level in listed.items() if level == ACCURACY_EXACT} == \
        {o for o in listed if o.startswith("layers.0.qkv")}
    assert set(all_int8.values()) == {ACCURACY_INT8}
    assert read_manifest(tmp_path / "everywhere").data["recipe"]["fast_exact"] == []
