"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 1.0,
                  min_lr_ratio: float = 0.01) -> LambdaLR:
    """Linear warmup over ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` of the base lr."""
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> LambdaLR:
    """The tutorial's fixed learning rate."""
    return LambdaLR(optimizer, lambda step: 1.0)
