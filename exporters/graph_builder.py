"""Graph primitives for decoders built directly from weights (no tracing); architectures compose them.

Writing the graph by hand, as onnxruntime-genai's model builder does, lets every layer use
ONNX Runtime's fused kernels (GroupQueryAttention with rotary and an in-place KV buffer,
SkipSimplifiedLayerNormalization) and keeps low-bit weights in edgekit ops; a traced torch
graph would give hundreds of small ops per layer and float weights.

Graph I/O (docs/package-format.md): inputs `input_ids` int64 [1, S], `seqlens_k` int32 [1]
(tokens in the cache after this step, minus one), `total_sequence_length` int32 [],
`logits_from` int64 [1] (first position whose logits are returned), and per layer
`past_key_values.{i}.key|value` float32 [1, kv_heads, max_len, head_dim]; outputs `logits`
float32 [1, S - logits_from, vocab] and `present.{i}.key|value` (the same buffers, updated).
"""

from __future__ import annotations

import numpy as np
import onnx
from edgekit.exporters.weights import Weight
from onnx import TensorProto, helper, numpy_helper

from edgekit.formats import BlockQuantWeight, pack_codes
from edgekit.model_config import ModelConfig
from edgekit.node_names import MATMUL_SUFFIX
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
from edgekit.ops.base import EdgekitOp

MS_DOMAIN = "com.microsoft"
_MATMUL_OPS: dict[int, type[EdgekitOp]] = {2: MatMulBlockQ2, 3: MatMulBlockQ3, 4: MatMulBlockQ4, 8: MatMulBlockQ8}
_GATHER_OPS: dict[int, type[EdgekitOp]] = {2: GatherBlockQ2, 3: GatherBlockQ3, 4: GatherBlockQ4, 8: GatherBlockQ8}


def _native(a: np.ndarray, dtype: type[np.floating], what: str) -> np.ndarray:
    """`a` in the format's storage dtype; the format promises no bit is lost (checked)."""
    stored = a.astype(dtype)
    if not np.array_equal(stored.astype(np.float32), a.astype(np.float32)):
        raise ValueError(f"{what} do not fit the format's {np.dtype(dtype).name} exactly")
    return stored


