"""Test-time augmentation: each test image and its one-pixel shifts, the model's probabilities averaged.

    python -m vit_lab.evaluate RUN_DIR --tta          # eval.json gains "tta": accuracy and loss over 5 views

A run trained with mirrored images (``augment.hflip`` > 0) is also shown the mirrors of those 5 views (10 in all).

Reported beside the plain test accuracy, never in its place: it costs five forwards per image, and a run's
``test_acc`` stays the single-view figure that every other run reports.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from vit_lab.device import autocast
from vit_lab.evaluate import probabilities

SHIFTS = 5  # the image and its four one-step shifts


def shifted_views(x: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> (5, B, C, H, W): the images, then shifted down, up, right and left by ``pixels``; the edge
    that moves in repeats the border (MNIST's border is background)."""
    p = pixels
    h, w = x.shape[-2:]
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    offsets = ((p, p), (0, p), (2 * p, p), (p, 0), (p, 2 * p))  # (top, left) of each crop of the padded images
    return torch.stack([padded[..., i : i + h, j : j + w] for i, j in offsets])


def views(x: torch.Tensor, pixels: int = 1, flip: bool = False) -> torch.Tensor:
    """The shifted views, then (with ``flip``) those of the left-right mirrored images: (5 or 10, B, C, H, W)."""
    shifted = shifted_views(x, pixels)
    return torch.cat([shifted, shifted.flip(-1)]) if flip else shifted


def trained_on_mirrors(cfg: DictConfig) -> bool:
    """Whether a run's augmentation mirrored images (runs from before ``augment.hflip`` did not)."""
    return (
        bool(OmegaConf.select(cfg, "augment.enabled", default=False))
        and float(OmegaConf.select(cfg, "augment.hflip", default=0.0) or 0.0) > 0
    )


@torch.no_grad()
def tta_evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    precision: str,
    pixels: int = 1,
    flip: bool = False,
) -> dict:
    """Accuracy and mean cross-entropy of the views' averaged probabilities, with the views' count, shift and flip."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    n_views = SHIFTS * (2 if flip else 1)
    for x, y in batches:
        with autocast(device, precision):
            out = model(views(x, pixels, flip).flatten(0, 1))
        probs = probabilities(model, out).view(n_views, len(y), -1).mean(dim=0)
        loss_sum += F.nll_loss(probs.clamp_min(1e-30).log(), y, reduction="sum").item()
        correct += int((probs.argmax(dim=1) == y).sum())
        n += len(y)
    model.train()  # as vit_lab.loop.evaluate leaves it
    nan = float("nan")
    return {
        "views": n_views,
        "shift_pixels": pixels,
        "flip": flip,
        "accuracy": correct / n if n else nan,
        "loss": loss_sum / n if n else nan,
    }
