"""Each edgekit op: packing round-trips, the reference kernel equals dequantize-then-matmul, and both the
standard-ONNX body and the lowered native kernels compute the reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgekit.exporters.lowering import lower
from onnx import TensorProto, helper, numpy_helper

from edgekit.formats import BlockQuantWeight, pack_codes, unpack_codes
from edgekit.ops import (
    OPSET_IMPORTS,
    GatherBlockQ2,
    GatherBlockQ3,
    GatherBlockQ4,
    GatherBlockQ8,
    MatMulBlockQ2,
    MatMulBlockQ3,
    MatMulBlockQ4,
    MatMulBlockQ8,
    function_protos,
)
from edgekit.targets import TARGETS

RNG = np.random.default_rng(0)
N, K, BLOCK = 96, 256, 32
WIDTHS = [K, 200]  # 200 = 6 whole blocks of 32 and a short last block of 8


def _weight(bits: int, offsets: str = "free", k: int = K) -> BlockQuantWeight:
    codes = RNG.integers(0, 2**bits, (N, k)).astype(np.uint8)
    nb = -(-k // BLOCK)
    scales = RNG.standard_normal((N, nb)).astype(np.float16).astype(np.float32)
    off = {"free": RNG.standard_normal((N, nb)).astype(np.float16).astype(np.float32),
           "zero_point": -(2.0 ** (bits - 1)) * scales}[offsets]
    return BlockQuantWeight(codes, scales, off.astype(np.float32), bits, BLOCK, "test")


@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip(bits: int, k: int) -> None:
    codes = RNG.integers(0, 2**bits, (N, k)).astype(np.uint8)
    packed = pack_codes(codes, bits, BLOCK)
    assert packed.shape == (N, -(-k // BLOCK), BLOCK * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits)[:, :k], codes)
    assert not unpack_codes(packed, bits)[:, k:].any()


def test_short_last_block_dequantizes_only_real_weights() -> None:
    w = _weight(4, k=200)
    full = w.codes.astype(np.float32) * np.repeat(w.scales, BLOCK, axis=1)[:, :200] + \
        np.repeat(w.offsets, BLOCK, axis=1)[:, :200]
    np.testing.assert_array_equal(w.dequantize(), full)


def test_pack_layout_is_low_nibble_first() -> None:
    codes = np.tile(np.array([[1, 2]], np.uint8), (1, 16))
    assert pack_codes(codes, 4, 32)[0, 0, 0] == 0x21


def test_pack_layout_2_bit_is_low_bits_first() -> None:
    codes = np.tile(np.array([[1, 2, 3, 0]], np.uint8), (1, 8))
    assert pack_codes(codes, 2, 32)[0, 0, 0] == 0b00_11_10_01


def test_pack_layout_3_bit_is_8_codes_in_3_little_endian_bytes() -> None:
    codes = np.tile(np.arange(8, dtype=np.uint8)[None], (1, 4))
    word = sum(int(c) << (3 * i) for i, c in enumerate(range(8)))
    assert list(pack_codes(codes, 3, 32)[0, 0, :3]) == [word & 0xFF, (word >> 8) & 0xFF, word >> 16]


def _model(node: onnx.NodeProto, inputs: list, output_shape: list, inits: list, op_type: str) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, output_shape)],
                              inits)
    m = helper.make_model(graph, opset_imports=[*OPSET_IMPORTS, helper.make_opsetid("com.microsoft", 1)],
                          functions=function_protos({op_type}))
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


def _run(m: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def folded(model: onnx.ModelProto, tmp_path: Path) -> onnx.ModelProto:
    """The graph as onnxruntime runs it on the CPU: constant subgraphs (lowering's layout changes) folded away."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx"))


def _matmul_model(op: type, w: BlockQuantWeight) -> onnx.ModelProto:
    n, k = w.shape
    inits = [numpy_helper.from_array(pack_codes(w.codes, w.bits, BLOCK), "B"),
             numpy_helper.from_array(w.scales.astype(np.float16), "s"),
             numpy_helper.from_array(w.offsets.astype(np.float16), "o")]
    node = op.make_node(["A", "B", "s", "o"], ["Y"], "mm", K=k, N=n, block_size=BLOCK)
    return _model(node, [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, "S", k])], [1, "S", n], inits,
                  op.op_type)


def _summed_magnitude(a: np.ndarray, w: BlockQuantWeight) -> np.ndarray:
    """S [..., N]: Σ_k |a_k|·(|scale·code| + |offset|), the size of the terms a kernel computing a @ Wᵀ adds up.
    The offset counts apart from scale·code because a kernel may add the offset term on its own (MatMulNBits
    does), and scale·code + offset can cancel."""
    sizes = BlockQuantWeight(w.codes, np.abs(w.scales), np.abs(w.offsets), w.bits, w.block_size, "magnitudes")
    return np.abs(a) @ sizes.dequantize().T


