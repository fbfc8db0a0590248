"""The PyTorch reference a package is validated against: transformers on the same source, float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edgekit.exporters.prune.surgery import load_pruned, pruning_record
from edgekit.exporters.sources import resolve_path

from edgekit.errors import EdgekitError


def torch_device(device: str) -> str:
    """'cpu' or 'cuda' for a reference's --device (auto: cuda when torch sees a GPU)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgekitError("--device cuda: torch sees no CUDA GPU on this machine")
    if device not in ("cpu", "cuda"):
        raise EdgekitError(f"unknown reference device {device!r} (cpu, cuda, auto)")
    return device


class TorchReference:
    """transformers' model for SRC (a GGUF is dequantized to float32 by transformers itself)."""

    def __init__(self, src: str, device: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        device = torch_device(device)
        path = resolve_path(src)
        kwargs: dict[str, object] = {"torch_dtype": torch.float32}
        if path.is_file():
            kwargs["gguf_file"] = path.name
            path = path.parent
        elif not (path / "config.json").exists() and len(list(Path(path).glob("*.gguf"))) == 1:
            kwargs["gguf_file"] = next(Path(path).glob("*.gguf")).name
        self.device = device
        self.torch = torch
        if "gguf_file" not in kwargs and pruning_record(path) is not None:  # per-layer shapes (exporters.prune)
            self.model = load_pruned(path).to(device).eval()
        else:
            self.model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs).to(device).eval()

    @classmethod
    def from_model(cls, model: object, device: str = "cpu") -> TorchReference:
        """Wrap a torch model already in memory (for models transformers cannot reload, e.g. pruned ones)."""
        import torch

        ref = cls.__new__(cls)
        ref.device, ref.torch, ref.model = device, torch, model
        return ref

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            x = self.torch.tensor([ids], device=self.device)
            return self.model(x).logits[0].float().cpu().numpy()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        """n greedy tokens with the KV cache, never stopping early (for token-by-token comparison)."""
        torch = self.torch
        out: list[int] = []
        with torch.no_grad():
            res = self.model(torch.tensor([ids], device=self.device), use_cache=True)
            for _ in range(n):
                token = int(res.logits[0, -1].argmax())
                out.append(token)
                res = self.model(torch.tensor([[token]], device=self.device), past_key_values=res.past_key_values,
                                 use_cache=True)
        return out
