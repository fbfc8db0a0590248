"""Replace edgekit ops with native onnxruntime kernels at load time.

The package stays portable (edgekit ops carry standard-ONNX bodies); here, for the provider in use,
each op becomes the fastest kernel that computes the same weights:

- MatMulBlockQ4 -> com.microsoft.MatMulNBits with the 4-bit codes as they are stored. A zero point
  is integer-only there: an offset of -z·scale with integer z per block (Q4_0: 8, Q3_K: 4) becomes
  zero point z; any other offset (Q4_1's, Q4_K's and Q2_K's minimums) is added exactly as a second
  term: y += Σ_b offset[n, b] · Σ_{k in b} x[k], one small MatMul over the block sums of x (shared
  by every projection reading the same x).
- MatMulBlockQ8 -> the 8-bit codes split into two 4-bit halves for the fast 4-bit kernel (exact;
  MatMulNBits' 8-bit kernel without int8 activations is slow), or, in fast mode when the offsets are
  integer zero points (Q8_0, Q5_0, Q6_K), MatMulNBits 8-bit with int8 activations.
- MatMulBlockQ2 / MatMulBlockQ3 -> the codes repacked to 4-bit codes at load time (the package keeps
  2 or 3 bits), then as MatMulBlockQ4, offsets and zero points unchanged. MatMulNBits has no 3-bit kernel,
  and its 2-bit kernel without int8 activations is ~30x slower than the 4-bit one (measured). In fast mode
  2-bit codes go to MatMulNBits bits=2 as stored: with int8 activations it beats the 4-bit kernel at GEMV
  (31 vs 45 us for 3072x576, 473 vs 583 us for 2048x8192).
- Gather ops keep their function body: they touch only the gathered rows.

`fast=True` sets accuracy_level 4 (int8 activations) on every MatMulNBits: about 2-3x faster GEMV,
not bit-faithful, and it can flip near-tied greedy tokens. It is opt-in. `exact_nodes` (the manifest's
`recipe.fast_exact`, measured at export) keeps those projections' nodes at level 0 in fast mode.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.formats import pack_codes, unpack_codes
from edgekit.node_names import projection_node
from edgekit.ops import DOMAIN, OPS
from edgekit.ops.block_dequant import dequantize_blocks

MS_DOMAIN = "com.microsoft"
NATIVE_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")
ACCURACY_EXACT = 0
ACCURACY_INT8 = 4


def integer_zero_points(scales: np.ndarray, offsets: np.ndarray, bits: int) -> np.ndarray | None:
    """uint8 z [N, nb] with offsets == -z·scales in float32 and 0 <= z < 2^bits, or None if some block has none.

    Then scale·code + offset = scale·(code − z), MatMulNBits' own form with an integer zero point (Q4_0: z = 8,
    Q8_0: 128, Q3_K: 4, Q5_0: 16, Q6_K: 32), and no offset term is needed. For every GGUF type scale·code and
    z·scale are exact in float32, so both forms give the same weights bit for bit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(scales != 0, np.rint(-offsets / scales), 0.0).astype(np.float32)
    if not (np.all(z >= 0) and np.all(z < 2**bits)) or not np.array_equal(-z * scales, offsets):
        return None
    return z.astype(np.uint8)