class GraphBuilder:
    """Accumulates nodes and initializers; one instance builds one model."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.edgekit_ops: set[str] = set()
        self._names: set[str] = set()

    # -- primitives ---------------------------------------------------------------------------
    def initializer(self, name: str, array: np.ndarray) -> str:
        if name in self._names:
            return name
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.require(array, requirements="C"), name))
        return name

    def _node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: object) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(self.nodes)}", domain=domain, **attrs))

    def _block_inputs(self, name: str, w: BlockQuantWeight) -> list[str]:
        """Packed codes, scales and offsets of a block-quantized weight, stored as its format stores them. A format
        with a uniform zero point z stores no offsets: the graph computes -z·scale (exact in float32; folded
        at session creation), and lowering reads z back from that node."""
        fmt = w.format
        scales = self.initializer(f"{name}.scales", _native(w.scales, fmt.scale_dtype, f"{name}: scales"))
        inputs = [self.initializer(f"{name}.qweight", pack_codes(w.codes, w.bits, w.block_size)), scales]
        if fmt.zero_point is None:
            return [*inputs, self.initializer(f"{name}.offsets", _native(w.offsets, fmt.offset_dtype, f"{name}: offsets"))]
        if f"{name}.offsets" in self._names:  # the tied output layer reads the embedding's own
            return [*inputs, f"{name}.offsets"]
        self._names.add(f"{name}.offsets")
        z = float(fmt.zero_point)
        if not np.array_equal(w.offsets.astype(np.float32), -z * w.scales.astype(np.float32)):
            raise ValueError(f"{name}: offsets are not -{fmt.zero_point}·scale, as format {fmt.name} says")
        self._node("Cast", [scales], [f"{scales}.f32"], to=TensorProto.FLOAT)
        self._node("Mul", [f"{scales}.f32", self.initializer(f"zero_point_{fmt.zero_point}", np.array(-z, np.float32))],
                   [f"{name}.offsets"])
        return [*inputs, f"{name}.offsets"]

    def linear(self, x: str, name: str, w: Weight, out: str) -> str:
        """out = x · wᵀ, with w [N, K] dense or block-quantized."""
        if isinstance(w, BlockQuantWeight):
            op = _MATMUL_OPS.get(w.bits)
            if op is None:
                raise ValueError(f"{name}: no op for {w.bits}-bit weights")
            self.edgekit_ops.add(op.op_type)
            n, k = w.shape
            node = op.make_node([x, *self._block_inputs(name, w)], [out], f"{name}{MATMUL_SUFFIX}",
                                K=k, N=n, block_size=w.block_size)
            self.nodes.append(node)
        else:
            self._node("MatMul", [x, self.initializer(f"{name}.weight_t", w.T.astype(np.float32))], [out])
        return out

    # -- model parts ----------------------------------------------------------------------------
    def embedding(self, w: Weight, ids: str, out: str) -> str:
        if isinstance(w, BlockQuantWeight):
            op = _GATHER_OPS[w.bits]
            self.edgekit_ops.add(op.op_type)
            self.nodes.append(op.make_node([*self._block_inputs("embed", w), ids], [out], "embed.gather",
                                           K=w.shape[1], block_size=w.block_size))
        else:
            self._node("Gather", [self.initializer("embed.weight", w.astype(np.float32)), ids], [out], axis=0)
        return out

    def tied_lm_head(self, w: Weight, x: str, out: str) -> str:
        """The output layer reading the embedding's own initializers (stored once)."""
        if isinstance(w, BlockQuantWeight):
            return self.linear(x, "embed", w, out)
        return self.table_head(x, "embed.weight", w.shape[0], out)

    def table_head(self, x: str, table: str, vocab: int, out: str) -> str:
        """x · tableᵀ for a float32 [vocab, H] table: Gemm with transB reads it in place, where MatMul would need
        a transposed copy."""
        h = self.config.hidden_size
        self._node("Reshape", [x, self.initializer("shape_2d", np.array([-1, h], np.int64))], [f"{out}_2d_in"])
        self._node("Gemm", [f"{out}_2d_in", table], [f"{out}_2d"], transB=1)
        self._node("Reshape", [f"{out}_2d", self.initializer("shape_logits", np.array([1, -1, vocab], np.int64))],
                   [out])
        return out

    def rms_norm(self, x: str, w: np.ndarray, name: str, out: str) -> str:
        self._node("SimplifiedLayerNormalization", [x, self.initializer(name, w.astype(np.float32))], [out],
                   axis=-1, epsilon=self.config.rms_norm_eps)
        return out

    def skip_rms_norm(self, x: str, skip: str, w: np.ndarray, name: str, out: str, residual_out: str) -> None:
        self._node("SkipSimplifiedLayerNormalization", [x, skip, self.initializer(name, w.astype(np.float32))],
                   [out, "", "", residual_out], domain=MS_DOMAIN, epsilon=self.config.rms_norm_eps)

    def add_rms_norm(self, x: str, residual: str | None, w: np.ndarray, name: str) -> tuple[str, str]:
        """(norm(x + residual), x + residual): the pre-norm step of a decoder block, fused into one kernel; with
        no residual yet (the first block) the sum is x itself."""
        out = f"{name}.out"
        if residual is None:
            return self.rms_norm(x, w, name, out), x
        self.skip_rms_norm(x, residual, w, name, out, f"{name}.residual")
        return out, f"{name}.residual"

    def head_rms_norm(self, x: str, w: np.ndarray, head_dim: int, name: str) -> str:
        """RMSNorm over each head's `head_dim` values of x [1, S, heads * head_dim] (QK-norm)."""
        heads = self.initializer(f"shape_heads_{head_dim}", np.array([0, 0, -1, head_dim], np.int64))
        flat = self.initializer("shape_flat_heads", np.array([0, 0, -1], np.int64))
        self._node("Reshape", [x, heads], [f"{name}.heads"])
        self.rms_norm(f"{name}.heads", w, name, f"{name}.normed")
        self._node("Reshape", [f"{name}.normed", flat], [f"{name}.out"])
        return f"{name}.out"

    def split(self, x: str, sizes: list[int], outs: list[str]) -> list[str]:
        """x split along its last axis."""
        split = self.initializer("split_" + "_".join(map(str, sizes)), np.array(sizes, np.int64))
        self._node("Split", [x, split], outs, axis=-1)
        return outs

    def binary(self, op: str, a: str, b: str, out: str) -> str:
        self._node(op, [a, b], [out])
        return out

    def constant(self, value: float) -> str:
        """A float32 scalar initializer, named by its bits (one per value)."""
        return self.initializer(f"const_{np.float32(value).view(np.uint32):08x}", np.array(value, np.float32))

    def scale(self, x: str, factor: float, out: str) -> str:
        """x · factor, the factor a float32 constant (as transformers multiplies in float32)."""
        return self.binary("Mul", x, self.constant(factor), out)

    def activation(self, kind: str, x: str, out: str) -> str:
        """silu (x·sigmoid(x)) or gelu_tanh (GELU with the tanh approximation, ONNX Gelu-20)."""
        if kind == "silu":
            self._node("Sigmoid", [x], [f"{out}.sig"])
            return self.binary("Mul", x, f"{out}.sig", out)
        if kind == "gelu_tanh":
            self._node("Gelu", [x], [out], approximate="tanh")
            return out
        raise ValueError(f"unknown activation {kind!r}")

    def softcap(self, x: str, cap: float, out: str) -> str:
        """cap · tanh(x / cap) (Gemma's logit soft-capping; a division, as transformers computes it)."""
        self.binary("Div", x, self.constant(cap), f"{out}.scaled")
        self._node("Tanh", [f"{out}.scaled"], [f"{out}.tanh"])
        return self.scale(f"{out}.tanh", cap, out)

    def rope_tables(self, name: str, inv_freq: np.ndarray, length: int) -> tuple[str, str]:
        """cos and sin [length, head_dim / 2] of position · inv_freq, computed in the graph (onnxruntime folds them
        once at session creation) rather than stored: 2 MB less on disk at 8192 positions. The angles are the
        same float32 products transformers computes."""
        self._node("Range", [self.initializer("f32_0", np.array(0, np.float32)),
                             self.initializer(f"f32_{length}", np.array(length, np.float32)),
                             self.initializer("f32_1", np.array(1, np.float32))], [f"{name}.positions"])
        self._node("Unsqueeze", [f"{name}.positions", self.initializer("axes_1", np.array([1], np.int64))],
                   [f"{name}.column"])
        self._node("Mul", [f"{name}.column", self.initializer(f"{name}.inv_freq", inv_freq[None].astype(np.float32))],
                   [f"{name}.angles"])
        self._node("Cos", [f"{name}.angles"], [f"{name}.cos"])
        self._node("Sin", [f"{name}.angles"], [f"{name}.sin"])
        return f"{name}.cos", f"{name}.sin"

    def group_query_attention(self, i: int, qkv: list[str], rope: tuple[str, str], out: str, *,
                              window: int | None, scale: float | None) -> str:
        """com.microsoft.GroupQueryAttention over layer i's cache buffers, rotary applied inside; `qkv` is one
        packed projection (then k and v are "") or three."""
        c = self.config
        attrs: dict[str, object] = {"num_heads": c.heads_of(i), "kv_num_heads": c.kv_heads_of(i), "do_rotary": 1,
                                    "rotary_interleaved": 0, "local_window_size": window or -1}
        if scale is not None:
            attrs["scale"] = float(scale)
        self._node("GroupQueryAttention",
                   [*qkv, f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
                    "total_sequence_length", *rope],
                   [out, f"present.{i}.key", f"present.{i}.value"], domain=MS_DOMAIN, **attrs)
        return out

    def logits(self, hidden: str, head: Weight, separate: bool, out: str) -> str:
        """The output layer over the positions from `logits_from` on: a `separate` lm_head, or the tied embedding
        (reading the embedding's own initializers)."""
        self._node("Slice", [hidden, "logits_from", self.initializer("slice_end", np.array([2**62], np.int64)),
                             self.initializer("axis_seq", np.array([1], np.int64))], ["kept_hidden"])
        if separate:
            return self.linear("kept_hidden", "lm_head", head, out)
        return self.tied_lm_head(head, "kept_hidden", out)

    def model(self) -> onnx.ModelProto:
        """The graph with the causal-LM contract's inputs and outputs (module docstring)."""
        c = self.config
        f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
        inputs = [
            helper.make_tensor_value_info("input_ids", i64, [1, "sequence"]),
            helper.make_tensor_value_info("seqlens_k", i32, [1]),
            helper.make_tensor_value_info("total_sequence_length", i32, []),
            helper.make_tensor_value_info("logits_from", i64, [1]),
        ]
        outputs = [helper.make_tensor_value_info("logits", f32, [1, "kept", c.vocab_size])]
        for i in range(c.num_layers):
            cache_shape = [1, c.kv_heads_of(i), "max_length", c.head_dim]
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, cache_shape))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32, cache_shape))
        return self.assemble("edgekit_decoder", inputs, outputs, [*OPSET_IMPORTS, helper.make_opsetid(MS_DOMAIN, 1)])

    def assemble(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
                 opsets: list[onnx.OperatorSetIdProto]) -> onnx.ModelProto:
        """The nodes and initializers as a model with these inputs and outputs (and the edgekit ops' functions)."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=opsets, producer_name="edgekit",
                                  functions=function_protos(self.edgekit_ops))
        model.ir_version = 10
        return model
