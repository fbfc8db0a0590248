"""The distillation loop shared by `--tune-steps` (quantized scales) and pruning recovery (`--recover-steps`):
a student learns the float teacher's next-token distributions, KL(teacher ‖ student) over every position
of the calibration windows, with Adam on a cosine schedule. What the student trains (per-group factors,
or all its weights) is the caller's `forward` and `params`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.progress import progress


def kl_loss(teacher_logits: Any, student_logits: Any) -> Any:
    """Mean over positions of KL(teacher ‖ student), nats."""
    import torch

    target = torch.log_softmax(teacher_logits.float(), dim=-1)
    logp = torch.log_softmax(student_logits.float(), dim=-1)
    return (target.exp() * (target - logp)).sum(-1).mean()


def distill(teacher: Any, forward: Callable[[Any], Any], params: list[Any], windows: np.ndarray, steps: int,
            lr: float, label: str, batch: int = 2, seed: int = 0, weight_decay: float = 0.0,
            max_grad_norm: float | None = None) -> None:
    """`steps` steps of Adam(W) on `params`, each on `batch` windows drawn from int64 `windows` [n, L]; `forward`
    maps a batch of ids to the student's logits. The teacher runs on the device of the ids (the caller moves both).
    With `max_grad_norm`, each step's gradient is clipped to that global norm first."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    device = params[0].device
    ids = torch.from_numpy(windows).to(device)
    generator = torch.Generator().manual_seed(seed)
    for _ in progress(range(steps), label, total=steps):
        chosen = ids[torch.randint(0, len(ids), (min(batch, len(ids)),), generator=generator)]
        with torch.no_grad():
            target = teacher(chosen).logits
        loss = kl_loss(target, forward(chosen))
        optimizer.zero_grad()
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        schedule.step()


def mean_kl(teacher: Any, student: Any, windows: np.ndarray, batch: int = 4) -> float:
    """KL(teacher ‖ student) per position, nats, averaged over int64 `windows` [n, L], on the student's device."""
    import torch

    ids = torch.from_numpy(windows).to(next(student.parameters()).device)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            b = ids[i:i + batch]
            total += float(kl_loss(teacher(b).logits, student(b).logits)) * len(b)
    return total / len(ids)
