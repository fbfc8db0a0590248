"""The PyTorch reference an encoder package is validated against: sentence-transformers' computation in
float32, without sentence-transformers (transformers' AutoModel, the folder's tokenizer.json, the pooling
and normalization that read_sentence_config reads)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from edgekit.exporters.hf_source import tokenizer_json
from edgekit.exporters.reference import torch_device
from edgekit.exporters.sentence_config import read_sentence_config
from edgekit.exporters.sources import resolve_path

from edgekit.errors import EdgekitError


class TorchEncoderReference:
    """Embeddings of a Hugging Face (sentence-transformers) folder, read from local files only.

    The tokenizer is tokenizers' own reading of tokenizer.json, the library and file the runtime tokenizes
    with, so any difference validate reports is numerical; transformers' AutoTokenizer wraps the same file
    and would add nothing but another layer. The file's own truncation and padding settings (often 128
    tokens, fixed) are replaced by max_seq_length and padding to the longest text of a batch.
    """

    def __init__(self, src: str, device: str = "auto"):
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        self.device = torch_device(device)
        path = resolve_path(src)
        if not path.is_dir():
            raise EdgekitError("an encoder reference needs a Hugging Face model folder", path)
        config = read_sentence_config(path)
        self.pooling, self.normalize = config.pooling, config.normalize
        self.max_seq_length, self.dimension = config.max_seq_length, config.dimension
        self.torch = torch
        self.model = AutoModel.from_pretrained(str(path), torch_dtype=torch.float32,
                                               local_files_only=True).to(self.device).eval()
        self.tokenizer = tokenizer_json(path)
        self.tokenizer.enable_truncation(self.max_seq_length)
        pad_id = self.model.config.pad_token_id or 0  # padded positions are masked: any token id serves
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.tokenizer.id_to_token(pad_id) or "")
        self._takes_type_ids = "token_type_ids" in inspect.signature(self.model.forward).parameters

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """[len(texts), dimension] float32: pooled, and L2-normalized when the model normalizes."""
        batches = [self._embed_batch(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        return np.concatenate(batches) if batches else np.zeros((0, self.dimension), np.float32)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        encodings = self.tokenizer.encode_batch(texts)
        inputs = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings]}
        if self._takes_type_ids:
            inputs["token_type_ids"] = [e.type_ids for e in encodings]
        with torch.no_grad():
            tensors = {k: torch.tensor(v, dtype=torch.int64, device=self.device) for k, v in inputs.items()}
            hidden = self.model(**tensors).last_hidden_state
            pooled = pool(hidden, tensors["attention_mask"], self.pooling)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()


def pool(hidden: Any, mask: Any, mode: str) -> Any:
    """[B, T, H] hidden states and a [B, T] 0/1 mask (right-padded) to [B, H] torch tensors, as
    sentence-transformers' Pooling computes mode."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        return (hidden * m).sum(dim=1) / torch.clamp(m.sum(dim=1), min=1e-9)
    if mode == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
    if mode == "lasttoken":
        return hidden[torch.arange(hidden.shape[0]), mask.sum(dim=1) - 1]
    raise EdgekitError(f"pooling mode {mode!r} has no reference")


__all__ = ["TorchEncoderReference", "pool"]
