"""An architecture: what one decoder family is, in one class.

A class states its checkpoint names (`names`: Hugging Face `model_type` and GGUF `general.architecture`
values; `gguf_arch`: the gguf-py table that maps its checkpoint names), the tensor kinds its layers have,
how its config is read from either source, and how a layer is built from GraphBuilder's primitives.
Subclasses register themselves by name (`__init_subclass__`), so adding an architecture is adding one
module under exporters/arch/. The base class is the llama layout: pre-norm blocks of grouped-query
attention with rotary embeddings and a gated MLP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, ClassVar

import gguf
import numpy as np
import onnx
from edgekit.exporters.arch.names import LINEAR_KINDS, canonical_from_gguf, canonical_from_hf
from edgekit.exporters.graph_builder import GraphBuilder
from edgekit.exporters.rope import inverse_frequencies
from edgekit.exporters.weights import Weight, WeightSource

from edgekit.errors import EdgekitError
from edgekit.formats import BlockQuantWeight
from edgekit.model_config import ModelConfig

ARCHITECTURES: dict[str, type[Architecture]] = {}
# Sizes past these are not a real model of the kind edgekit exports: refuse them before anything is allocated.
LIMITS = {"num_layers": 1024, "hidden_size": 1 << 16, "num_heads": 1024, "num_kv_heads": 1024, "head_dim": 1024,
          "intermediate_size": 1 << 18, "vocab_size": 1 << 22, "max_position_embeddings": 1 << 21}
# Rotary table rows the graph computes; longer declared contexts are capped here (the KV cache never exceeds it).
MAX_ROPE_TABLE = 1 << 17


class Metadata:
    """Typed, checked access to a checkpoint's config (an HF config.json or GGUF metadata under a key prefix)."""

    def __init__(self, values: dict[str, Any], path: str | Path, prefix: str = ""):
        self.values, self.path, self.prefix = values, path, prefix

    def get(self, key: str, kind: Callable[[Any], Any] = int, default: Any = None) -> Any:
        value = self.values.get(self.prefix + key)
        if value is None:  # absent, or null in a config.json
            return default
        if isinstance(value, (list, dict)) and kind in (int, float):
            raise EdgekitError(f"{self.prefix + key} is {_short(value)}, expected a number", self.path)
        if kind is str and not isinstance(value, str):
            raise EdgekitError(f"{self.prefix + key} is {_short(value)}, expected text", self.path)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise EdgekitError(f"{self.prefix + key} is {value!r}, expected an integer", self.path)
        try:
            return kind(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EdgekitError(f"{self.prefix + key} is {_short(value)}, expected {kind.__name__}", self.path) from exc

    def require(self, key: str, kind: Callable[[Any], Any] = int) -> Any:
        value = self.get(key, kind)
        if value is None:
            raise EdgekitError(f"missing config key {self.prefix + key}", self.path)
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Architecture:
    """The llama layout; subclasses override what differs."""

    names: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[gguf.MODEL_ARCH] = gguf.MODEL_ARCH.LLAMA
    layer_kinds: ClassVar[frozenset[str]] = frozenset(
        {*LINEAR_KINDS, "q_bias", "k_bias", "v_bias", "attn_norm", "mlp_norm"})
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    activation: ClassVar[str] = "silu"
    default_sliding_window: ClassVar[bool] = False  # whether `sliding_window` applies without use_sliding_window

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for name in cls.names:
            ARCHITECTURES[name] = cls

    def __init__(self, config: ModelConfig):
        self.config = config

    # -- names ----------------------------------------------------------------------------------------
    @classmethod
    def canonical_from_gguf(cls, name: str) -> str | None:
        return canonical_from_gguf(name, cls.layer_kinds)

    @classmethod
    def canonical_from_hf(cls, name: str, n_layers: int) -> str | None:
        return canonical_from_hf(name, cls.gguf_arch, n_layers, cls.layer_kinds)

    # -- config ---------------------------------------------------------------------------------------------
    @classmethod
    def config_from_hf(cls, cfg: Metadata, shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
        """From config.json and the canonical weights' shapes (per-layer MLP widths of pruned models)."""
        arch = cfg.require("model_type", str)
        layers, heads = cfg.require("num_hidden_layers"), cfg.require("num_attention_heads")
        widths = tuple(shapes[f"layers.{i}.gate"][0] for i in range(layers) if f"layers.{i}.gate" in shapes)
        hidden = cfg.require("hidden_size")
        head_dim = cfg.get("head_dim") or (hidden // heads if heads else 0)
        q_heads, kv_heads = (_heads_per_layer(shapes, layers, kind, head_dim) for kind in ("q", "k"))
        sliding = cfg.values.get("use_sliding_window", cls.default_sliding_window)
        return cls.make_config(
            cfg, architecture=arch, num_layers=layers, hidden_size=hidden, num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            intermediate_size=cfg.require("intermediate_size"), vocab_size=cfg.require("vocab_size"),
            rope_theta=cfg.get("rope_theta", float, 10000.0), rms_norm_eps=cfg.get("rms_norm_eps", float, 1e-6),
            max_position_embeddings=cfg.get("max_position_embeddings", int, 2048),
            tie_word_embeddings=bool(cfg.values.get("tie_word_embeddings", False)) or "lm_head" not in shapes,
            attention_bias="layers.0.q_bias" in shapes,
            sliding_window=cfg.get("sliding_window") if sliding else None,
            rope_scaling=cfg.values.get("rope_scaling"),
            layer_intermediate_sizes=_per_layer(widths, cfg.require("intermediate_size")),
            layer_num_heads=_per_layer(q_heads, heads),
            layer_num_kv_heads=_per_layer(kv_heads, cfg.get("num_key_value_heads") or heads),
        )

    @classmethod
    def config_from_gguf(cls, meta: Metadata, shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
        """From GGUF metadata (`meta` reads keys under `{arch}.`) and the canonical tensors' shapes ([N, K])."""
        hidden, heads = meta.require("embedding_length"), meta.require("attention.head_count")
        return cls.make_config(
            meta, architecture=meta.prefix.rstrip("."), num_layers=meta.require("block_count"), hidden_size=hidden,
            num_heads=heads, num_kv_heads=meta.get("attention.head_count_kv", int, heads),
            head_dim=meta.get("attention.key_length", int, hidden // heads if heads else 0),
            intermediate_size=meta.require("feed_forward_length"),
            vocab_size=meta.get("vocab_size") or (shapes["embed"][0] if "embed" in shapes else 0),
            rope_theta=meta.get("rope.freq_base", float, 10000.0),
            rms_norm_eps=meta.require("attention.layer_norm_rms_epsilon", float),
            max_position_embeddings=meta.require("context_length"),
            tie_word_embeddings="lm_head" not in shapes, attention_bias="layers.0.q_bias" in shapes,
            sliding_window=meta.get("attention.sliding_window"),
        )

    @classmethod
    def make_config(cls, meta: Metadata, **values: Any) -> ModelConfig:
        """The config, its sizes checked against each other and sane limits (one line naming the file)."""
        config = cls.config_class(**{f.name: values[f.name] for f in fields(cls.config_class) if f.name in values})
        for name, limit in LIMITS.items():
            value = getattr(config, name)
            if not 0 < value <= limit:
                raise EdgekitError(f"{name} is {value}, expected 1 to {limit}", meta.path)
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(config, name)
            if not (math.isfinite(value) and value >= 0 and (value > 0 or name == "rms_norm_eps")):
                raise EdgekitError(f"{name} is {value}, expected a finite positive number", meta.path)
        if config.sliding_window is not None and not 0 < config.sliding_window < 1 << 31:
            raise EdgekitError(f"sliding_window is {config.sliding_window}, expected 1 to {(1 << 31) - 1}", meta.path)
        if config.rope_scaling is not None:
            try:  # computed here once so a bad rope_scaling fails before any weight is read
                inverse_frequencies(config)
            except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError, EdgekitError) as exc:
                detail = exc.args[0] if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {exc}"
                raise EdgekitError(f"rope_scaling {_short(config.rope_scaling)} cannot be applied ({detail})",
                                   meta.path) from exc
        if config.max_position_embeddings > MAX_ROPE_TABLE:
            config = replace(config, max_position_embeddings=MAX_ROPE_TABLE)
        for i in range(config.num_layers):
            heads, kv = config.heads_of(i), config.kv_heads_of(i)
            if not (0 < heads <= LIMITS["num_heads"] and 0 < kv <= LIMITS["num_kv_heads"]) or heads % kv:
                where = f"layer {i}: " if config.layer_num_heads or config.layer_num_kv_heads else ""
                raise EdgekitError(f"{where}{heads} attention heads do not divide into {kv} key/value heads",
                                   meta.path)
        return config

    def check_shapes(self, shapes: dict[str, tuple[int, ...]], path: str | Path) -> None:
        """Every tensor the graph reads is present with the shape the config implies (before any weight is read)."""
        for name, shape in self.expected_shapes().items():
            if name not in shapes:
                raise EdgekitError(f"missing tensor for {name}", path)
            if tuple(shapes[name]) != shape:
                raise EdgekitError(f"tensor {name} has shape {list(shapes[name])}, the config implies {list(shape)}",
                                   path)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        out = {"embed": (c.vocab_size, c.hidden_size), "norm": (c.hidden_size,)}
        if not c.tie_word_embeddings:
            out["lm_head"] = (c.vocab_size, c.hidden_size)
        for i in range(c.num_layers):
            p, width = f"layers.{i}", c.intermediate_size_of(i)
            q, kv = c.heads_of(i) * c.head_dim, c.kv_heads_of(i) * c.head_dim
            out.update({f"{p}.q": (q, c.hidden_size), f"{p}.k": (kv, c.hidden_size), f"{p}.v": (kv, c.hidden_size),
                        f"{p}.o": (c.hidden_size, q), f"{p}.gate": (width, c.hidden_size),
                        f"{p}.up": (width, c.hidden_size), f"{p}.down": (c.hidden_size, width),
                        f"{p}.attn_norm": (c.hidden_size,), f"{p}.mlp_norm": (c.hidden_size,)})
            out.update({f"{p}.{kind}": (size,) for kind, size in
                        (("q_norm", c.head_dim), ("k_norm", c.head_dim), ("post_attn_norm", c.hidden_size),
                         ("post_mlp_norm", c.hidden_size)) if kind in self.layer_kinds})
        return out

    # -- weights as the sources store them ------------------------------------------------------------------
    def from_gguf(self, name: str, w: Weight) -> Weight:
        """A GGUF tensor in Hugging Face's convention (llama.cpp permutes llama's q/k rows)."""
        return w

    def from_hf(self, name: str, w: np.ndarray) -> np.ndarray:
        """A Hugging Face tensor in the convention the graph uses (norm weights as multipliers)."""
        return w

    # -- graph ----------------------------------------------------------------------------------------------
    def build(self, weights: WeightSource, layers: Iterable[int] | None = None,
              builder: GraphBuilder | None = None) -> tuple[onnx.ModelProto, set[str]]:
        """The decoder graph with the causal-LM contract (exporters.graph_builder) and the edgekit ops it uses;
        `builder` gives the primitives another contract (exporters.static_graph: static shapes, standard ops)."""
        c = self.config
        g = builder or GraphBuilder(c)
        self.ropes = self.rope_tables(g)
        table = weights.get("embed")  # read once: a tied output layer is the same table
        hidden = self.embed(g, table)
        residual: str | None = None
        for i in layers if layers is not None else range(c.num_layers):
            hidden, residual = self.layer(g, i, hidden, residual, weights)
        final, _ = g.add_rms_norm(hidden, residual, weights.get("norm"), "norm")  # type: ignore[arg-type]
        self.output(g, final, weights.get("lm_head") if weights.has("lm_head") else table)
        return g.model(), g.edgekit_ops

    def rope_tables(self, g: GraphBuilder) -> dict[str, tuple[str, str]]:
        """Named rotary tables (cos, sin initializers) the layers use: one, `global`, here."""
        c = self.config
        return {"global": g.rope_tables("rope", inverse_frequencies(c), c.max_position_embeddings)}

    def embed(self, g: GraphBuilder, table: Weight) -> str:
        return g.embedding(table, "input_ids", "embeddings")

    def output(self, g: GraphBuilder, hidden: str, head: Weight) -> str:
        """Logits from the final hidden states; `head` is the output layer's weight (the embedding when tied)."""
        return g.logits(hidden, head, not self.config.tie_word_embeddings, "logits")

    def layer(self, g: GraphBuilder, i: int, hidden: str, residual: str | None,
              weights: WeightSource) -> tuple[str, str]:
        """One pre-norm block: (its output, the residual stream before that output is added)."""
        p = f"layers.{i}"
        x, residual = g.add_rms_norm(hidden, residual, weights.get(f"{p}.attn_norm"), f"{p}.attn_norm")  # type: ignore[arg-type]
        attn = self.attention(g, i, x, weights)
        x, residual = g.add_rms_norm(attn, residual, weights.get(f"{p}.mlp_norm"), f"{p}.mlp_norm")  # type: ignore[arg-type]
        return self.mlp(g, i, x, weights), residual

    def layer_window(self, i: int) -> int | None:
        """Layer i's sliding attention window (None: full attention)."""
        return self.config.sliding_window

    def layer_rope(self, i: int) -> tuple[str, str]:
        return self.ropes["global"]

    def attention_scale(self) -> float | None:
        """Softmax scale of the attention scores (None: 1/sqrt(head_dim))."""
        return None

    def attention(self, g: GraphBuilder, i: int, x: str, weights: WeightSource) -> str:
        """Projections (q, k, v fused into one node when they share a format), optional biases and per-head
        QK-norm, GroupQueryAttention, output projection."""
        c, p = self.config, f"layers.{i}"
        q, k, v = (weights.get(f"{p}.{n}") for n in "qkv")
        fused = _fuse([q, k, v])
        biases = [f"{p}.{n}_bias" for n in "qkv"]
        bias = [np.asarray(weights.get(b), np.float32) for b in biases] if all(weights.has(b) for b in biases) else None
        if fused is not None:
            proj = [g.linear(x, f"{p}.qkv", fused, f"{p}.qkv_out")]
            if bias is not None:
                proj = [g.binary("Add", proj[0], g.initializer(f"{p}.qkv_bias", np.concatenate(bias)),
                                 f"{p}.qkv_biased")]
        else:
            proj = [g.linear(x, f"{p}.{n}", w, f"{p}.{n}_out") for n, w in zip("qkv", (q, k, v))]
            if bias is not None:
                proj = [g.binary("Add", y, g.initializer(b, a), f"{y}_b") for y, b, a in zip(proj, biases, bias)]
        if weights.has(f"{p}.q_norm"):
            if len(proj) == 1:
                sizes = [c.heads_of(i) * c.head_dim, c.kv_heads_of(i) * c.head_dim, c.kv_heads_of(i) * c.head_dim]
                proj = g.split(proj[0], sizes, [f"{p}.q_proj", f"{p}.k_proj", f"{p}.v_proj"])
            proj = [g.head_rms_norm(proj[0], weights.get(f"{p}.q_norm"), c.head_dim, f"{p}.q_norm"),  # type: ignore[arg-type]
                    g.head_rms_norm(proj[1], weights.get(f"{p}.k_norm"), c.head_dim, f"{p}.k_norm"),  # type: ignore[arg-type]
                    proj[2]]
        qkv = proj if len(proj) == 3 else [proj[0], "", ""]
        attn = g.group_query_attention(i, qkv, self.layer_rope(i), f"{p}.attn", window=self.layer_window(i),
                                       scale=self.attention_scale())
        return g.linear(attn, f"{p}.o", weights.get(f"{p}.o"), f"{p}.attn_out")

    def mlp(self, g: GraphBuilder, i: int, x: str, weights: WeightSource) -> str:
        """down(act(gate(x)) · up(x)), gate and up fused into one node when they share a format."""
        p = f"layers.{i}"
        gate, up = weights.get(f"{p}.gate"), weights.get(f"{p}.up")
        fused = _fuse([gate, up])
        if fused is not None:
            g.linear(x, f"{p}.gate_up", fused, f"{p}.gate_up_out")
            g.split(f"{p}.gate_up_out", [gate.shape[0], up.shape[0]], [f"{p}.gate_out", f"{p}.up_out"])
        else:
            g.linear(x, f"{p}.gate", gate, f"{p}.gate_out")
            g.linear(x, f"{p}.up", up, f"{p}.up_out")
        g.activation(self.activation, f"{p}.gate_out", f"{p}.gate_act")
        g.binary("Mul", f"{p}.gate_act", f"{p}.up_out", f"{p}.act")
        return g.linear(f"{p}.act", f"{p}.down", weights.get(f"{p}.down"), f"{p}.mlp_out")


def _fuse(parts: list[Weight]) -> Weight | None:
    """The weights stacked along N when all are dense or all share one format (Q4_0 beside Q4_1 has the same bits
    and blocks but another zero point: not fused); else None."""
    if all(isinstance(w, np.ndarray) for w in parts):
        return np.concatenate(parts)  # type: ignore[arg-type]
    if all(isinstance(w, BlockQuantWeight) for w in parts) and \
            len({w.source_format for w in parts}) == 1:  # type: ignore[union-attr]
        return BlockQuantWeight.concat_rows(parts)  # type: ignore[arg-type]
    return None


def _per_layer(values: tuple[int, ...], everywhere: int) -> tuple[int, ...] | None:
    """Per-layer sizes, or None when every layer has the config's own value (pruned folders may keep the source's
    sizes in config.json while every layer shrank alike)."""
    return None if set(values) <= {everywhere} else values


def _heads_per_layer(shapes: dict[str, tuple[int, ...]], layers: int, kind: str, head_dim: int) -> tuple[int, ...]:
    """Heads of each layer's `kind` (q or k) projection from its rows (pruned models differ per layer); a shape that
    is no whole number of heads is left for check_shapes to name."""
    rows = [shapes[f"layers.{i}.{kind}"][0] for i in range(layers) if f"layers.{i}.{kind}" in shapes]
    if len(rows) != layers or not head_dim or any(r % head_dim for r in rows):
        return ()
    return tuple(r // head_dim for r in rows)


def architecture_class(name: Any, path: str | Path) -> type[Architecture]:
    """The class for a `model_type` / `general.architecture` value, or one line naming what is supported."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise EdgekitError(f"unsupported architecture {name!r} (supported: {', '.join(sorted(ARCHITECTURES))})", path)
    return ARCHITECTURES[name]
