"""Lower edgekit ops to a target's native kernels, once, at export.

The lowered graph reads the very initializers the portable graph stores (packed codes, float16 scales and
offsets): what the native kernel needs in another form (float32 scales, 2- and 3-bit codes widened to 4
bits, 8-bit codes split into two 4-bit halves, transposed offsets) is computed by small standard-ONNX
subgraphs over those constants, which onnxruntime folds once when it creates the session. So each weight
byte is stored once in the package however many graphs use it, and the device runs no Python rewrite.

Rules for MatMulNBits targets (CPU, CUDA), per edgekit op:
- MatMulBlockQ4 -> com.microsoft.MatMulNBits on the codes as stored. An offset of -z·scale with integer z per
  block (Q4_0: 8, Q3_K: 4, edgekit's integer zero points) becomes zero point z; any other offset (Q4_1's,
  Q4_K's and Q2_K's minimums) is added exactly as a second term: y += Σ_b offset[n, b] · Σ_{k in b} x[k], three
  nodes per projection: the block sums of x as one MatMul with a folded 0/1 matrix (shared by every projection
  reading the same x), one small MatMul with the offsets, one Add.
- MatMulBlockQ8 -> the 8-bit codes read as pairs of 4-bit codes by the fast 4-bit kernel over an interleaved
  input (exact, no weight byte moved: `matmul_nibbles8`; MatMulNBits' 8-bit kernel without int8 activations is
  slow), or, in the fast variant, MatMulNBits 8-bit with int8 activations (free offsets through the block-offset
  term).
- MatMulBlockQ2 / MatMulBlockQ3 -> codes widened to 4 bits (MatMulNBits has no 3-bit kernel, and its 2-bit
  kernel without int8 activations is ~30x slower than the 4-bit one, measured); in the fast variant 2-bit codes
  go to MatMulNBits bits=2 as stored (31 vs 45 us for 3072x576 with int8 activations).
- Gather ops keep their function body: they touch only the gathered rows.

The fast variant sets accuracy_level 4 (int8 activations) on every MatMulNBits except the projections the
package measured as sensitive (`recipe.fast_exact`): about 2-3x faster GEMV, not bit-faithful, opt-in.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import EdgekitError
from edgekit.node_names import projection_node
from edgekit.ops import DOMAIN, OPS
from edgekit.ops.block_dequant import const_node, unpack_nodes
from edgekit.targets import Target

MS_DOMAIN = "com.microsoft"
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


class _Lowering:
    """One pass over a portable graph, producing the target's graph (the input model is not modified)."""

    def __init__(self, model: onnx.ModelProto, target: Target, fast: bool, exact_nodes: frozenset[str]):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.graph = self.model.graph
        self.target = target
        self.fast = fast
        self.exact_nodes = exact_nodes
        self.inits = {t.name: t for t in self.graph.initializer}
        self.producers = {o: n for n in self.graph.node for o in n.output}
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.derived: set[str] = set()

    # -- helpers ---------------------------------------------------------------------------------------
    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def int8_activations(self, node: onnx.NodeProto) -> bool:
        """The fast variant, unless the package measured this projection's node as one to keep exact."""
        return self.fast and projection_node(node.name) not in self.exact_nodes

    def level(self, node: onnx.NodeProto) -> int:
        return ACCURACY_INT8 if self.int8_activations(node) else ACCURACY_EXACT

    def const(self, name: str, a: np.ndarray) -> str:
        if name not in self.derived:
            self.derived.add(name)
            self.new_inits.append(numpy_helper.from_array(np.require(a, requirements="C"), name))
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: object) -> str:
        self.new_nodes.append(helper.make_node(op, inputs, outputs, name=f"lowered_{op}_{len(self.new_nodes)}",
                                               domain=domain, **attrs))
        return outputs[0]

    def once(self, name: str, build: Callable[[str], None]) -> str:
        """`name`, computed by build(name) the first time it is asked for (shared subgraphs and inputs), unless the
        graph already computes it."""
        if name not in self.derived and name not in self.producers:
            self.derived.add(name)
            build(name)
        return name

    def float32(self, name: str) -> str:
        """A float16 or float32 initializer (or a float32 value the graph computes) as float32 (folded at session
        creation)."""
        if name not in self.inits or self.inits[name].data_type == TensorProto.FLOAT:
            return name
        return self.once(f"{name}.f32", lambda out: self.emit("Cast", [name], [out], to=TensorProto.FLOAT))

    def padded(self, x: str, k: int, block: int) -> str:
        """x [.., K] zero-padded along K to whole blocks (a short last block's padding codes then meet zeros)."""
        pad = -k % block
        if not pad:
            return x
        pads = self.const(f"pads_0_{pad}", np.array([0, pad], np.int64))
        axes = self.const("axes_last", np.array([-1], np.int64))
        return self.once(f"{x}.padded_{block}", lambda out: self.emit("Pad", [x, pads, "", axes], [out]))

    def last_axis_as(self, x: str, tail: tuple[int, ...]) -> str:
        """The shape of x with its last axis replaced by `tail` (-1 allowed), for inputs of any rank (a decoder's
        [1, S, K], a GPT-2 Gemm's [S, K]); computed once per (input, tail)."""
        def build(out: str) -> None:
            self.emit("Shape", [x], [f"{out}.shape"])
            self.emit("Slice", [f"{out}.shape", self.const("start_0", np.array([0], np.int64)),
                                self.const("end_last", np.array([-1], np.int64))], [f"{out}.lead"])
            self.emit("Concat", [f"{out}.lead", self.const("tail_" + "_".join(map(str, tail)),
                                                            np.array(tail, np.int64))], [out], axis=0)
        return self.once(f"{x}.shape_last_{'_'.join(map(str, tail))}", build)

    def block_sum(self, x: str, k: int, block: int) -> str:
        """Σ x over each block of K, [.., ceil(K / block)]: one MatMul with the 0/1 matrix E [K, nb] for inputs of any
        rank. Every product is x·1 or x·0, so the sums are exact up to summation order, and a short last block needs
        no padding. One node, where Shape, Slice, Concat, Reshape and ReduceSum took five (measured: 0.3-0.7 ms of an
        8.1-8.7 ms SmolLM2-135M step); computed once per (input, block size) and shared by every projection reading x."""
        indicator = self.block_indicator(k, block)
        return self.once(f"{x}.block_sums_{block}", lambda out: self.emit("MatMul", [x, indicator], [out]))

    def block_indicator(self, k: int, block: int) -> str:
        """E [K, ceil(K / block)] float32, E[k, b] = 1 where k // block == b: a constant subgraph (Range, Div, Equal,
        Cast) that onnxruntime folds at session creation, so the package stores no bytes for it."""
        def build(out: str) -> None:
            n_blocks = -(-k // block)
            zero, one = self.const("i64_0", np.array(0, np.int64)), self.const("i64_1", np.array(1, np.int64))
            self.emit("Range", [zero, self.const(f"i64_{k}", np.array(k, np.int64)), one], [f"{out}.k"])
            self.emit("Div", [f"{out}.k", self.const(f"i64_{block}", np.array(block, np.int64))], [f"{out}.kb"])
            self.emit("Unsqueeze", [f"{out}.kb", self.const("axes_last", np.array([-1], np.int64))], [f"{out}.col"])
            self.emit("Range", [zero, self.const(f"i64_{n_blocks}", np.array(n_blocks, np.int64)), one],
                      [f"{out}.b"])
            self.emit("Equal", [f"{out}.col", f"{out}.b"], [f"{out}.mask"])
            self.emit("Cast", [f"{out}.mask"], [out], to=TensorProto.FLOAT)
        return self.once(f"block_indicator_{k}_{block}", build)

    def zero_points(self, name: str, z: np.ndarray | None, n: int, n_blocks: int, bits: int) -> str | None:
        """MatMulNBits' packed uint8 zero points [N, ceil(nb·bits/8)]: stored when they vary, expanded from one
        row when every row is the same, omitted when they equal the default 2^(bits-1)."""
        if z is not None and np.all(z == 2 ** (bits - 1)):
            return None
        per = 8 // bits
        z = np.zeros((n, n_blocks), np.uint8) if z is None else z
        padded = np.zeros((n, -(-n_blocks // per) * per), np.uint8)
        padded[:, :n_blocks] = z
        packed = np.bitwise_or.reduce(padded.reshape(n, -1, per) << (bits * np.arange(per, dtype=np.uint8)), axis=-1)
        if np.all(packed == packed[:1]):
            row = self.const(f"{name}.zero_point_row_{bits}", packed[:1].astype(np.uint8))
            shape = self.const(f"shape_{n}x{packed.shape[1]}", np.array(packed.shape, np.int64))
            return self.once(f"{name}.zero_points_{bits}", lambda out: self.emit("Expand", [row, shape], [out]))
        # Named by width: the exact and fast graphs of one package may pack the same zero points at 4 and at 2 bits,
        # and a name means the same bytes in every graph of the package (exporters.graph_files).
        return self.const(f"{name}.zero_points_{bits}", packed.astype(np.uint8))

    def matmul_nbits(self, a: str, out: str, codes: str, scales: str, z: np.ndarray | None, offsets: str | None,
                     n: int, n_blocks: int, bits: int, block: int, k: int, level: int) -> None:
        """out = a · Wᵀ via MatMulNBits on packed `codes` [N, nb, bytes] and float32 `scales` [N, nb], zero points
        z [N, nb] (None: 0); a non-integer `offsets` initializer adds the exact block-offset term."""
        inputs = [a, codes, scales]
        zp = self.zero_points(out, z, n, n_blocks, bits)
        if zp is not None:
            inputs.append(zp)
        codes_out = out if offsets is None else f"{out}.codes_term"
        self.emit("MatMulNBits", inputs, [codes_out], domain=MS_DOMAIN, K=k, N=n, bits=bits, block_size=block,
                  accuracy_level=level)
        if offsets is not None:
            self.add_offset_term(a, k, block, offsets, codes_out, out)

    # -- code layouts (constant subgraphs, folded at session creation) ------------------------------------------
    def four_bit_codes(self, packed: str, bits: int, shape: tuple[int, ...]) -> str:
        """2- or 3-bit packed codes [N, nb, bytes] re-packed as 4-bit codes [N, nb, block / 2]."""
        def build(out: str) -> None:
            n, nb, n_bytes = shape
            block = n_bytes * 8 // bits
            body = [const_node("axis_last", np.array([-1], np.int64)),
                    const_node("shape_rows_blocks", np.array([0, 0, -1], np.int64)),
                    *unpack_nodes(bits, packed, "codes")]
            self.new_nodes.extend(_renamed(node, f"{out}.", {packed}) for node in body)
            self.emit("Cast", [f"{out}.codes"], [f"{out}.codes_u8"], to=TensorProto.UINT8)
            self.pack_nibbles(f"{out}.codes_u8", out, (n, nb, block))
        return self.once(f"{packed}.as4", build)

    def pack_nibbles(self, codes: str, out: str, shape: tuple[int, int, int]) -> None:
        """uint8 codes [N, B, L] (< 16) -> packed [N, B, L / 2]: low nibble first, MatMulNBits' layout."""
        n, b, length = shape
        pairs = self.const(f"shape_{n}x{b}x{length // 2}x2", np.array([n, b, length // 2, 2], np.int64))
        self.emit("Reshape", [codes, pairs], [f"{out}.pairs"])
        lo, hi = f"{out}.lo", f"{out}.hi"
        self.emit("Split", [f"{out}.pairs"], [lo, hi], axis=-1, num_outputs=2)
        self.emit("BitShift", [hi, self.const("u8_4", np.array(4, np.uint8))], [f"{out}.hi4"], direction="LEFT")
        self.emit("BitwiseOr", [lo, f"{out}.hi4"], [f"{out}.packed4"])
        self.emit("Squeeze", [f"{out}.packed4", self.const("axes_last", np.array([-1], np.int64))], [out])

    # -- ops ----------------------------------------------------------------------------------------------------
    def zero_points_of(self, node: onnx.NodeProto, scales: np.ndarray, bits: int) -> np.ndarray | None:
        """Integer zero points z [N, nb] of a MatMulBlock node's weight, or None when its offsets are free.

        A format with a uniform zero point has its offsets computed as scales · (-z) in the graph (GraphBuilder):
        z is read from that node. Stored offsets are checked for per-block integer zero points (edgekit's
        asymmetric grids), once, here at export."""
        offsets = node.input[3]
        if offsets in self.inits:
            return integer_zero_points(scales, self.array(offsets).astype(np.float32), bits)
        mul = self.producers.get(offsets)
        factor = next((self.array(i) for i in (mul.input if mul is not None else []) if i in self.inits), None)
        if mul is None or mul.op_type != "Mul" or factor is None or factor.size != 1:
            raise EdgekitError(f"node {node.name}: offsets {offsets} are neither stored nor -z·scale")
        return np.full(scales.shape, -float(factor), np.float32).astype(np.uint8)

    def matmul_block(self, node: onnx.NodeProto, bits: int) -> None:
        a, packed, scales_name, offsets_name = node.input
        out = node.output[0]
        attrs = {at.name: at.i for at in node.attribute}
        block, k, n = attrs["block_size"], attrs["K"], attrs["N"]
        scales = self.array(scales_name).astype(np.float32)
        nb = scales.shape[1]
        z = self.zero_points_of(node, scales, bits)
        free_offsets = None if z is not None else offsets_name
        shape = tuple(self.inits[packed].dims)
        # int8 activations: the native 2- and 8-bit kernels where the target has them
        fast_native = self.int8_activations(node) and bits in self.target.native_bits - {4}
        if bits == 4 or fast_native:
            self.matmul_nbits(a, out, packed, self.float32(scales_name), z, free_offsets, n, nb, bits, block, k,
                              self.level(node))
        elif bits in (2, 3):
            self.matmul_nbits(a, out, self.four_bit_codes(packed, bits, shape), self.float32(scales_name), z,
                              free_offsets, n, nb, 4, block, k, self.level(node))
        else:
            self.matmul_nibbles8(node, nb, block, k, n)

    def matmul_nibbles8(self, node: onnx.NodeProto, nb: int, block: int, k: int, n: int) -> None:
        """Exact 8-bit on the fast 4-bit kernel without moving a weight byte (MatMulNBits' own 8-bit kernel is slow
        without int8 activations): each stored code u = 16·h + l is read as two 4-bit codes, low nibble first (the
        4-bit layout), so a block of B 8-bit codes is a block of 2·B 4-bit codes. The input is interleaved as
        [x0, 16·x0, x1, 16·x1, ...] (×16 is exact), zero points are 0, and the offsets (-z·scale, or free) are
        added as the block-offset term: y = Σ scale·u·x + Σ_b offset_b · Σ_{k in b} x_k. A short last block: `a`
        is zero-padded to whole blocks first."""
        a, packed, scales_name, offsets_name = node.input
        whole = self.padded(a, k, block)

        def interleave(out: str) -> None:
            last = self.const("axes_last", np.array([-1], np.int64))
            self.emit("Mul", [whole, self.const("f32_16", np.array(16, np.float32))], [f"{out}.x16"])
            self.emit("Unsqueeze", [whole, last], [f"{out}.low"])
            self.emit("Unsqueeze", [f"{out}.x16", last], [f"{out}.high"])
            self.emit("Concat", [f"{out}.low", f"{out}.high"], [f"{out}.pairs"], axis=-1)
            self.emit("Reshape", [f"{out}.pairs", self.last_axis_as(whole, (-1,))], [out])

        nibbles = self.once(f"{whole}.nibbles", interleave)
        out = node.output[0]
        self.matmul_nbits(nibbles, f"{out}.codes_term", packed, self.float32(scales_name), np.zeros((n, nb), np.uint8),
                          None, n, nb, 4, 2 * block, 2 * nb * block, self.level(node))
        self.add_offset_term(a, k, block, offsets_name, f"{out}.codes_term", out)

    def add_offset_term(self, a: str, k: int, block: int, offsets: str, codes_out: str, out: str) -> None:
        """out = codes_out + Σ_b offsets[n, b] · Σ_{k in b} a[k]: one small MatMul over the block sums of `a`."""
        perm = self.once(f"{offsets}.t", lambda o: self.emit("Transpose", [self.float32(offsets)], [o], perm=[1, 0]))
        self.emit("MatMul", [self.block_sum(a, k, block), perm], [f"{out}.offset_term"])
        self.emit("Add", [codes_out, f"{out}.offset_term"], [out])

    def run(self) -> onnx.ModelProto:
        for node in self.graph.node:
            op = OPS.get(node.op_type) if node.domain == DOMAIN else None
            if op is not None and node.op_type.startswith("MatMulBlockQ"):
                self.matmul_block(node, op.bits)  # type: ignore[attr-defined]
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
        if not any(o.domain == MS_DOMAIN for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        return self.model


def _renamed(node: onnx.NodeProto, prefix: str, keep: set[str]) -> onnx.NodeProto:
    """A function-body node (block_dequant's unpack nodes) with its local value names made unique in the graph."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = prefix + node.output[0]
    for field in (copy.input, copy.output):
        names = [v if not v or v in keep else prefix + v for v in field]
        del field[:]
        field.extend(names)
    return copy


def lower(model: onnx.ModelProto, target: Target, fast: bool = False,
          exact_nodes: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """`model` (a portable graph) lowered for `target`: a new model; the portable graph itself for targets with no
    native kernels. `fast`: the target's int8-activation variant; `exact_nodes` stay exact in it."""
    if fast and not target.fast_variant:
        raise EdgekitError(f"target {target.name} has no fast variant")
    if target.provider is None:
        return model
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type not in target.lowers:
            raise EdgekitError(f"target {target.name} cannot lower {node.op_type} (node {node.name}); it lowers "
                               f"{', '.join(sorted(target.lowers))}: export with --target portable, or quantize to a "
                               "format these ops carry (--weights)")
    return _Lowering(model, target, fast, exact_nodes).run()
