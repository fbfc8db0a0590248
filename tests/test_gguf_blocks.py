"""GGUF blocks re-laid into edgekit's form dequantize to exactly what gguf-py dequantizes, and run."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import onnx
import pytest
from edgekit.exporters.arch.llama import Llama, llama_row_order
from edgekit.exporters.gguf_source import GGUFSource
from edgekit.exporters.lowering import lower
from factories import (
    GGUF_NUMPY_QUANTIZERS,
    SMOLLM2_GGUF,
    encode_q6_k,
    random_gguf_blocks,
    random_gguf_stand_in,
)
from onnx import TensorProto, helper, numpy_helper
from test_ops import _model, _run, folded

from edgekit.formats import BlockQuantWeight, pack_codes, weight_format
from edgekit.formats.gguf import GGUF_TYPES
from edgekit.ops import (
    GatherBlockQ2,
    GatherBlockQ4,
    GatherBlockQ8,
    MatMulBlockQ2,
    MatMulBlockQ4,
    MatMulBlockQ8,
)
from edgekit.targets import TARGETS


def _dequantize(raw: np.ndarray, name: str) -> np.ndarray:
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name])


@pytest.mark.parametrize("name", GGUF_NUMPY_QUANTIZERS)
def test_block_type_is_bit_exact(name: str) -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 10, (64, 1))).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType[name])
    got = GGUF_TYPES[name].to_block_weight(raw, 256).dequantize()
    np.testing.assert_array_equal(got, _dequantize(raw, name))


@pytest.mark.parametrize("name", sorted(GGUF_TYPES))
def test_random_blocks_are_bit_exact(name: str) -> None:
    """Any bytes, with float16 fields over the whole finite range: the re-laid weight equals gguf-py's, value
    for value (np.array_equal; only the sign of some zeros may differ, see docs/ops.md)."""
    raw = random_gguf_blocks(name, 48, 1024, np.random.default_rng(2))
    got = GGUF_TYPES[name].to_block_weight(raw, 1024)
    assert np.array_equal(got.dequantize(), _dequantize(raw, name))
    assert got.codes.max() < 2**got.bits and got.scales.dtype == got.offsets.dtype == np.float32


@pytest.mark.parametrize("name", sorted(GGUF_TYPES))
def test_block_sizes_match_gguf(name: str) -> None:
    fmt = GGUF_TYPES[name]
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == (fmt.super_block, fmt.type_size)
    assert fmt.super_block % fmt.block_size == 0


@pytest.mark.parametrize("name", sorted(GGUF_TYPES))
def test_registry_facts_hold_on_decoded_blocks(name: str) -> None:
    """What a format declares (uniform zero point, scale and offset dtypes) is true of what it decodes."""
    fmt = GGUF_TYPES[name]
    w = fmt.to_block_weight(random_gguf_blocks(name, 16, 512, np.random.default_rng(4)), 512)
    assert weight_format(name) is fmt and w.format is fmt
    assert np.array_equal(w.scales.astype(fmt.scale_dtype).astype(np.float32), w.scales)
    if fmt.zero_point is None:
        assert np.array_equal(w.offsets.astype(fmt.offset_dtype).astype(np.float32), w.offsets)
    else:
        assert np.array_equal(w.offsets, -float(fmt.zero_point) * w.scales)


def test_q6_k_test_encoder_is_close() -> None:
    """The tests' own Q6_K encoder (gguf-py has none) gives blocks that decode to about the input."""
    w = (np.random.default_rng(3).standard_normal((16, 512)) * 0.08).astype(np.float32)
    back = _dequantize(encode_q6_k(w), "Q6_K")
    assert np.abs(back - w).max() < np.abs(w).max() / 31


def _weight(name: str, n: int, k: int) -> BlockQuantWeight:
    w = np.random.default_rng(4).standard_normal((n, k)).astype(np.float32)
    return GGUF_TYPES[name].to_block_weight(random_gguf_stand_in(name, w, np.random.default_rng(5)), k)


def _inits(w: BlockQuantWeight) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(pack_codes(w.codes, w.bits, w.block_size), "B"),
            numpy_helper.from_array(w.scales, "s"), numpy_helper.from_array(w.offsets, "o")]


def _matmul_model(w: BlockQuantWeight) -> onnx.ModelProto:
    """Y = A · Wᵀ as one MatMulBlockQ4/Q8 node of w's bits and block size."""
    n, k = w.shape
    op = {2: MatMulBlockQ2, 4: MatMulBlockQ4, 8: MatMulBlockQ8}[w.bits]
    node = op.make_node(["A", "B", "s", "o"], ["Y"], "mm", K=k, N=n, block_size=w.block_size)
    return _model(node, [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, "S", k])], [1, "S", n], _inits(w),
                  op.op_type)


