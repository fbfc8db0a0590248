"""The distillation loop shared by --tune-steps and pruning recovery: gradient clipping."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgekit.exporters.distill import distill


class _Logits:
    def __init__(self, logits: Any) -> None:
        self.logits = logits


def _grad_norms(max_grad_norm: float | None) -> list[float]:
    """Global gradient norm at each optimizer step of a student far from its teacher."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    torch.manual_seed(0)
    vocab, rows = 16, 8
    teacher_table = torch.randn(vocab, vocab) * 20
    student = torch.nn.Embedding(vocab, vocab)
    seen: list[float] = []

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        distill(lambda ids: _Logits(teacher_table[ids]), student, list(student.parameters()),
                np.arange(vocab * rows, dtype=np.int64).reshape(rows, vocab) % vocab, 5, 1e-2, "test",
                max_grad_norm=max_grad_norm)
    finally:
        handle.remove()
    return seen


def test_each_step_is_clipped_to_the_norm() -> None:
    assert min(_grad_norms(None)) > 0.2  # unclipped, every step's gradient is above the norm below
    norms = _grad_norms(0.05)
    assert len(norms) == 5 and max(norms) <= 0.05 + 1e-6
