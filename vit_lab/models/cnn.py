"""A small CNN baseline, for the seed's comparison of the ViT with a non-transformer model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from vit_lab.errors import ShapeError
from vit_lab.models.common import decay_groups


class SimpleCNN(nn.Module):
    """Two conv stages and global pooling: works for any (C, H, W) with H, W >= 4."""

    def __init__(
        self, chw: Sequence[int] = (1, 28, 28), out_d: int = 10, width: int = 32, dropout: float = 0.1
    ) -> None:
        super().__init__()
        c, h, w = (int(v) for v in chw)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ShapeError(f"model.width={width} must be a positive integer")
        if h < 4 or w < 4:
            raise ShapeError(f"the CNN needs images of at least 4x4 pixels, got {h}x{w}")

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]

        self.features = nn.Sequential(*stage(c, width), *stage(width, 2 * width))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, out_d)
        )

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The optimizer's parameter groups: conv and linear weights decay; norms and biases do not."""
        return decay_groups(self, weight_decay)

    def forward(self, x):
        return self.head(self.features(x))
