"""Seeded mutation fuzzing of edgekit's three input boundaries: GGUF files, Hugging Face folders, packages.

One module serves the suite (tests/test_fuzz.py: a few hundred cases per parser) and long runs
(benchmarks/fuzz.py: a worker pool with memory and time limits). A case is (parser, seed): the seed alone
decides the mutation, so any finding replays with `run_case(parser, seed, bases, workdir)`.

Outcome classes: `clean` (one-line EdgekitError), `ok` (accepted; an accepted export must also load and
generate 2 tokens), `other` (any other exception: a traceback for the user), `partial` (an export failed and
left its output or temporary folder behind), `hang` (past the per-case time limit).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import struct
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

PARSERS = ("gguf", "hf", "package")
CLEAN, OK, OTHER, PARTIAL, HANG = "clean", "ok", "other", "partial", "hang"

# The small model every case mutates: one layer, 32 wide, a 270-token byte-level BPE vocabulary.
SMALL = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
         "num_key_value_heads": 1, "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
WORD_MERGES = ("Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# -- the small model ---------------------------------------------------------------------------------------
def small_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): the 256 byte symbols, a few merges, three control tokens."""
    from tokenizers import pre_tokenizers

    tokens = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = list(WORD_MERGES)
    tokens += ["".join(m.split(" ")) for m in merges]
    types = [1] * len(tokens) + [3] * len(SPECIALS)
    return tokens + list(SPECIALS), types, merges


def small_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face names -> float32 weights of the small model (tied embeddings)."""
    rng = np.random.default_rng(seed)
    c, vocab = SMALL, len(small_vocab()[0])
    h, f = c["hidden_size"], c["intermediate_size"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.08, shape).astype(np.float32)

    out = {"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": np.ones(h, np.float32)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv, h),
                    p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, h),
                    p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
                    p + "mlp.down_proj.weight": w(h, f), p + "input_layernorm.weight": np.ones(h, np.float32),
                    p + "post_attention_layernorm.weight": np.ones(h, np.float32)})
    return out


def small_gguf_writer(path: Path) -> Any:
    """A GGUFWriter holding the small model (Q8_0 embedding, Q4_1 projections, F32 norms), not yet written:
    callers mutate `kv_data[0]` and `tensors[0]` before write_gguf."""
    import gguf
    from factories import _add_hparams, gguf_raw

    tokens, types, merges = small_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    _add_hparams(w, SMALL)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(SPECIALS[0]))
    w.add_eos_token_id(tokens.index(SPECIALS[2]))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    qtype = gguf.GGMLQuantizationType
    names = {"model.embed_tokens.weight": ("token_embd.weight", "Q8_0"), "model.norm.weight": ("output_norm.weight", "F32")}
    for i in range(SMALL["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        names.update({p + "input_layernorm.weight": (b + "attn_norm.weight", "F32"),
                      p + "post_attention_layernorm.weight": (b + "ffn_norm.weight", "F32")})
        for hf, gg in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                       ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                       ("mlp.down_proj", "ffn_down")):
            names[p + hf + ".weight"] = (b + gg + ".weight", "Q4_1")
    for hf_name, arr in small_weights().items():
        name, kind = names[hf_name]
        if kind == "F32":
            w.add_tensor(name, arr)
        else:  # q/k rows stay in HF order: random weights, so llama.cpp's permutation changes nothing tested
            w.add_tensor(name, gguf_raw(arr, kind, rng), raw_dtype=qtype[kind])
    return w


def write_gguf(w: Any) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def small_gguf(path: Path) -> Path:
    write_gguf(small_gguf_writer(path))
    return path


def small_tokenizer_json(folder: Path) -> None:
    """tokenizer.json and the configs hf_tokenizer reads, from the small vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens, _, merges = small_vocab()
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                               merges=[tuple(m.split(" ")) for m in merges], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE, "add_bos_token": False}))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": tokens.index(SPECIALS[0]),
                                                               "eos_token_id": tokens.index(SPECIALS[2])}))


