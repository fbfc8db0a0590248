"""Read a Hugging Face model folder: config.json, safetensors (or a weights-only torch file), tokenizer files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.exporters.arch import Metadata, architecture_class
from edgekit.exporters.arch.base import LIMITS
from edgekit.exporters.gguf_tokenizer import END_TOKENS
from edgekit.exporters.weights import Weight
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError
from edgekit.jsonfile import read_json_object


class HFSource:
    """A checked Hugging Face folder. Config and tensor shapes are checked before any weight is read; weights
    load lazily, as float32 numpy arrays under canonical names."""

    kind = "hf"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            raise EdgekitError("not a Hugging Face model folder: config.json is missing", self.path)
        self.hf_config: dict[str, Any] = read_json_object(cfg_path)
        self.arch_class = architecture_class(self.hf_config.get("model_type"), cfg_path)
        if self.hf_config.get("mlp_bias"):
            raise EdgekitError("unsupported: MLP biases (mlp_bias=true)", cfg_path)
        meta = Metadata(self.hf_config, cfg_path)
        self._n_layers = meta.require("num_hidden_layers")
        if not 0 < self._n_layers <= LIMITS["num_layers"]:  # before tensor names are mapped for every layer
            raise EdgekitError(f"num_hidden_layers is {self._n_layers}, expected 1 to {LIMITS['num_layers']}", cfg_path)
        self._tensors = self._index_tensors()
        shapes = {name: shape for name, (_, _, shape) in self._tensors.items()}
        self.config = self.arch_class.config_from_hf(meta, shapes)
        if self.config.tie_word_embeddings:
            self._tensors.pop("lm_head", None)
            shapes.pop("lm_head", None)
        self.arch = self.arch_class(self.config)
        self.arch.check_shapes(shapes, self.path)
        pruning = self.hf_config.get("edgekit_pruning")  # how exporters.prune made this folder, for the recipe
        self.pruning: dict[str, Any] | None = pruning if isinstance(pruning, dict) else None

    def _index_tensors(self) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
        """canonical name -> (file, checkpoint name, shape), from the safetensors headers (no weight read)."""
        files = sorted(self.path.glob("*.safetensors"))
        out: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
        if files:
            from safetensors import safe_open

            for f in files:
                try:
                    with safe_open(str(f), framework="pt") as st:
                        entries = [(k, tuple(st.get_slice(k).get_shape())) for k in st.keys()]  # noqa: SIM118 (safe_open has no __iter__)
                except Exception as exc:  # safetensors raises its own error types on damaged headers
                    raise EdgekitError(f"corrupt safetensors file ({exc})", f) from exc
                for key, shape in entries:
                    name = self.arch_class.canonical_from_hf(key, self._n_layers)
                    if name is not None:
                        out[name] = (f, key, shape)
        elif (self.path / "pytorch_model.bin").is_file():
            self._state = self._torch_state(self.path / "pytorch_model.bin")
            for key, value in self._state.items():
                name = self.arch_class.canonical_from_hf(key, self._n_layers)
                if name is not None:
                    out[name] = (self.path / "pytorch_model.bin", key, tuple(value.shape))
        else:
            raise EdgekitError("no weights: expected *.safetensors or pytorch_model.bin", self.path)
        return out

    @staticmethod
    def _torch_state(path: Path) -> dict[str, Any]:
        import torch

        try:  # weights only: a checkpoint is untrusted input and a full pickle could run code
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch's unpickler fails with many types on damaged or refused input
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise EdgekitError(f"refused or damaged torch checkpoint ({first})", path) from exc
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise EdgekitError("torch checkpoint is not a state dict of tensors", path)
        return state

    def has(self, name: str) -> bool:
        return name in self._tensors

    def get(self, name: str) -> Weight:
        if name not in self._tensors:
            raise EdgekitError(f"missing tensor for {name}", self.path)
        file, key, _ = self._tensors[name]
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                # framework="pt": numpy has no bfloat16, torch converts it exactly to float32.
                with safe_open(str(file), framework="pt") as st:
                    w = st.get_tensor(key).float().numpy()
            except Exception as exc:
                raise EdgekitError(f"cannot read tensor {key} ({exc})", file) from exc
        else:
            w = self._state[key].float().numpy()
        return self.arch.from_hf(name, w)


def tokenizer_json(path: Path) -> Tokenizer:
    """The folder's tokenizer.json as it is (its own truncation and padding settings included)."""
    tj = path / "tokenizer.json"
    if not tj.is_file():
        raise EdgekitError("tokenizer.json is missing (edgekit needs a fast tokenizer)", path)
    try:
        return Tokenizer.from_file(str(tj))
    except Exception as exc:  # the tokenizers library raises a bare Exception on malformed files
        raise EdgekitError(f"cannot read the tokenizer ({exc})", tj) from exc


def hf_tokenizer(path: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """The folder's tokenizer.json and the facts the runtime needs (from tokenizer/generation configs)."""
    tok = tokenizer_json(path)
    tcfg = _read_json(path / "tokenizer_config.json")
    gcfg = _read_json(path / "generation_config.json")
    mcfg = _read_json(path / "config.json")
    template = tcfg.get("chat_template")
    if template is None and (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    if template is not None and not isinstance(template, str):  # (lists of named templates are not read)
        raise EdgekitError(f"chat_template is {type(template).__name__}, expected text", path / "tokenizer_config.json")
    n = tok.get_vocab_size(with_added_tokens=True)
    eos = gcfg.get("eos_token_id", mcfg.get("eos_token_id"))
    eos_ids = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    bos_id = gcfg.get("bos_token_id", mcfg.get("bos_token_id"))
    for key, i in [("bos_token_id", bos_id), *(("eos_token_id", e) for e in eos_ids)]:
        if i is not None and not (isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n):
            raise EdgekitError(f"{key} is {i!r}, expected a token id below {n}", path / "generation_config.json")
    vocab = tok.get_vocab()
    info = {
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids[0] if eos_ids else None,
        "add_bos_token": bool(tcfg.get("add_bos_token", False)),
        "stop_token_ids": sorted(set(eos_ids) | {vocab[t] for t in END_TOKENS if t in vocab}),
        "chat_template": template,
        "bos_token": tok.id_to_token(bos_id) if bos_id is not None else None,
        "eos_token": tok.id_to_token(eos_ids[0]) if eos_ids else None,
    }
    return tok, info


def _read_json(p: Path) -> dict[str, Any]:
    return read_json_object(p) if p.is_file() else {}
