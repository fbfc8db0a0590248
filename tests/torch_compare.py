"""An exported package against PyTorch on the same token ids: the check every export test makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edgekit.exporters.reference import TorchReference
from edgekit.runtime import GenerationConfig, load

PROMPT = "The quick brown fox jumps over the lazy dog. 12345"


def compare_with_torch(pkg: Path, reference: str | TorchReference, greedy_tokens: int = 24,
                       atol: float = 2e-3) -> list[int]:
    """Logits of PROMPT within `atol`, then `greedy_tokens` greedy tokens identical; returns the prompt's ids."""
    model = load(pkg)
    ref = reference if isinstance(reference, TorchReference) else TorchReference(reference, "cpu")
    ids = model.encode(PROMPT)
    expected, got = ref.logits(ids), model.logits(ids)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=atol, rtol=0)
    gen = GenerationConfig(max_new_tokens=greedy_tokens, stop_token_ids=())
    assert list(model.generate_ids(ids, gen)) == ref.greedy(ids, greedy_tokens)
    return ids
