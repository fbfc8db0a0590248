"""Build the decoder's ONNX graph directly from weights (no tracing).

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

from collections.abc import Iterable

import numpy as np
import onnx
from edgekit.exporters.rope import rope_cos_sin
from edgekit.exporters.weights import Weight, WeightSource
from onnx import TensorProto, helper, numpy_helper

from edgekit.formats import BlockQuantWeight, pack_codes
from edgekit.model_config import ModelConfig
from edgekit.node_names import MATMUL_SUFFIX
from edgekit.ops import (
    OPSET_IMPORTS,
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
_GATHER_OPS: dict[int, type[EdgekitOp]] = {4: GatherBlockQ4, 8: GatherBlockQ8}


def _fp16_if_exact(a: np.ndarray) -> np.ndarray:
    """Scales and offsets from GGUF are float16 already; keep them at 2 bytes when no bit is lost."""
    half = a.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), a.astype(np.float32)) else a.astype(np.float32)


class GraphBuilder:
    """Accumulates nodes and initializers; one instance builds one model."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.edgekit_ops: set[str] = set()
        self._names: set[str] = set()

    # -- primitives ---------------------------------------------------------------------------
    def _initializer(self, name: str, array: np.ndarray) -> str:
        if name in self._names:
            return name
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def _node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: object) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(self.nodes)}", domain=domain, **attrs))

    def _block_inputs(self, name: str, w: BlockQuantWeight) -> list[str]:
        return [
            self._initializer(f"{name}.qweight", pack_codes(w.codes, w.bits, w.block_size)),
            self._initializer(f"{name}.scales", _fp16_if_exact(w.scales)),
            self._initializer(f"{name}.offsets", _fp16_if_exact(w.offsets)),
        ]

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
            self._node("MatMul", [x, self._initializer(f"{name}.weight_t", w.T.astype(np.float32))], [out])
        return out

    # -- model parts ----------------------------------------------------------------------------
    def embedding(self, w: Weight, ids: str, out: str) -> str:
        if isinstance(w, BlockQuantWeight):
            op = _GATHER_OPS[w.bits]
            self.edgekit_ops.add(op.op_type)
            self.nodes.append(op.make_node([*self._block_inputs("embed", w), ids], [out], "embed.gather",
                                           K=w.shape[1], block_size=w.block_size))
        else:
            self._node("Gather", [self._initializer("embed.weight", w.astype(np.float32)), ids], [out], axis=0)
        return out

    def tied_lm_head(self, w: Weight, x: str, out: str) -> str:
        """The output layer reading the embedding's own initializers (stored once)."""
        if isinstance(w, BlockQuantWeight):
            return self.linear(x, "embed", w, out)
        # Gemm with transB reads the [V, H] table in place; MatMul would need a transposed copy.
        h = self.config.hidden_size
        self._node("Reshape", [x, self._initializer("shape_2d", np.array([-1, h], np.int64))], [f"{out}_2d_in"])
        self._node("Gemm", [f"{out}_2d_in", "embed.weight"], [f"{out}_2d"], transB=1)
        self._node("Reshape", [f"{out}_2d", self._initializer("shape_logits", np.array([1, -1, w.shape[0]], np.int64))],
                   [out])
        return out

    def rms_norm(self, x: str, w: np.ndarray, name: str, out: str) -> str:
        self._node("SimplifiedLayerNormalization", [x, self._initializer(name, w.astype(np.float32))], [out],
                   axis=-1, epsilon=self.config.rms_norm_eps)
        return out

    def skip_rms_norm(self, x: str, skip: str, w: np.ndarray, name: str, out: str, residual_out: str) -> None:
        self._node("SkipSimplifiedLayerNormalization", [x, skip, self._initializer(name, w.astype(np.float32))],
                   [out, "", "", residual_out], domain=MS_DOMAIN, epsilon=self.config.rms_norm_eps)

    def attention(self, i: int, x: str, weights: WeightSource, out: str) -> str:
        c = self.config
        p = f"layers.{i}"
        q, k, v = (weights.get(f"{p}.{n}") for n in "qkv")
        fusable = all(isinstance(t, np.ndarray) for t in (q, k, v)) or (
            all(isinstance(t, BlockQuantWeight) for t in (q, k, v))
            and len({(t.bits, t.block_size) for t in (q, k, v)}) == 1  # type: ignore[union-attr]
        )
        biases = [f"{p}.{n}_bias" for n in "qkv"]
        has_bias = all(weights.has(b) for b in biases)
        if fusable:
            qkv_w = (np.concatenate([q, k, v]) if isinstance(q, np.ndarray)
                     else BlockQuantWeight.concat_rows([q, k, v]))  # type: ignore[list-item]
            proj = [self.linear(x, f"{p}.qkv", qkv_w, f"{p}.qkv_out")]
            if has_bias:
                bias = np.concatenate([weights.get(b) for b in biases]).astype(np.float32)  # type: ignore[misc]
                self._node("Add", [proj[0], self._initializer(f"{p}.qkv_bias", bias)], [f"{p}.qkv_biased"])
                proj = [f"{p}.qkv_biased"]
            proj += ["", ""]
        else:
            proj = []
            for name, w, b in zip("qkv", (q, k, v), biases):
                y = self.linear(x, f"{p}.{name}", w, f"{p}.{name}_out")
                if has_bias:
                    self._node("Add", [y, self._initializer(b, weights.get(b).astype(np.float32))], [f"{y}_b"])  # type: ignore[union-attr]
                    y = f"{y}_b"
                proj.append(y)
        self._node(
            "GroupQueryAttention",
            [*proj, f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k", "total_sequence_length",
             "cos_cache", "sin_cache"],
            [f"{p}.attn", f"present.{i}.key", f"present.{i}.value"],
            domain=MS_DOMAIN,
            num_heads=c.num_heads,
            kv_num_heads=c.num_kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
            local_window_size=c.sliding_window or -1,
        )
        return self.linear(f"{p}.attn", f"{p}.o", weights.get(f"{p}.o"), out)

    def mlp(self, i: int, x: str, weights: WeightSource, out: str) -> str:
        p = f"layers.{i}"
        gate, up = weights.get(f"{p}.gate"), weights.get(f"{p}.up")
        width = gate.shape[0]
        if isinstance(gate, BlockQuantWeight) and isinstance(up, BlockQuantWeight) and \
                (gate.bits, gate.block_size) == (up.bits, up.block_size):
            fused: Weight | None = BlockQuantWeight.concat_rows([gate, up])
        elif isinstance(gate, np.ndarray) and isinstance(up, np.ndarray):
            fused = np.concatenate([gate, up])
        else:
            fused = None
        if fused is not None:
            self.linear(x, f"{p}.gate_up", fused, f"{p}.gate_up_out")
            split = self._initializer(f"split_{width}", np.array([width, width], np.int64))
            self._node("Split", [f"{p}.gate_up_out", split], [f"{p}.gate_out", f"{p}.up_out"], axis=-1)
        else:
            self.linear(x, f"{p}.gate", gate, f"{p}.gate_out")
            self.linear(x, f"{p}.up", up, f"{p}.up_out")
        self._node("Sigmoid", [f"{p}.gate_out"], [f"{p}.gate_sig"])
        self._node("Mul", [f"{p}.gate_out", f"{p}.gate_sig"], [f"{p}.gate_act"])
        self._node("Mul", [f"{p}.gate_act", f"{p}.up_out"], [f"{p}.act"])
        return self.linear(f"{p}.act", f"{p}.down", weights.get(f"{p}.down"), out)

    # -- whole model ------------------------------------------------------------------------------
    def build(self, weights: WeightSource, rope_len: int, layer_progress: Iterable[int] | None = None) -> onnx.ModelProto:
        c = self.config
        cos, sin = rope_cos_sin(c, rope_len)
        self._initializer("cos_cache", cos)
        self._initializer("sin_cache", sin)
        embed = weights.get("embed")
        self.embedding(embed, "input_ids", "embeddings")
        hidden, residual = "embeddings", "embeddings"
        for i in layer_progress if layer_progress is not None else range(c.num_layers):
            p = f"layers.{i}"
            if i == 0:
                x = self.rms_norm(hidden, weights.get(f"{p}.attn_norm"), f"{p}.attn_norm", f"{p}.attn_in")  # type: ignore[arg-type]
                residual_in = hidden
            else:
                x, residual_in = f"{p}.attn_in", f"{p}.residual_attn"
                self.skip_rms_norm(hidden, residual, weights.get(f"{p}.attn_norm"), f"{p}.attn_norm", x, residual_in)  # type: ignore[arg-type]
            attn = self.attention(i, x, weights, f"{p}.attn_out")
            self.skip_rms_norm(attn, residual_in, weights.get(f"{p}.mlp_norm"), f"{p}.mlp_norm", f"{p}.mlp_in",  # type: ignore[arg-type]
                               f"{p}.residual_mlp")
            hidden = self.mlp(i, f"{p}.mlp_in", weights, f"{p}.mlp_out")
            residual = f"{p}.residual_mlp"
        self.skip_rms_norm(hidden, residual, weights.get("norm"), "norm", "final_hidden", "final_residual")  # type: ignore[arg-type]
        self._node("Slice", ["final_hidden", "logits_from", self._initializer("slice_end", np.array([2**62], np.int64)),
                             self._initializer("axis_seq", np.array([1], np.int64))], ["kept_hidden"])
        if weights.has("lm_head"):
            self.linear("kept_hidden", "lm_head", weights.get("lm_head"), "logits")
        else:
            self.tied_lm_head(embed, "kept_hidden", "logits")
        return self._model()

    def _model(self) -> onnx.ModelProto:
        c = self.config
        f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
        cache_shape = [1, c.num_kv_heads, "max_length", c.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", i64, [1, "sequence"]),
            helper.make_tensor_value_info("seqlens_k", i32, [1]),
            helper.make_tensor_value_info("total_sequence_length", i32, []),
            helper.make_tensor_value_info("logits_from", i64, [1]),
        ]
        outputs = [helper.make_tensor_value_info("logits", f32, [1, "kept", c.vocab_size])]
        for i in range(c.num_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, cache_shape))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32, cache_shape))
        graph = helper.make_graph(self.nodes, "edgekit_decoder", inputs, outputs, self.initializers)
        opsets = [*OPSET_IMPORTS, helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="edgekit",
                                  functions=function_protos(self.edgekit_ops))
        model.ir_version = 10
        return model