def _assert_matmul_close(actual: np.ndarray, a: np.ndarray, w: BlockQuantWeight, n_terms: int | None = None) -> None:
    """`actual` [..., N] equals a @ Wᵀ up to float32 rounding, judged per element.

    Kernels sum in different orders (SIMD lanes, K blocks, threads), so their results differ by rounding
    that grows with the size of the terms summed, not of the result: a near-cancelling sum of large terms
    is off by far more than rtol·|result|. A float32 dot product of n terms is within γ_n·S of the exact
    value whatever the order, S = Σ|terms|, γ_n = n·u/(1 − n·u), u = eps/2 (Higham, Accuracy and Stability
    of Numerical Algorithms, §3.1). Here n = `n_terms` (default K) plus 2 for the dequantize multiply and
    the offset add, so two such results are within 2·γ_{n+2}·S ≈ (n + 2)·eps·S of each other. This worst
    case cannot fail on rounding alone: gaps measured between summation orders and kernels stay under
    5·eps·S at K = 200, and one code off by one step still lands outside it (`_assert_one_code_off_is_caught`).
    """
    atol = ((n_terms or a.shape[-1]) + 2) * np.finfo(np.float32).eps * _summed_magnitude(a, w)
    diff = np.abs(actual - a @ w.dequantize().T)
    over = diff > atol
    worst = np.unravel_index(np.argmax(diff / atol), diff.shape)
    assert not over.any(), (f"{over.sum()} of {over.size} elements off by more than float32 rounding allows; "
                            f"worst {diff[worst]:.3g} at {worst}, tolerance there {atol[worst]:.3g}")


def _one_code_off(w: BlockQuantWeight, a: np.ndarray) -> BlockQuantWeight:
    """`w` with one code moved by one step, where the change |scale·a_k| is largest against the tolerance."""
    a2 = np.abs(a.reshape(-1, a.shape[-1]))  # [M, K]
    scales = np.repeat(np.abs(w.scales), w.block_size, axis=1)[:, :a2.shape[1]]  # [N, K]
    shift = a2[:, None, :] * scales[None] / _summed_magnitude(a2, w)[:, :, None]  # [M, N, K]
    _, n, k = np.unravel_index(np.argmax(shift), shift.shape)
    codes = w.codes.copy()
    codes[n, k] ^= 1  # one step up or down, always a valid code
    return BlockQuantWeight(codes, w.scales, w.offsets, w.bits, w.block_size, w.source_format)


def _assert_one_code_off_is_caught(run_on: Callable[[BlockQuantWeight], np.ndarray], a: np.ndarray,
                                   w: BlockQuantWeight, n_terms: int | None = None) -> None:
    """The tolerance of `_assert_matmul_close` still fails a kernel that computes with a wrong weight."""
    with pytest.raises(AssertionError, match="more than float32 rounding allows"):
        _assert_matmul_close(run_on(_one_code_off(w, a)), a, w, n_terms)


@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("op", [MatMulBlockQ2, MatMulBlockQ3, MatMulBlockQ4, MatMulBlockQ8])
@pytest.mark.parametrize("offsets", ["free", "zero_point"])
def test_matmul_reference_body_and_lowering_agree(op: type, offsets: str, k: int) -> None:
    w = _weight(op.bits, offsets, k)
    a = RNG.standard_normal((1, 3, k)).astype(np.float32)
    packed = pack_codes(w.codes, w.bits, BLOCK)
    ref = op.reference(a, packed, w.scales.astype(np.float16), w.offsets.astype(np.float16), K=k, N=N, block_size=BLOCK)
    _assert_matmul_close(ref, a, w)
    m = _matmul_model(op, w)
    _assert_matmul_close(_run(m, {"A": a}), a, w)
    lowered = lower(m, TARGETS["cpu"])
    assert not any(n.domain == "edgekit" for n in lowered.graph.node)
    # MatMulBlockQ8 lowers to 4-bit halves over [a, a], a zero-padded to whole blocks: twice the terms.
    n_terms = 2 * -(-k // BLOCK) * BLOCK
    _assert_matmul_close(_run(lowered, {"A": a}), a, w, n_terms)
    _assert_one_code_off_is_caught(lambda wrong: _run(lower(_matmul_model(op, wrong), TARGETS["cpu"]), {"A": a}),
                                   a, w, n_terms)
    fast = lower(m, TARGETS["cpu"], fast=True)
    np.testing.assert_allclose(_run(fast, {"A": a}), ref, rtol=0, atol=0.03 * np.abs(ref).max())


@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("op", [GatherBlockQ2, GatherBlockQ3, GatherBlockQ4, GatherBlockQ8])
def test_gather_reference_and_body_agree(op: type, k: int) -> None:
    w = _weight(op.bits, k=k)
    packed = pack_codes(w.codes, w.bits, BLOCK)
    ids = np.array([[5, 0, 95, 5]], np.int64)
    ref = op.reference(packed, w.scales, w.offsets, ids, K=k, block_size=BLOCK)
    np.testing.assert_array_equal(ref, w.dequantize()[ids])
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(w.scales, "s"),
             numpy_helper.from_array(w.offsets, "o")]
    node = op.make_node(["B", "s", "o", "ids"], ["Y"], "g", K=k, block_size=BLOCK)
    m = _model(node, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "S"])], [1, "S", k], inits,
               op.op_type)
    np.testing.assert_array_equal(_run(m, {"ids": ids}), ref)


