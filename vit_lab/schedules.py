"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from vit_lab.errors import ConfigError


def warmup_steps(
    total_steps: int, steps_per_epoch: int, warmup_epochs: float = 1.0, warmup_fraction: float | None = 0.1
) -> int:
    """min(warmup_epochs of steps, warmup_fraction of the run), so a short run is not mostly warmup;
    always at least one step left for the decay."""
    warmup = round(warmup_epochs * steps_per_epoch)
    if warmup_fraction is not None:
        if not 0 <= warmup_fraction <= 1:
            raise ConfigError(f"scheduler.warmup_fraction={warmup_fraction}: use a fraction in [0, 1] or null")
        warmup = min(warmup, round(warmup_fraction * total_steps))
    return max(min(warmup, total_steps - 1), 0)


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.01,
    warmup_fraction: float | None = 0.1,
) -> LambdaLR:
    """Linear warmup (see ``warmup_steps``), then cosine decay to ``min_lr_ratio`` of the base lr."""
    warmup = warmup_steps(total_steps, steps_per_epoch, warmup_epochs, warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> LambdaLR:
    """The tutorial's fixed learning rate."""
    return LambdaLR(optimizer, lambda step: 1.0)