def pack_zero_points(z: np.ndarray, bits: int) -> np.ndarray:
    """uint8 z [N, nb] -> MatMulNBits' zero_points [N, ceil(nb·bits/8)], packed like codes, low bits first."""
    per = 8 // bits
    padded = np.zeros((z.shape[0], -(-z.shape[1] // per) * per), np.uint8)
    padded[:, : z.shape[1]] = z
    return pack_codes(padded, bits, padded.shape[1]).reshape(z.shape[0], -1)


class _Lowering:
    def __init__(self, model: onnx.ModelProto, fast: bool, float_weights: bool = False,
                 exact_nodes: frozenset[str] = frozenset()):
        self.model = model
        self.graph = model.graph
        self.fast = fast
        self.exact_nodes = exact_nodes
        self.float_weights = float_weights
        self.inits = {t.name: t for t in self.graph.initializer}
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.dropped: set[str] = set()
        self.block_sums: dict[tuple[str, int], str] = {}
        self.doubled_inputs: set[str] = set()
        self.padded_inputs: set[str] = set()

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def int8_activations(self, node: onnx.NodeProto) -> bool:
        """Fast mode, unless the package measured this projection's node as one to keep exact."""
        return self.fast and projection_node(node.name) not in self.exact_nodes

    def level(self, node: onnx.NodeProto) -> int:
        return ACCURACY_INT8 if self.int8_activations(node) else ACCURACY_EXACT

    def add_init(self, name: str, a: np.ndarray) -> str:
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: object) -> None:
        self.new_nodes.append(helper.make_node(op, inputs, outputs, name=f"lowered_{op}_{len(self.new_nodes)}",
                                               domain=domain, **attrs))

    def padded(self, x: str, k: int, block: int) -> str:
        """x [.., K] zero-padded along K to whole blocks (a short last block's padding codes then meet zeros)."""
        pad = -k % block
        if not pad:
            return x
        name = f"{x}.padded_{block}"
        if name not in self.padded_inputs:
            pads = self.add_init(f"{name}.pads", np.array([0, pad], np.int64))
            axes = self.add_init(f"{name}.axes", np.array([-1], np.int64))
            self.emit("Pad", [x, pads, "", axes], [name])
            self.padded_inputs.add(name)
        return name

    def block_sum(self, x: str, k: int, block: int) -> str:
        """Σ x over each block of K, [.., ceil(K / block)]; computed once per (input, block size)."""
        key = (x, block)
        if key not in self.block_sums:
            n_blocks = -(-k // block)
            shape = self.add_init(f"{x}.block_shape_{block}", np.array([0, 0, n_blocks, block], np.int64))
            axes = self.add_init(f"{x}.block_axes_{block}", np.array([-1], np.int64))
            self.emit("Reshape", [self.padded(x, k, block), shape], [f"{x}.blocks_{block}"])
            self.emit("ReduceSum", [f"{x}.blocks_{block}", axes], [f"{x}.block_sums_{block}"], keepdims=0)
            self.block_sums[key] = f"{x}.block_sums_{block}"
        return self.block_sums[key]

    def matmul_nbits(self, a: str, out: str, packed: np.ndarray, scales: np.ndarray, offsets: np.ndarray,
                     bits: int, block: int, k: int, level: int) -> None:
        """out = a · Wᵀ via MatMulNBits on `packed` codes [N, ceil(k / block), bytes]. Offsets that are integer
        zero points (-z·scale) become MatMulNBits' zero points; any others are added exactly as the block-offset
        term, computed on the block sums of `a`."""
        n, n_blocks = scales.shape
        zero_points = integer_zero_points(scales, offsets, bits)
        inputs = [a, self.add_init(f"{out}.qweight", packed), self.add_init(f"{out}.scales", scales)]
        z = np.zeros((n, n_blocks), np.uint8) if zero_points is None else zero_points
        if not np.all(z == 2 ** (bits - 1)):  # else MatMulNBits' default zero point is exact as it is
            inputs.append(self.add_init(f"{out}.zero_points", pack_zero_points(z, bits)))
        codes_out = out if zero_points is not None else f"{out}.codes_term"
        self.emit("MatMulNBits", inputs, [codes_out], domain=MS_DOMAIN, K=k, N=n, bits=bits, block_size=block,
                  accuracy_level=level)
        if zero_points is None:
            offsets_t = self.add_init(f"{out}.offsets_t", offsets.T)
            self.emit("MatMul", [self.block_sum(a, k, block), offsets_t], [f"{out}.offset_term"])
            self.emit("Add", [codes_out, f"{out}.offset_term"], [out])

    def node_weight(self, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """packed codes, float32 scales and offsets, block size and K of a MatMulBlock node."""
        attrs = {at.name: at.i for at in node.attribute}
        return (self.array(node.input[1]), self.array(node.input[2]).astype(np.float32),
                self.array(node.input[3]).astype(np.float32), attrs["block_size"], attrs["K"])

    def matmul_q4(self, node: onnx.NodeProto) -> None:
        packed, scales, offsets, block, k = self.node_weight(node)
        self.matmul_nbits(node.input[0], node.output[0], packed, scales, offsets, 4, block, k, self.level(node))

    def matmul_q8(self, node: onnx.NodeProto) -> None:
        a, out = node.input[0], node.output[0]
        packed, scales, offsets, block, k = self.node_weight(node)
        if self.int8_activations(node) and integer_zero_points(scales, offsets, 8) is not None:
            self.matmul_nbits(a, out, packed, scales, offsets, 8, block, k, ACCURACY_INT8)
            return
        # Exact: MatMulNBits' 8-bit kernel is slow without int8 activations, so each 8-bit code u is split
        # into two 4-bit codes, u = 16·h + l, and the fast 4-bit kernel runs over [a, a] (K doubled):
        # W = (16·s)·h + s·l + offset, where 16·s, s·h and s·l are exact in float32. A zero point z splits
        # the same way (16·zh + zl). Measured: as fast as a float32 MatMul, with a quarter of its memory.
        # A short last block: `a` is zero-padded to whole blocks first, so both halves line up with [a, a].
        n, n_blocks, _ = packed.shape
        halves = np.concatenate([packed >> 4, packed & 15], axis=1).reshape(n, -1)
        split_scales = np.concatenate([16 * scales, scales], axis=1)
        z = integer_zero_points(scales, offsets, 8)
        if z is not None:
            split_offsets = -np.concatenate([z >> 4, z & 15], axis=1).astype(np.float32) * split_scales
        else:
            split_offsets = np.concatenate([offsets, np.zeros_like(offsets)], axis=1)
        whole = self.padded(a, k, block)
        doubled = f"{whole}.doubled"
        if doubled not in self.doubled_inputs:
            self.emit("Concat", [whole, whole], [doubled], axis=-1)
            self.doubled_inputs.add(doubled)
        self.matmul_nbits(doubled, out, pack_codes(halves, 4, block), split_scales, split_offsets, 4, block,
                          2 * n_blocks * block, self.level(node))

    def matmul_repacked(self, node: onnx.NodeProto, bits: int) -> None:
        """MatMulBlockQ2/Q3: the codes widened to 4-bit codes (same values, scales and offsets), then MatMulNBits."""
        packed, scales, offsets, block, k = self.node_weight(node)
        a, out = node.input[0], node.output[0]
        if self.int8_activations(node) and bits == 2:
            self.matmul_nbits(a, out, packed, scales, offsets, 2, block, k, ACCURACY_INT8)
            return
        four_bit = pack_codes(unpack_codes(packed, bits).reshape(packed.shape[0], -1), 4, block)
        self.matmul_nbits(a, out, four_bit, scales, offsets, 4, block, k, self.level(node))

    def matmul_float(self, node: onnx.NodeProto) -> None:
        """The weights dequantized once, at load, to a float32 [K, N] initializer for a plain MatMul."""
        op = OPS[node.op_type]
        attrs = {at.name: at.i for at in node.attribute}
        packed, scales, offsets = (self.array(name) for name in node.input[1:])
        w = dequantize_blocks(packed, scales, offsets, op.bits, attrs["K"])  # type: ignore[attr-defined]
        weight = self.add_init(f"{node.output[0]}.weight_t", np.ascontiguousarray(w.T))
        self.emit("MatMul", [node.input[0], weight], [node.output[0]])

    def run(self) -> onnx.ModelProto:
        handlers = {"MatMulBlockQ4": self.matmul_q4, "MatMulBlockQ8": self.matmul_q8,
                    "MatMulBlockQ2": lambda nd: self.matmul_repacked(nd, 2),
                    "MatMulBlockQ3": lambda nd: self.matmul_repacked(nd, 3)}
        if self.float_weights:
            handlers = dict.fromkeys(handlers, self.matmul_float)
        for node in self.graph.node:
            if node.domain == DOMAIN and node.op_type in handlers:
                handlers[node.op_type](node)
            else:
                self.new_nodes.append(node)
        used = {i for nd in self.new_nodes for i in nd.input}
        kept = [t for t in self.graph.initializer if t.name in used]
        self.graph.ClearField("initializer")
        self.graph.initializer.extend(kept + [t for t in self.new_inits if t.name in used])
        self.graph.ClearField("node")
        self.graph.node.extend(self.new_nodes)
        remaining = {nd.op_type for nd in self.new_nodes if nd.domain == DOMAIN}
        funcs = [f for f in self.model.functions if f.name in remaining]
        self.model.ClearField("functions")
        self.model.functions.extend(funcs)
        return self.model


def lower(model: onnx.ModelProto, provider: str, fast: bool = False, float_weights: bool = False,
          exact_nodes: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """Lower edgekit ops in place for `provider`; providers without these kernels keep the function bodies.
    `float_weights`: every block-quantized MatMul becomes a float32 MatMul on its exact dequantized weights
    (4x the memory of 8-bit, 8x of 4-bit; for multi-token passes, see Decoder)."""
    if provider not in NATIVE_PROVIDERS:
        return model
    return _Lowering(model, fast, float_weights, exact_nodes).run()