def small_hf(folder: Path) -> Path:
    """The small model as a Hugging Face folder: config.json, model.safetensors, tokenizer files."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tokens = small_vocab()[0]
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": len(tokens),
              "tie_word_embeddings": True, "hidden_act": "silu", **SMALL}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(small_weights(), str(folder / "model.safetensors"))
    small_tokenizer_json(folder)
    return folder


@dataclass
class Bases:
    """The pristine inputs every case starts from, built once per process."""

    gguf: Path
    hf: Path
    package: Path

    @classmethod
    def build(cls, folder: Path) -> Bases:
        from edgekit.exporters.pipeline import export

        folder.mkdir(parents=True, exist_ok=True)
        gguf_path = small_gguf(folder / "small.gguf")
        export(str(gguf_path), folder / "small_pkg")
        return cls(gguf_path, small_hf(folder / "small_hf"), folder / "small_pkg")


# -- outcomes ----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str
    detail: str = ""


class CaseTimeout(BaseException):
    """Raised by the per-case alarm (a BaseException: no `except Exception` in edgekit may swallow it)."""


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return f" at {Path(last.filename).name}:{last.lineno}" if last else ""


def classify(work: Callable[[], None]) -> Outcome:
    try:
        work()
    except EdgekitError as exc:
        message = str(exc)
        if "\n" in message.strip() or not message.strip():
            return Outcome(OTHER, f"EdgekitError of {len(message.splitlines())} lines: {message[:300]!r}")
        return Outcome(CLEAN, message[:300])
    except CaseTimeout:
        return Outcome(HANG, "")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 (what the fuzzer looks for: anything that is not EdgekitError)
        return Outcome(OTHER, f"{type(exc).__name__}: {str(exc)[:300]}{_where(exc)}")
    return Outcome(OK)


def with_alarm(seconds: float, work: Callable[[], Outcome]) -> Outcome:
    """work() under a wall-clock alarm (main thread only) that raises CaseTimeout."""

    def fire(signum: int, frame: object) -> None:
        raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return work()
    except CaseTimeout:
        return Outcome(HANG, f"past {seconds:g} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- interesting values ------------------------------------------------------------------------------------
INTS = (0, 1, -1, 2, 3, 7, 31, 32, 33, 255, 256, 1 << 15, 65535, 1 << 20, (1 << 31) - 1, 1 << 31, (1 << 32) - 1,
        1 << 32, 1 << 40, (1 << 62), (1 << 63) - 1, -(1 << 63), -(1 << 31))
FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), float("-inf"), 1e-45)
STRINGS = ("", "llama", "gpt2", "64", "-1", "nan", "\x00", "é" * 3, "x" * 300, "{{", "a b", "<|im_end|>",
           "mistral", "qwen2", "falcon", "smollm", "default", "llama3")


def _u(width: int, rng: random.Random, current: int = 0, file_size: int = 0) -> int:
    """An interesting unsigned value of `width` bytes."""
    top = (1 << (8 * width)) - 1
    picks = [0, 1, 2, 3, 4, 7, 8, 255, 256, 0x7FFF, 0xFFFF, 1 << 31, top, top - 1, top >> 1, current + 1,
             max(current - 1, 0), current * 2, file_size, file_size + 1, 1 << 40, 1 << 62, rng.getrandbits(8 * width)]
    return rng.choice(picks) & top


# -- GGUF cases --------------------------------------------------------------------------------------------
def _gguf_value(rng: random.Random) -> tuple[Any, Any, Any]:
    """(value, GGUFValueType, array subtype) of a random type and interesting value."""
    from gguf import GGUFValueType as T

    kind = rng.choice(("int", "int", "uint", "float", "float", "str", "bool", "array_int", "array_str",
                       "array_float", "array_one"))
    if kind == "int":
        v = rng.choice(INTS)
        t = T.INT64 if not -(1 << 31) <= v < (1 << 31) else rng.choice((T.INT32, T.INT64))
        return v, t, None
    if kind == "uint":
        v = abs(rng.choice(INTS)) % (1 << 64)
        t = T.UINT64 if v >= (1 << 32) else rng.choice((T.UINT32, T.UINT64, T.UINT8 if v < 256 else T.UINT32))
        return v, t, None
    if kind == "float":
        return rng.choice(FLOATS), rng.choice((T.FLOAT32, T.FLOAT64)), None
    if kind == "str":
        return rng.choice(STRINGS), T.STRING, None
    if kind == "bool":
        return rng.random() < 0.5, T.BOOL, None
    if kind == "array_int":
        return [rng.choice(INTS[:12]) for _ in range(rng.randint(1, 5))], T.ARRAY, T.INT32
    if kind == "array_float":
        return [rng.choice(FLOATS) for _ in range(rng.randint(1, 5))], T.ARRAY, T.FLOAT32
    if kind == "array_str":
        return [rng.choice(STRINGS) for _ in range(rng.randint(1, 5))], T.ARRAY, T.STRING
    return [rng.choice(INTS[:8])], T.ARRAY, rng.choice((T.UINT8, T.INT64))  # gguf-py writes no empty array


def mutate_gguf_writer(w: Any, rng: random.Random) -> str:
    """One structural mutation of the writer's metadata or tensor table; returns what it did."""
    import gguf

    kv, tensors = w.kv_data[0], w.tensors[0]
    what = rng.choice(("kv_value", "kv_value", "kv_value", "kv_drop", "kv_add", "tok_array", "t_shape", "t_shape",
                       "t_type", "t_drop", "t_extra", "t_rename"))
    if what == "kv_value":
        key = rng.choice(list(kv))
        value, vtype, sub = _gguf_value(rng)
        kv[key] = gguf.GGUFValue(value=value, type=vtype, sub_type=sub)
        return f"{key} = {value!r} ({vtype.name})"
    if what == "kv_drop":
        key = rng.choice(list(kv))
        del kv[key]
        return f"drop {key}"
    if what == "kv_add":
        key = rng.choice(("llama.attention.key_length", "llama.attention.sliding_window", "llama.vocab_size",
                          "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_eos_token", "general.alignment",
                          "tokenizer.ggml.scores", "tokenizer.ggml.add_space_prefix", "llama.rope.scaling.type"))
        value, vtype, sub = _gguf_value(rng)
        kv[key] = gguf.GGUFValue(value=value, type=vtype, sub_type=sub)
        return f"add {key} = {value!r} ({vtype.name})"
    if what == "tok_array":
        key = rng.choice(("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"))
        if key not in kv or not isinstance(kv[key].value, list):
            return f"{key} left (not an array now)"
        old = list(kv[key].value)
        op = rng.choice(("cut", "dup", "swap", "junk"))
        if op == "cut":
            old = old[: rng.randint(1, len(old))]
        elif op == "dup" and old:
            old.insert(rng.randrange(len(old)), rng.choice(old))
        elif op == "swap" and old:
            i = rng.randrange(len(old))
            old[i] = rng.choice(STRINGS) if isinstance(old[i], str) else rng.choice((-1, 0, 2, 5, 7, 1 << 30))
        else:
            old = [rng.choice(STRINGS) for _ in range(rng.randint(1, 4))]
        sub = gguf.GGUFValueType.STRING if key != "tokenizer.ggml.token_type" else gguf.GGUFValueType.INT32
        if any(not isinstance(x, str) for x in old):
            sub = gguf.GGUFValueType.INT32 if all(isinstance(x, int) for x in old) else gguf.GGUFValueType.STRING
            old = old if sub == gguf.GGUFValueType.INT32 else [str(x) for x in old]
        kv[key] = gguf.GGUFValue(value=old, type=gguf.GGUFValueType.ARRAY, sub_type=sub)
        return f"{key} {op} -> {len(old)} entries"
    if not tensors:
        return "no tensor left"
    name = rng.choice(list(tensors))
    info = tensors[name]
    if what == "t_shape":
        shape = list(info.shape)
        op = rng.choice(("swap", "double", "half", "zero", "huge", "add_dim", "drop_dim", "one"))
        if op == "swap":
            shape.reverse()
        elif op == "add_dim":
            shape.append(rng.choice((1, 2, 1 << 20)))
        elif op == "drop_dim" and len(shape) > 1:
            shape.pop()
        else:
            i = rng.randrange(len(shape))
            shape[i] = {"double": shape[i] * 2, "half": max(shape[i] // 2, 1), "zero": 0, "huge": 1 << 40,
                        "one": 1}.get(op, shape[i])
        info.shape = shape
        return f"{name} shape {op} -> {shape}"
    if what == "t_type":
        info.dtype = rng.choice(list(gguf.GGMLQuantizationType))
        return f"{name} type -> {info.dtype.name}"
    if what == "t_drop":
        del tensors[name]
        return f"drop tensor {name}"
    if what == "t_extra":
        extra = rng.choice(("rope_freqs.weight", "blk.1.attn_q.weight", "output.weight", "blk.0.attn_q.bias",
                            "blk.0.attn_q_norm.weight"))
        if extra not in tensors:
            w.add_tensor(extra, np.ones(rng.choice((32, 16, 64)), np.float32))
        return f"extra tensor {extra}"
    new = rng.choice(("blk.7.attn_q.weight", "blk.0.unknown.weight", "token_embd.weight", "output.weight",
                      "blk.-1.attn_q.weight", "blk.99999999999999999999.ffn_up.weight"))
    if new not in tensors:
        tensors[new] = tensors.pop(name)
    return f"rename {name} -> {new}"


def gguf_slots(path: Path) -> list[tuple[str, int, int]]:
    """(what, byte offset, width) of every numeric part of a GGUF's header, metadata and tensor table: the
    places a byte-level mutation means something (lengths, types, counts, dimensions, offsets)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    base = _address(reader.data)
    slots = [("magic", 0, 4)]
    for name, field in reader.fields.items():
        for i, part in enumerate(field.parts[:8]):
            if part.dtype.kind in "uif" and part.size == 1:
                slots.append((f"{name}[{i}]", _address(part) - base, part.itemsize))
    for t in reader.tensors:
        for i, part in enumerate(t.field.parts):
            if part.dtype.kind in "uif":
                for j in range(part.size):
                    slots.append((f"tensor {t.name}[{i}.{j}]", _address(part) - base + j * part.itemsize,
                                  part.itemsize))
    return slots


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def mutate_gguf_bytes(data: bytearray, slots: list[tuple[str, int, int]], rng: random.Random) -> str:
    """One byte-level mutation: an interesting value in a slot, random flips, or truncation."""
    what = rng.choice(("slot", "slot", "slot", "header", "flip", "truncate"))
    if what in ("slot", "header"):
        pool = slots[:4] if what == "header" else slots
        name, at, width = rng.choice(pool)
        if at + width > len(data):
            return "slot past end"
        current = int.from_bytes(data[at:at + width], "little")
        value = _u(width, rng, current, len(data)) if name != "magic" else rng.choice(
            (0, 0x46554747 ^ 1, int.from_bytes(b"GGML", "little"), int.from_bytes(b"GGUF", "big")))
        data[at:at + width] = value.to_bytes(width, "little")
        return f"{name} = {value}"
    if what == "flip":
        header_end = max(at for _, at, _ in slots) + 16
        n = rng.randint(1, 8)
        for _ in range(n):
            data[rng.randrange(min(header_end, len(data)))] ^= 1 << rng.randrange(8)
        return f"{n} bit flips in the header/metadata/tensor table"
    cut = rng.randrange(len(data))
    del data[cut:]
    return f"truncate at {cut}"


def make_gguf_case(bases: Bases, seed: int, workdir: Path, slots: list[tuple[str, int, int]]) -> tuple[Path, str]:
    rng = random.Random(seed)
    path = workdir / "case.gguf"
    if rng.random() < 0.5:
        w = small_gguf_writer(path)
        what = "; ".join(mutate_gguf_writer(w, rng) for _ in range(rng.choice((1, 1, 1, 2, 3))))
        try:
            write_gguf(w)
            return path, what
        except (ValueError, struct.error, OverflowError):  # gguf-py refuses to write it: mutate bytes instead
            w.close()
    data = bytearray(bases.gguf.read_bytes())
    what = "; ".join(mutate_gguf_bytes(data, slots, rng) for _ in range(rng.choice((1, 1, 2))))
    path.write_bytes(bytes(data))
    return path, what


# -- Hugging Face folder cases ---------------------------------------------------------------------------
def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(("int", "int", "float", "str", "bool", "null", "list", "dict"))
    if kind == "int":
        return rng.choice(INTS + (10 ** 30, -(10 ** 30)))
    if kind == "float":
        return rng.choice(FLOATS + (1.5, 64.0))
    if kind == "str":
        return rng.choice(STRINGS)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list" or depth > 1:
        return [rng.choice(INTS[:8]) for _ in range(rng.randint(0, 3))]
    return {rng.choice(("type", "rope_type", "factor", "x")): _json_value(rng, depth + 1) for _ in range(2)}


def mutate_json_doc(doc: Any, rng: random.Random, keys: tuple[str, ...] = ()) -> tuple[Any, str]:
    """A JSON document with one key dropped, retyped or added; `keys`: extra keys worth adding."""
    if not isinstance(doc, dict) or not doc:
        return _json_value(rng), "replaced"
    op = rng.choice(("value", "value", "value", "drop", "add", "nested"))
    key = rng.choice(list(doc))
    if op == "drop":
        del doc[key]
        return doc, f"drop {key}"
    if op == "add" and keys:
        key = rng.choice(keys)
    if op == "nested" and isinstance(doc[key], dict) and doc[key]:
        inner, what = mutate_json_doc(doc[key], rng)
        doc[key] = inner
        return doc, f"{key}: {what}"
    doc[key] = _json_value(rng)
    return doc, f"{key} = {doc[key]!r}"


def _dump(doc: Any) -> str:
    return json.dumps(doc, allow_nan=True)


def damage_text(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Non-JSON or odd JSON documents: truncation, byte flips, deep nesting, a top level that is not an object."""
    what = rng.choice(("truncate", "flip", "deep", "top", "empty", "binary"))
    if what == "truncate":
        cut = rng.randrange(len(data) + 1)
        return data[:cut], f"truncate at {cut}"
    if what == "flip":
        raw = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw), "byte flips"
    if what == "deep":
        n = rng.choice((1000, 200_000))
        return ("[" * n + "]" * n).encode() if rng.random() < 0.5 else ('{"a":' * n + "1" + "}" * n).encode(), \
            f"nested {n} deep"
    if what == "top":
        return _dump(rng.choice(([], [1, 2], "text", 3, None, True))).encode(), "top level not an object"
    if what == "empty":
        return b"", "empty"
    return bytes(rng.randrange(256) for _ in range(64)), "random bytes"


