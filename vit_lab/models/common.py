"""What every model here shares with the trainer: its optimizer parameter groups."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def decay_groups(module: nn.Module, weight_decay: float, no_decay: Iterable[str] = ()) -> list[dict]:
    """Decay weight matrices only (nanoGPT's rule): decaying norms, biases and embeddings hurts small models.

    ``no_decay`` names parameters (by substring) that stay undecayed although they are matrices, e.g. positions.
    """
    skip = tuple(no_decay)
    decay: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and not any(s in name for s in skip) else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