def test_op_names_known_to_the_runtime_are_the_registry() -> None:
    from edgekit.ops import OPS
    from edgekit.ops.names import OP_NAMES

    assert set(OPS) == OP_NAMES


def test_unknown_op_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown edgekit op"):
        function_protos({"MatMulBlockQ5"})


@pytest.mark.parametrize("op", [MatMulBlockQ3, MatMulBlockQ4, MatMulBlockQ8])
def test_portable_graph_folds_into_a_plain_matmul_on_the_exact_weights(op: type, tmp_path: Path) -> None:
    """What float passes run: onnxruntime inlines the op's body and folds the dequantization into float32 weights."""
    w = _weight(op.bits, k=200)
    a = RNG.standard_normal((1, 3, 200)).astype(np.float32)
    m = _matmul_model(op, w)
    assert [n.op_type for n in folded(m, tmp_path).graph.node] == ["MatMul"]
    _assert_matmul_close(_run(m, {"A": a}), a, w)
    _assert_one_code_off_is_caught(lambda wrong: _run(_matmul_model(op, wrong), {"A": a}), a, w)


def test_an_op_the_target_cannot_lower_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A weight op with no rule for a target (here MatMulBlockQ4 taken off the CPU's rules) fails the export with one
    line naming the op and what the target lowers; the portable graph still takes it."""
    from edgekit.errors import EdgekitError

    cpu = TARGETS["cpu"]
    monkeypatch.setitem(TARGETS, "cpu", type(cpu)(**{**cpu.__dict__, "lowers": cpu.lowers - {"MatMulBlockQ4"}}))
    m = _matmul_model(MatMulBlockQ4, _weight(4))
    with pytest.raises(EdgekitError, match=r"target cpu cannot lower MatMulBlockQ4 \(node mm\); it lowers "
                                           r"GatherBlockQ2, GatherBlockQ3, GatherBlockQ4, GatherBlockQ8, MatMulBlockQ2"):
        lower(m, TARGETS["cpu"])
    assert lower(m, TARGETS["portable"]) is m


def test_exact_and_fast_graphs_share_one_weights_file(tmp_path: Path) -> None:
    """2-bit weights with per-group zero points: the exact graph packs them at 4 bits, the fast one at 2; both go
    into one data file (each name one set of bytes) and both compute the weight."""
    from edgekit.exporters.graph_files import save_graphs

    n, k = 512, 256
    codes = RNG.integers(0, 4, (n, k)).astype(np.uint8)
    scales = 2.0 ** RNG.integers(-4, 2, (n, k // BLOCK)).astype(np.float32)  # z·scale exact in float16
    z = RNG.integers(0, 4, scales.shape).astype(np.float32)
    w = BlockQuantWeight(codes, scales, -z * scales, 2, BLOCK, "int2g32")
    m = _matmul_model(MatMulBlockQ2, w)
    graphs = {"exact.onnx": lower(m, TARGETS["cpu"]), "fast.onnx": lower(m, TARGETS["cpu"], fast=True)}
    assert all(any(t.name.startswith("Y.zero_points") and len(t.raw_data) >= 1024 for t in g.graph.initializer)
               for g in graphs.values()), "the case needs stored (varying, large) zero points in both graphs"
    save_graphs(tmp_path, graphs, "weights.data")
    a = RNG.standard_normal((1, 2, k)).astype(np.float32)
    ref = a @ w.dequantize().T
    for name, atol in (("exact.onnx", 1e-3), ("fast.onnx", 0.03)):
        got = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
        np.testing.assert_allclose(got, ref, rtol=0, atol=atol * np.abs(ref).max())