def _safetensors_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_safetensors(path: Path, header: dict[str, Any], body: bytes) -> None:
    head = _dump(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + body)


def mutate_safetensors(path: Path, rng: random.Random) -> str:
    header, body = _safetensors_parts(path)
    names = [k for k in header if k != "__metadata__"]
    what = rng.choice(("truncate", "header_len", "flip_header", "drop", "rename", "shape", "dtype", "offsets",
                       "metadata"))
    if what == "truncate":
        raw = path.read_bytes()
        cut = rng.randrange(len(raw))
        path.write_bytes(raw[:cut])
        return f"truncate at {cut}"
    if what == "header_len":
        raw = bytearray(path.read_bytes())
        raw[:8] = struct.pack("<Q", _u(8, rng, struct.unpack("<Q", raw[:8])[0], len(raw)))
        path.write_bytes(bytes(raw))
        return "header length"
    if what == "flip_header":
        raw = bytearray(path.read_bytes())
        n = struct.unpack("<Q", raw[:8])[0]
        for _ in range(rng.randint(1, 4)):
            raw[8 + rng.randrange(n)] = rng.randrange(256)
        path.write_bytes(bytes(raw))
        return "header bytes"
    name = rng.choice(names)
    entry = header[name]
    if what == "drop":
        del header[name]
    elif what == "rename":
        header[rng.choice(("model.layers.5.mlp.up_proj.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.bias",
                           "model.layers.0.mlp.gate_proj.bias"))] = header.pop(name)
    elif what == "shape":
        entry["shape"] = rng.choice(([], [0], [1 << 40], list(reversed(entry["shape"])), entry["shape"] + [1],
                                     [-1, 2], [x * 2 for x in entry["shape"]], ["a"]))
    elif what == "dtype":
        entry["dtype"] = rng.choice(("F16", "BF16", "I8", "F64", "BOOL", "U8", "F8_E4M3", "Q4", "", 3))
    elif what == "offsets":
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(([b, a], [a, b + 4], [0, 1 << 40], [a, a], [-1, b], [a]))
    else:
        header["__metadata__"] = rng.choice(({"format": "pt"}, {"x": 1}, [], "pt"))
    _write_safetensors(path, header, body)
    return f"{what} {name}"


