"""Canonical tensor names, and their GGUF and Hugging Face spellings, borrowed from the `gguf` package.

edgekit names every tensor one way (`embed`, `norm`, `lm_head`, `layers.{i}.{kind}`); the GGUF name of a
kind comes from `gguf.TENSOR_NAMES`, and a Hugging Face (or torch module) name is mapped to its GGUF
name by gguf-py's per-architecture `TensorNameMap`, so no architecture spells checkpoint names again.
"""

from __future__ import annotations

from functools import cache

import gguf

T = gguf.MODEL_TENSOR
# Canonical kind -> (GGUF tensor kind, suffix). Architectures pick the kinds they have (Architecture.layer_kinds).
LAYER_KINDS: dict[str, tuple[gguf.MODEL_TENSOR, str]] = {
    "q": (T.ATTN_Q, "weight"), "k": (T.ATTN_K, "weight"), "v": (T.ATTN_V, "weight"), "o": (T.ATTN_OUT, "weight"),
    "q_bias": (T.ATTN_Q, "bias"), "k_bias": (T.ATTN_K, "bias"), "v_bias": (T.ATTN_V, "bias"),
    "gate": (T.FFN_GATE, "weight"), "up": (T.FFN_UP, "weight"), "down": (T.FFN_DOWN, "weight"),
    "attn_norm": (T.ATTN_NORM, "weight"), "mlp_norm": (T.FFN_NORM, "weight"),
    "q_norm": (T.ATTN_Q_NORM, "weight"), "k_norm": (T.ATTN_K_NORM, "weight"),
    "post_attn_norm": (T.ATTN_POST_NORM, "weight"), "post_mlp_norm": (T.FFN_POST_NORM, "weight"),
}
GLOBAL_KINDS: dict[str, tuple[gguf.MODEL_TENSOR, str]] = {
    "embed": (T.TOKEN_EMBD, "weight"), "lm_head": (T.OUTPUT, "weight"), "norm": (T.OUTPUT_NORM, "weight"),
}
# The linear layers of a decoder block, in the order GPTQ and the manifest list them.
LINEAR_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def gguf_name(canonical: str) -> str:
    """`layers.3.q` -> `blk.3.attn_q.weight`; `embed` -> `token_embd.weight`."""
    if canonical.startswith("layers."):
        _, i, kind = canonical.split(".", 2)
        tensor, suffix = LAYER_KINDS[kind]
        return f"{gguf.TENSOR_NAMES[tensor].format(bid=int(i))}.{suffix}"
    tensor, suffix = GLOBAL_KINDS[canonical]
    return f"{gguf.TENSOR_NAMES[tensor]}.{suffix}"


@cache
def _gguf_to_canonical(kinds: frozenset[str]) -> dict[str, str]:
    """GGUF name pattern (`blk.{bid}.attn_q.weight`) -> canonical kind, for the kinds an architecture has."""
    table = {f"{gguf.TENSOR_NAMES[t]}.{s}": k for k, (t, s) in GLOBAL_KINDS.items()}
    table.update({f"{gguf.TENSOR_NAMES[t]}.{s}": k for k, (t, s) in LAYER_KINDS.items() if k in kinds})
    return table


def canonical_from_gguf(name: str, kinds: frozenset[str]) -> str | None:
    """`blk.3.attn_q.weight` -> `layers.3.q` (None for a tensor edgekit does not use)."""
    table = _gguf_to_canonical(kinds)
    if name in table:
        return table[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        kind = table.get(f"blk.{{bid}}.{parts[2]}")
        if kind is not None:
            return f"layers.{int(parts[1])}.{kind}"
    return None


@cache
def _hf_name_map(arch: gguf.MODEL_ARCH, n_layers: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(arch, n_layers)


def canonical_from_hf(name: str, arch: gguf.MODEL_ARCH, n_layers: int, kinds: frozenset[str]) -> str | None:
    """`model.layers.3.self_attn.q_proj.weight` (a checkpoint or torch parameter name) -> `layers.3.q`."""
    mapped = _hf_name_map(arch, n_layers).get_name(name, try_suffixes=(".weight", ".bias"))
    return None if mapped is None else canonical_from_gguf(mapped, kinds)