@pytest.mark.parametrize("name", sorted(GGUF_TYPES))
def test_every_type_runs_through_body_and_lowering(name: str) -> None:
    """Sub-blocks of 16 (Q2_K, Q3_K, Q6_K) and 32 through the ops' ONNX bodies and the native kernels."""
    k = 512
    w = _weight(name, 40, k)
    m = _matmul_model(w)
    a = np.random.default_rng(6).standard_normal((1, 3, k)).astype(np.float32)
    ref = a @ w.dequantize().T
    np.testing.assert_allclose(_run(m, {"A": a}), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    for fast, atol in ((False, 1e-5), (True, 0.03)):  # fast: int8 activations, close but not exact
        lowered = lower(m, TARGETS["cpu"], fast=fast)
        assert not any(nd.domain == "edgekit" for nd in lowered.graph.node)
        np.testing.assert_allclose(_run(lowered, {"A": a}), ref, rtol=0, atol=atol * np.abs(ref).max())

    gather = {2: GatherBlockQ2, 4: GatherBlockQ4, 8: GatherBlockQ8}[w.bits]
    ids = np.array([[5, 0, 39, 5]], np.int64)
    node = gather.make_node(["B", "s", "o", "ids"], ["Y"], "g", K=k, block_size=w.block_size)
    m = _model(node, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "S"])], [1, "S", k], _inits(w),
               gather.op_type)
    np.testing.assert_array_equal(_run(m, {"ids": ids}), w.dequantize()[ids])


@pytest.mark.parametrize("name,zero_point", [("Q3_K", 4), ("Q5_0", 16), ("Q6_K", 32)])
def test_integer_offsets_lower_to_zero_points(name: str, zero_point: int, tmp_path: Path) -> None:
    """Offsets of -z·scale become MatMulNBits zero points (no extra offset term; 8-bit ones in fast mode)."""
    w = _weight(name, 8, 256)
    lowered = folded(lower(_matmul_model(w), TARGETS["cpu"], fast=True), tmp_path)
    (node,) = lowered.graph.node
    assert node.op_type == "MatMulNBits"
    zp = numpy_helper.to_array(next(t for t in lowered.graph.initializer if t.name == node.input[3]))
    z = zp if w.bits == 8 else np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(8, -1)
    assert (z[w.scales != 0] == zero_point).all()  # a block with scale 0 is all zeros whatever its zero point


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("name", sorted(GGUF_TYPES))
def test_offset_term_only_where_offsets_are_free(name: str, fast: bool, tmp_path: Path) -> None:
    """Integer zero points need no block-offset term (Q4_0, Q3_K; the 8-bit symmetric types in the fast graph, whose
    exact graph reads 8-bit codes as nibble pairs with zero point 0); free minimums (Q4_1, Q2_K, Q4_K, Q5_1, Q5_K)
    take it as three nodes once folded: the block sums' MatMul, the offsets' MatMul and the Add."""
    w = _weight(name, 8, 512)
    lowered = folded(lower(_matmul_model(w), TARGETS["cpu"], fast=fast), tmp_path)
    ops = sorted(n.op_type for n in lowered.graph.node if n.op_type != "MatMulNBits")
    nibbles = ["Concat", "Concat", "Mul", "Reshape", "Shape", "Slice", "Unsqueeze", "Unsqueeze"]  # the interleaved input of matmul_nibbles8
    free = GGUF_TYPES[name].zero_point is None
    exact8 = w.bits == 8 and not fast
    assert ops == sorted((["Add", "MatMul", "MatMul"] if free or exact8 else []) + (nibbles if exact8 else [])), ops


def test_row_size_not_multiple_of_block_is_refused() -> None:
    with pytest.raises(ValueError, match="not a multiple of Q4_1 block size"):
        GGUF_TYPES["Q4_1"].to_block_weight(np.zeros((2, 20), np.uint8), 40)
    with pytest.raises(ValueError, match=r"not a multiple of Q4_K block size \(256\)"):
        GGUF_TYPES["Q4_K"].to_block_weight(np.zeros((2, 144), np.uint8), 128)


@pytest.mark.slow
def test_every_tensor_of_the_real_model_is_exact() -> None:
    """All 272 tensors of SmolLM2-135M: the weights the package computes with equal gguf's dequantize."""
    src = GGUFSource(SMOLLM2_GGUF)
    cfg = src.config
    checked = 0
    for t in src.reader.tensors:
        name = Llama.canonical_from_gguf(t.name)
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        if name.endswith((".q", ".k")):  # the importer reorders q/k rows to Hugging Face's rope layout
            heads = cfg.num_heads if name.endswith(".q") else cfg.num_kv_heads
            expected = expected[llama_row_order(expected.shape[0], heads)]
        w = src.get(name)
        got = w if isinstance(w, np.ndarray) else w.dequantize()
        np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=t.name)
        checked += 1
    assert checked == 272