def make_hf_case(bases: Bases, seed: int, workdir: Path) -> tuple[Path, str]:
    rng = random.Random(seed)
    folder = workdir / "hf"
    shutil.copytree(bases.hf, folder)
    what = rng.choice(("config", "config", "config", "config_text", "safetensors", "safetensors", "tokenizer",
                       "aux_config", "torch_bin", "missing"))
    if what == "config":
        doc = json.loads((folder / "config.json").read_text())
        keys = ("head_dim", "rope_scaling", "sliding_window", "use_sliding_window", "mlp_bias", "layer_types",
                "num_key_value_heads", "rope_theta", "max_position_embeddings")
        descr = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            doc, d = mutate_json_doc(doc, rng, keys)
            descr.append(d)
        (folder / "config.json").write_text(_dump(doc))
        return folder, "config.json: " + "; ".join(descr)
    if what == "config_text":
        data, d = damage_text((folder / "config.json").read_bytes(), rng)
        (folder / "config.json").write_bytes(data)
        return folder, f"config.json {d}"
    if what == "safetensors":
        return folder, "model.safetensors " + mutate_safetensors(folder / "model.safetensors", rng)
    if what == "tokenizer":
        data, d = damage_text((folder / "tokenizer.json").read_bytes(), rng)
        (folder / "tokenizer.json").write_bytes(data)
        return folder, f"tokenizer.json {d}"
    if what == "aux_config":
        name = rng.choice(("tokenizer_config.json", "generation_config.json"))
        if rng.random() < 0.5:
            data, d = damage_text((folder / name).read_bytes(), rng)
        else:
            doc, d = mutate_json_doc(json.loads((folder / name).read_text()), rng,
                                     ("eos_token_id", "bos_token_id", "chat_template", "add_bos_token"))
            data = _dump(doc).encode()
        (folder / name).write_bytes(data)
        return folder, f"{name} {d}"
    if what == "torch_bin":
        (folder / "model.safetensors").unlink()
        kind = rng.choice(("pickle_exec", "garbage", "truncated_zip", "empty"))
        (folder / "pytorch_model.bin").write_bytes(_torch_bin(kind, rng))
        return folder, f"pytorch_model.bin {kind}"
    name = rng.choice(("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                       "generation_config.json"))
    (folder / name).unlink()
    return folder, f"no {name}"


class _Exec:
    """A pickle that would run a command when loaded (weights_only loading must refuse it)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("edgekit-fuzz: pickle code ran",))


def _torch_bin(kind: str, rng: random.Random) -> bytes:
    import io
    import pickle

    if kind == "pickle_exec":
        return pickle.dumps({"model.embed_tokens.weight": _Exec()})
    if kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(256))
    if kind == "empty":
        return b""
    import torch

    buf = io.BytesIO()
    torch.save({"model.norm.weight": torch.ones(32)}, buf)
    data = buf.getvalue()
    return data[: rng.randrange(len(data))]


# -- package cases -------------------------------------------------------------------------------------------
def rehash(folder: Path, names: list[str] | None = None) -> None:
    """Update the manifest's size and sha256 of `names` (all listed files when None), as a careful forger would."""
    from edgekit.package import sha256_of

    manifest = json.loads((folder / "manifest.json").read_text())
    for rel in names if names is not None else list(manifest["files"]):
        p = folder / rel
        manifest["files"][rel] = {"size": p.stat().st_size, "sha256": sha256_of(p)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def make_package_case(bases: Bases, seed: int, workdir: Path) -> tuple[Path, str]:
    rng = random.Random(seed)
    folder = workdir / "pkg"
    shutil.copytree(bases.package, folder, symlinks=True)
    mpath = folder / "manifest.json"
    manifest = json.loads(mpath.read_text())
    what = rng.choice(("manifest", "manifest", "manifest", "manifest_text", "paths", "files", "graph_bytes",
                       "tokenizer_bytes", "data_truncate", "model_section", "model_section"))
    if what == "manifest":
        section = rng.choice(("", "graph", "tokenizer", "generation", "files", "recipe", "source"))
        if section and isinstance(manifest.get(section), dict) and rng.random() < 0.8:
            manifest[section], d = mutate_json_doc(manifest[section], rng)
            d = f"{section}: {d}"
        else:
            manifest, d = mutate_json_doc(manifest, rng, ("draft", "format_version"))
        mpath.write_text(_dump(manifest))
        return folder, f"manifest {d}"
    if what == "manifest_text":
        data, d = damage_text(mpath.read_bytes(), rng)
        mpath.write_bytes(data)
        return folder, f"manifest {d}"
    if what == "model_section":
        model = manifest["model"]
        key = rng.choice(list(model))
        model[key] = rng.choice((_json_value(rng), model[key] * 2 if isinstance(model[key], int) else None,
                                 rng.choice((0, 1, 1 << 20, -3, 17))))
        mpath.write_text(_dump(manifest))
        return folder, f"model.{key} = {model[key]!r}"
    if what == "paths":
        target = rng.choice(("../outside.onnx", "/etc/passwd", "link.onnx", "sub/../model.onnx", "", "model.onnx/",
                             "missing.onnx", "draft"))
        if target == "link.onnx":
            outside = workdir / "outside.onnx"
            shutil.copy(folder / "model.onnx", outside)
            (folder / "link.onnx").symlink_to(outside)
            rehash_entry = {"size": outside.stat().st_size}
            from edgekit.package import sha256_of

            rehash_entry["sha256"] = sha256_of(outside)
            manifest["files"]["link.onnx"] = rehash_entry
        where = rng.choice(("graph.file", "tokenizer.file", "graph.targets.cpu.file", "files"))
        if where == "files":
            manifest["files"][target] = {"size": 1, "sha256": "0" * 64}
        else:
            *parents, last = where.split(".")
            node = manifest
            for p in parents:
                node = node[p]
            node[last] = target
        if what == "paths" and rng.random() < 0.3:
            manifest["draft"] = {"folder": rng.choice(("../..", "/tmp", "draft", "")), "layers": 1}
        mpath.write_text(_dump(manifest))
        return folder, f"path {where} = {target!r}"
    if what == "files":
        op = rng.choice(("empty", "entry_type", "entry_keys", "size_type"))
        files = manifest["files"]
        name = rng.choice(list(files))
        if op == "empty":
            manifest["files"] = rng.choice(({}, [], None, "model.onnx"))
        elif op == "entry_type":
            files[name] = rng.choice((None, 3, "x", [1, 2]))
        elif op == "entry_keys":
            files[name] = {k: v for k, v in files[name].items() if k != rng.choice(("size", "sha256"))}
        else:
            files[name]["size"] = rng.choice(("12", -1, 1.5, None, 1 << 70))
        mpath.write_text(_dump(manifest))
        return folder, f"files {op} {name}"
    if what == "graph_bytes":
        name = rng.choice(("model.onnx", *(e["file"] for e in manifest["graph"]["targets"].values())))
        raw = bytearray((folder / name).read_bytes())
        n = rng.choice((1, 4, 32))
        for _ in range(n):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        if rng.random() < 0.2:
            raw = raw[: rng.randrange(len(raw))]
        (folder / name).write_bytes(bytes(raw))
        rehash(folder, [name])
        return folder, f"{name}: {n} bytes changed, hash updated"
    if what == "tokenizer_bytes":
        data, d = damage_text((folder / "tokenizer.json").read_bytes(), rng)
        if rng.random() < 0.3:
            doc = json.loads((folder / "tokenizer.json").read_text())
            doc, d = mutate_json_doc(doc, rng)
            data = _dump(doc).encode()
        (folder / "tokenizer.json").write_bytes(data)
        rehash(folder, ["tokenizer.json"])
        return folder, f"tokenizer.json {d}, hash updated"
    data_file = folder / "model.onnx.data"
    raw = data_file.read_bytes()
    cut = rng.randrange(len(raw))
    data_file.write_bytes(raw[:cut])
    rehash(folder, ["model.onnx.data"])
    return folder, f"model.onnx.data truncated at {cut}, hash updated"


# -- running a case --------------------------------------------------------------------------------------------
def generate_two(pkg: Path, chat: bool = False) -> None:
    """Load the package and generate exactly 2 tokens (no stop tokens)."""
    from edgekit.runtime import GenerationConfig, load

    model = load(pkg, threads=1, spinning=False)
    ids = list(model.generate_ids(model.encode("hi there", chat=chat),
                                  GenerationConfig(max_new_tokens=2, stop_token_ids=())))
    if len(ids) != 2:
        raise AssertionError(f"generated {len(ids)} tokens, expected 2")
    model.codec.decode(ids)


def export_and_check(src: Path, out: Path) -> Outcome:
    """Export; a failure must leave no output and no temporary folder, a success must load and generate."""
    from edgekit.exporters.pipeline import export

    result = classify(lambda: export(str(src), out))
    leftovers = [p.name for p in out.parent.glob(f".{out.name}.partial-*")] + ([out.name] if out.exists() and
                                                                               result.kind != OK else [])
    if leftovers:
        return Outcome(PARTIAL, f"{result.kind} ({result.detail[:120]}) left {leftovers}")
    if result.kind != OK:
        return result
    return classify(lambda: generate_two(out))


def run_gguf(path: Path, workdir: Path, export_it: bool) -> Outcome:
    from edgekit.exporters.gguf_source import GGUFSource
    from edgekit.exporters.gguf_tokenizer import build_tokenizer

    parsed = classify(lambda: build_tokenizer(GGUFSource(path)))
    if parsed.kind != OK or not export_it:
        return parsed
    return export_and_check(path, workdir / "out")


def run_hf(folder: Path, workdir: Path, export_it: bool) -> Outcome:
    from edgekit.exporters.hf_source import HFSource, hf_tokenizer

    def parse() -> None:
        HFSource(folder)
        hf_tokenizer(folder)

    parsed = classify(parse)
    if parsed.kind != OK or not export_it:
        return parsed
    return export_and_check(folder, workdir / "out")


def run_package(folder: Path, chat: bool) -> Outcome:
    return classify(lambda: generate_two(folder, chat))


def run_case(parser: str, seed: int, bases: Bases, workdir: Path, export_every: int = 1,
             slots: list[tuple[str, int, int]] | None = None) -> tuple[Outcome, str]:
    """Build case `seed` of `parser` in the empty folder `workdir` and run it; (outcome, what was mutated).
    Cases that parse are exported when seed % export_every == 0 (exports cost most of a case)."""
    export_it = seed % export_every == 0
    if parser == "gguf":
        path, what = make_gguf_case(bases, seed, workdir, slots if slots is not None else gguf_slots(bases.gguf))
        return run_gguf(path, workdir, export_it), what
    if parser == "hf":
        folder, what = make_hf_case(bases, seed, workdir)
        return run_hf(folder, workdir, export_it), what
    folder, what = make_package_case(bases, seed, workdir)
    return run_package(folder, chat=seed % 4 == 0), what
