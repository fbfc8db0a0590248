"""Calibration text for data-aware quantization, as token-id windows [n_seq, seq_len].

Without a file, the model writes its own: a few neutral prompts continued by sampling from the torch
model. Its own text exercises the activations it will see in use, needs no dataset download, and
carries no licence question. With `--calib FILE` the file's text is tokenized and cut into windows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edgekit.exporters.quantize.spec import CalibrationConfig
from tokenizers import Tokenizer

from edgekit.errors import EdgekitError
from edgekit.progress import progress

NEUTRAL_PROMPTS = (
    "The history of the city begins",
    "In mathematics, a function is",
    "Once upon a time, in a small village,",
    "The following is a recipe for",
    "Scientists have recently discovered that",
    "def parse_arguments(argv):",
    "Dear customer, thank you for your letter about",
    "The main causes of the war were",
    "A good night's sleep is important because",
    "The weather forecast for tomorrow",
    "Here is a short summary of the book:",
    "To install the package, first",
    "The football match ended",
    "Photosynthesis is the process by which",
    "In the year 1850, the population",
    "My favourite way to spend a weekend is",
)


def file_windows(path: str, tokenizer: Tokenizer, cfg: CalibrationConfig) -> np.ndarray:
    """The file's tokens as int64 [n, L] windows (L = seq_len, or all tokens when fewer; at most max_tokens)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"cannot read the calibration file ({exc})", path) from exc
    return text_windows(text, tokenizer, cfg, path, "calibration file")


def text_windows(text: str, tokenizer: Tokenizer, cfg: CalibrationConfig, where: str, what: str) -> np.ndarray:
    """`text`'s tokens as int64 [n, L] windows (L = seq_len, or all tokens when fewer; at most max_tokens)."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids[: cfg.max_tokens]
    if len(ids) < cfg.min_tokens:
        raise EdgekitError(f"{what} too short: {len(ids)} tokens, need at least {cfg.min_tokens}", where)
    length = min(cfg.seq_len, len(ids))
    n = len(ids) // length
    return np.asarray(ids[: n * length], np.int64).reshape(n, length)


TOP_K = 64  # nucleus sampling among the 64 likeliest tokens: a full-vocabulary sort costs more than the model


def _sample_top_p(logits: object, temperature: float, top_p: float, generator: object) -> object:
    """One token id per row of logits [B, V], [B, 1]: nucleus sampling at `temperature` within the top TOP_K."""
    import torch

    top, order = logits.topk(TOP_K, dim=-1)  # type: ignore[attr-defined]
    probs = torch.softmax(top / temperature, dim=-1)
    probs[probs.cumsum(-1) - probs > top_p] = 0.0  # keep the smallest set reaching top_p
    return order.gather(-1, torch.multinomial(probs, 1, generator=generator))  # type: ignore[arg-type]


def self_generated_windows(model: object, tokenizer: Tokenizer, cfg: CalibrationConfig) -> np.ndarray:
    """int64 [n_prompts, L]: the prompts, cut to a common length, each continued by `new_tokens` tokens sampled
    in one batch (temperature 0.8, top-p 0.95, seeded; special tokens banned, so no text ends early).
    Sampling, not greedy: a small model's greedy text loops."""
    import torch

    generator = torch.Generator().manual_seed(cfg.seed)
    prompts = [NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)] for i in range(cfg.n_prompts)]
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    length = min(len(e) for e in encoded)
    return sampled(model, tokenizer, torch.tensor([e[:length] for e in encoded]), cfg.new_tokens,
                   generator).numpy().astype(np.int64)


def sampled(model: object, tokenizer: Tokenizer, ids: object, new_tokens: int, generator: object) -> object:
    """Token ids [B, L] continued by `new_tokens` tokens each, sampled in one batch (temperature 0.8, top-p 0.95;
    special tokens banned, so no text ends early): [B, L + new_tokens]."""
    import torch

    banned = [i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special]
    tokens = [ids]
    with torch.no_grad():
        out = model(ids, use_cache=True)  # type: ignore[operator]
        for _ in progress(range(new_tokens), "calibration text"):
            logits = out.logits[:, -1].float()
            logits[:, banned] = -float("inf")
            nxt = _sample_top_p(logits, 0.8, 0.95, generator)
            tokens.append(nxt)
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)  # type: ignore[operator]
    return torch.cat(tokens, dim=1)


def calibration_windows(model: object, tokenizer: Tokenizer, cfg: CalibrationConfig) -> np.ndarray:
    if cfg.file is not None:
        return file_windows(str(cfg.file), tokenizer, cfg)
    return self_generated_windows(model, tokenizer, cfg)
