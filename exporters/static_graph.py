"""The static-shape decoder graph (`--target qnn`): fixed chunk and context lengths, standard ONNX ops only.

An NPU compiles a graph for fixed shapes and runs standard operators: no GroupQueryAttention, no
SkipSimplifiedLayerNormalization, no dynamic sequence length. The static graph is the architecture's own
graph code (`Architecture.build`) over a GraphBuilder whose attention, normalization, rotary and I/O
primitives are static; weights stay in edgekit's ops, as in the portable graph, so both graphs read the
same initializers (stored once in the package) and the static graph runs anywhere through the ops'
standard-ONNX function bodies (on the CPU, onnxruntime folds them into float32 weights at session creation).

Graph I/O (docs/package-format.md), chunk C, context L: inputs `input_ids` int64 [1, C], `position_ids` int64
[1, C], `attention_mask` float32 [1, 1, C, L + C] (added to the attention scores: 0 where a query may look, a
large negative number where not; columns 0..L-1 are the cache slots, L..L+C-1 the chunk itself), per layer
`past_key_values.{i}.key|value` float32 [1, kv_heads, L, head_dim]; outputs `logits` float32 [1, C, vocab] and
`present.{i}.key|value` float32 [1, kv_heads, C, head_dim]: the chunk's own keys (rotary applied) and values,
which the runtime writes into its cache (runtime.static_decoder).

A chunk graph costs a whole chunk's compute whatever the number of real tokens in it, so each decode step
would pay C tokens' work for one (on the CPU, 32-64 times a step's matrix work). Beside it goes the step graph,
the same graph with C = 1 (same weights, stored once), which the runtime runs for single tokens: the two-graph
layout NPU runtimes use (a prompt processor and a token generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from edgekit.exporters.arch.base import Architecture
from edgekit.exporters.graph_builder import GraphBuilder
from edgekit.exporters.weights import Weight, WeightSource
from onnx import TensorProto, helper

from edgekit.errors import EdgekitError
from edgekit.formats import BlockQuantWeight
from edgekit.model_config import ModelConfig
from edgekit.ops import OPSET_IMPORTS

DEFAULT_CHUNK = 64
DEFAULT_CONTEXT = 512


@dataclass(frozen=True)
class StaticShapes:
    """chunk: tokens per graph run (C); context: cache slots (L), the most tokens a sequence holds."""

    chunk: int
    context: int

    def to_dict(self) -> dict[str, int]:
        return {"chunk": self.chunk, "context": self.context}


def static_shapes(config: ModelConfig, chunk: int | None, context: int | None,
                  path: str | Path | None = None) -> StaticShapes:
    """The shapes asked for, defaults filled in (context 512 or the model's maximum if less, chunk 64 or the
    context if less), checked against each other and the model (one line naming the option)."""
    limit = config.max_position_embeddings
    context = min(DEFAULT_CONTEXT, limit) if context is None else context
    chunk = min(DEFAULT_CHUNK, context) if chunk is None else chunk
    if chunk < 1 or context < 1:
        raise EdgekitError(f"--static-chunk ({chunk}) and --static-context ({context}) must be at least 1", path)
    if chunk > context:
        raise EdgekitError(f"--static-chunk {chunk} is more than --static-context {context}", path)
    if context > limit:
        raise EdgekitError(f"--static-context {context} is more than the model's {limit} positions", path)
    return StaticShapes(chunk, context)


@dataclass
class StaticGraph:
    """A static-shape target's graph, its one-token step graph (a decoder's, when its chunk is longer than one),
    and what its manifest entry records beyond provider and files."""

    model: onnx.ModelProto
    entry: dict[str, Any]
    step: onnx.ModelProto | None = None


def static_decoder_graph(arch: Architecture, weights: WeightSource, shapes: StaticShapes) -> StaticGraph:
    """The static-shape graphs of `arch` over `weights` (module docstring), with their shapes for the manifest."""
    model, _ = arch.build(weights, builder=StaticGraphBuilder(arch.config, shapes))
    step = None
    if shapes.chunk > 1:
        step, _ = arch.build(weights, builder=StaticGraphBuilder(arch.config, StaticShapes(1, shapes.context)))
    return StaticGraph(model, {"static": shapes.to_dict(), "activations": "float"}, step)


class StaticGraphBuilder(GraphBuilder):
    """GraphBuilder's primitives with static shapes and standard ONNX ops (opset 21: no RMSNormalization)."""

    def __init__(self, config: ModelConfig, shapes: StaticShapes):
        super().__init__(config)
        self.shapes = shapes
        self._rope_rows: dict[str, tuple[str, str]] = {}

    def _const(self, name: str, values: list[int] | int) -> str:
        return self.initializer(name, np.array(values, np.int64))

    def rms_norm(self, x: str, w: np.ndarray, name: str, out: str) -> str:
        """x / sqrt(mean(x²) + eps) · w over the last axis, computed as x / (m · sqrt(mean((x/m)²) + eps/m²)) with
        m = max|x|: the same value, but x² cannot overflow when an NPU runs it in float16 (SmolLM2's residual
        stream reaches 2.4e4, its square 5.6e8; float16 ends at 65504). m is at least 2^-14 (float16's smallest
        normal), so a zero row stays finite."""
        axes = self._const("axes_last", [-1])
        self._node("Abs", [x], [f"{out}.abs"])
        self._node("ReduceMax", [f"{out}.abs", axes], [f"{out}.max"], keepdims=1)
        self.binary("Max", f"{out}.max", self.constant(2.0 ** -14), f"{out}.m")
        self.binary("Div", x, f"{out}.m", f"{out}.scaled")
        self.binary("Mul", f"{out}.scaled", f"{out}.scaled", f"{out}.squares")
        self._node("ReduceMean", [f"{out}.squares", axes], [f"{out}.mean"], keepdims=1)
        self.binary("Mul", f"{out}.m", f"{out}.m", f"{out}.m2")
        self.binary("Div", self.constant(self.config.rms_norm_eps), f"{out}.m2", f"{out}.eps_scaled")
        self.binary("Add", f"{out}.mean", f"{out}.eps_scaled", f"{out}.mean_eps")
        self._node("Sqrt", [f"{out}.mean_eps"], [f"{out}.rms_scaled"])
        self.binary("Div", f"{out}.scaled", f"{out}.rms_scaled", f"{out}.normed")
        return self.binary("Mul", f"{out}.normed", self.initializer(name, w.astype(np.float32)), out)

    def skip_rms_norm(self, x: str, skip: str, w: np.ndarray, name: str, out: str, residual_out: str) -> None:
        self.binary("Add", x, skip, residual_out)
        self.rms_norm(residual_out, w, name, out)

    def embedding(self, w: Weight, ids: str, out: str) -> str:
        """A block-quantized table is dequantized whole, by its own gather op over every row (constant: folded
        once at session creation), then rows are gathered in float: onnxruntime's QNN EP (2.7.0, HTP) reads a
        Gather of packed uint8 codes followed by Cast as all ones. The tied output layer reads the same table."""
        if not isinstance(w, BlockQuantWeight):
            return super().embedding(w, ids, out)
        self._node("Range", [self._const("i64_0", 0), self._const(f"i64_{w.shape[0]}", w.shape[0]),
                             self._const("i64_1", 1)], ["embed.every_row"])
        super().embedding(w, "embed.every_row", "embed.weight")
        self._node("Gather", ["embed.weight", ids], [out], axis=0)
        return out

    def tied_lm_head(self, w: Weight, x: str, out: str) -> str:
        """The float table `embedding` leaves in `embed.weight` (dense or dequantized), read in place."""
        return self.table_head(x, "embed.weight", w.shape[0], out)

    def rope_tables(self, name: str, inv_freq: np.ndarray, length: int) -> tuple[str, str]:
        """Only the first `context` rows: no position reaches past them."""
        return super().rope_tables(name, inv_freq, min(length, self.shapes.context))

    def _rope_rows_at_positions(self, rope: tuple[str, str]) -> tuple[str, str]:
        """cos and sin [1, 1, C, head_dim / 2] at `position_ids` (gathered once per table)."""
        if rope[0] not in self._rope_rows:
            rows = []
            for table in rope:
                self._node("Gather", [table, "position_ids"], [f"{table}.rows"], axis=0)
                self._node("Unsqueeze", [f"{table}.rows", self._const("axes_1", [1])], [f"{table}.at_positions"])
                rows.append(f"{table}.at_positions")
            self._rope_rows[rope[0]] = (rows[0], rows[1])
        return self._rope_rows[rope[0]]

    def _heads(self, x: str, heads: int, out: str) -> str:
        """[1, C, heads · head_dim] -> [1, heads, C, head_dim]."""
        d = self.config.head_dim
        self._node("Reshape", [x, self._const(f"shape_1_{self.shapes.chunk}_{heads}_{d}",
                                              [1, self.shapes.chunk, heads, d])], [f"{out}.split_heads"])
        self._node("Transpose", [f"{out}.split_heads"], [out], perm=[0, 2, 1, 3])
        return out

    def _rotate(self, x: str, cos: str, sin: str, out: str) -> str:
        """Rotary embedding, rotate-half layout (Hugging Face's): [x1·cos - x2·sin, x2·cos + x1·sin]."""
        half = self.config.head_dim // 2
        x1, x2 = self.split(x, [half, half], [f"{out}.x1", f"{out}.x2"])
        self.binary("Mul", x1, cos, f"{out}.x1cos")
        self.binary("Mul", x2, sin, f"{out}.x2sin")
        self.binary("Sub", f"{out}.x1cos", f"{out}.x2sin", f"{out}.first")
        self.binary("Mul", x2, cos, f"{out}.x2cos")
        self.binary("Mul", x1, sin, f"{out}.x1sin")
        self.binary("Add", f"{out}.x2cos", f"{out}.x1sin", f"{out}.second")
        self._node("Concat", [f"{out}.first", f"{out}.second"], [out], axis=-1)
        return out

    def group_query_attention(self, i: int, qkv: list[str], rope: tuple[str, str], out: str, *,
                              window: int | None, scale: float | None) -> str:
        """Grouped-query attention over the cache slots and the chunk, in MatMul, Softmax and reshapes. The query
        heads sharing one key/value head are stacked along the rows ([1, kv_heads, group · C, head_dim]), so the
        keys and values are never repeated."""
        c, (chunk, context) = self.config, (self.shapes.chunk, self.shapes.context)
        if window is not None and window < context:
            raise EdgekitError(f"layer {i} attends over a sliding window of {window} tokens: a static graph needs "
                               f"--static-context {window} or less")
        heads, kv, d = c.heads_of(i), c.kv_heads_of(i), c.head_dim
        group = heads // kv
        p = f"layers.{i}.static_attn"
        if not qkv[1]:
            q_size, kv_size = heads * d, kv * d
            qkv = self.split(qkv[0], [q_size, kv_size, kv_size], [f"{p}.q", f"{p}.k", f"{p}.v"])
        cos, sin = self._rope_rows_at_positions(rope)
        q = self._rotate(self._heads(qkv[0], heads, f"{p}.q_heads"), cos, sin, f"{p}.q_rot")
        self._rotate(self._heads(qkv[1], kv, f"{p}.k_heads"), cos, sin, f"present.{i}.key")
        self._heads(qkv[2], kv, f"present.{i}.value")
        for kind in ("key", "value"):
            self._node("Concat", [f"past_key_values.{i}.{kind}", f"present.{i}.{kind}"], [f"{p}.{kind}s"], axis=2)
        self.scale(q, 1 / math.sqrt(d) if scale is None else scale, f"{p}.q_scaled")
        grouped = self._const(f"shape_1_{kv}_{group * chunk}_{d}", [1, kv, group * chunk, d])
        self._node("Reshape", [f"{p}.q_scaled", grouped], [f"{p}.q_grouped"])
        self._node("Transpose", [f"{p}.keys"], [f"{p}.keys_t"], perm=[0, 1, 3, 2])
        self._node("MatMul", [f"{p}.q_grouped", f"{p}.keys_t"], [f"{p}.scores"])
        width = context + chunk
        self._node("Reshape", [f"{p}.scores", self._const(f"shape_1_{heads}_{chunk}_{width}",
                                                          [1, heads, chunk, width])], [f"{p}.scores_heads"])
        self.binary("Add", f"{p}.scores_heads", "attention_mask", f"{p}.masked")
        self._node("Softmax", [f"{p}.masked"], [f"{p}.probs"], axis=-1)
        self._node("Reshape", [f"{p}.probs", self._const(f"shape_1_{kv}_{group * chunk}_{width}",
                                                         [1, kv, group * chunk, width])], [f"{p}.probs_grouped"])
        self._node("MatMul", [f"{p}.probs_grouped", f"{p}.values"], [f"{p}.context"])
        self._node("Reshape", [f"{p}.context", self._const(f"shape_1_{heads}_{chunk}_{d}",
                                                           [1, heads, chunk, d])], [f"{p}.context_heads"])
        self._node("Transpose", [f"{p}.context_heads"], [f"{p}.context_rows"], perm=[0, 2, 1, 3])
        self._node("Reshape", [f"{p}.context_rows", self._const(f"shape_1_{chunk}_{heads * d}",
                                                                [1, chunk, heads * d])], [out])
        return out

    def logits(self, hidden: str, head: Weight, separate: bool, out: str) -> str:
        """Logits at every position of the chunk (the runtime keeps the real ones)."""
        if separate:
            return self.linear(hidden, "lm_head", head, out)
        return self.tied_lm_head(head, hidden, out)

    def model(self) -> onnx.ModelProto:
        """The graph with the static contract's inputs and outputs (module docstring)."""
        c, (chunk, context) = self.config, (self.shapes.chunk, self.shapes.context)
        f32, i64 = TensorProto.FLOAT, TensorProto.INT64
        inputs = [helper.make_tensor_value_info("input_ids", i64, [1, chunk]),
                  helper.make_tensor_value_info("position_ids", i64, [1, chunk]),
                  helper.make_tensor_value_info("attention_mask", f32, [1, 1, chunk, context + chunk])]
        outputs = [helper.make_tensor_value_info("logits", f32, [1, chunk, c.vocab_size])]
        for i in range(c.num_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32,
                                                            [1, c.kv_heads_of(i), context, c.head_dim]))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32,
                                                             [1, c.kv_heads_of(i), chunk, c.head_dim]))
        return self.assemble("edgekit_static_decoder", inputs, outputs, OPSET_IMPORTS)
