"""An exponential moving average of the weights (``trainer.ema_decay``), validated and tested in their place.

torch's ``AveragedModel`` keeps the copy and ``get_ema_multi_avg_fn`` updates it with one multi-tensor lerp per
dtype and device; this adds the warm-up: the k-th average (k updates done) uses ``min(decay, (1 + k) / (10 + k))``,
so the first epochs are not dominated by the random initial weights.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vit_lab.errors import ConfigError

TensorList = list[torch.Tensor] | tuple[torch.Tensor, ...]  # what AveragedModel passes a multi_avg_fn


def warmup_decay(decay: float, updates: int) -> float:
    """The decay of the average after ``updates`` updates: short at first, ``decay`` once 1 - decay > 9 / (10 + k)."""
    return min(decay, (1 + updates) / (10 + updates))


def check_decay(decay: object) -> None:
    """``trainer.ema_decay`` is null (no EMA) or a number in [0, 1)."""
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1):
        raise ConfigError(f"trainer.ema_decay={decay!r} must be a number in [0, 1) (e.g. 0.999), or null for no EMA")


class EMA(AveragedModel):
    """The averaged copy of a model (``.module``), updated after each optimizer step by ``update_parameters(model)``.

    Float buffers are averaged too (batch-norm statistics), as in timm's ModelEma; integer ones are copied.
    ``n_averaged`` stays on the CPU,
    where it was created, so reading it for the warm-up never waits for an accelerator.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        check_decay(decay)
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)
        self.decay = float(decay)

    @torch.no_grad()
    def _average(self, averaged: TensorList, current: TensorList, n: torch.Tensor | int) -> None:
        if not averaged[0].is_floating_point():  # counters (batch norm's num_batches_tracked): an average truncates
            for a, c in zip(averaged, current):
                a.copy_(c)
            return
        get_ema_multi_avg_fn(warmup_decay(self.decay, int(self.n_averaged)))(averaged, current, n)


def build_ema(model: torch.nn.Module, decay: float | None) -> EMA | None:
    """The EMA of ``model`` for ``trainer.ema_decay`` (None: off). Build it after the model is on its device."""
    return None if decay is None else EMA(model, decay)
