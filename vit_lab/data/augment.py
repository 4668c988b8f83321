"""The augment config group: batched random horizontal flip, padded random crop and affine, on the tensor side."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .checks import is_int, is_num, plain


@dataclass
class Augment:
    """Batched random horizontal flip, padded random crop and affine (shift/rotate/scale) on [0,1] float images."""

    enabled: bool = False
    max_shift: float = 0.0  # fraction of the image size
    degrees: float = 0.0
    scale: Sequence[float] = (1.0, 1.0)
    crop_padding: int = 0
    hflip: float = 0.0  # probability of mirroring an image left-right: for clothes and objects, never for digits

    def __post_init__(self) -> None:
        self.scale = plain(self.scale)

    def validate(self) -> None:
        """Config checks (not in __post_init__, where Hydra would wrap the error)."""
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"augment.enabled={self.enabled!r} must be true or false")
        if not is_num(self.max_shift) or not 0 <= self.max_shift < 1:
            raise ConfigError(f"augment.max_shift={self.max_shift!r} must be in [0, 1) (fraction of the image size)")
        if not is_num(self.degrees) or not 0 <= self.degrees <= 180:
            raise ConfigError(f"augment.degrees={self.degrees!r} must be in [0, 180]")
        s = self.scale
        if not isinstance(s, (list, tuple)) or len(s) != 2 or not all(is_num(v) for v in s) or not 0 < s[0] <= s[1]:
            raise ConfigError(f"augment.scale={s!r} must be [low, high] with 0 < low <= high")
        if not is_int(self.crop_padding) or self.crop_padding < 0:
            raise ConfigError(f"augment.crop_padding={self.crop_padding!r} must be an integer >= 0")
        if not is_num(self.hflip) or not 0 <= self.hflip <= 1:
            raise ConfigError(f"augment.hflip={self.hflip!r} must be a probability in [0, 1]")

    @property
    def affine(self) -> bool:
        return self.max_shift > 0 or self.degrees > 0 or tuple(self.scale) != (1.0, 1.0)

    @property
    def active(self) -> bool:
        """False when disabled or every parameter is neutral: then __call__ is the identity and draws nothing."""
        return bool(self.enabled) and (self.affine or self.crop_padding > 0 or self.hflip > 0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Augment a float batch (B,C,H,W); random numbers are drawn on the CPU so any device gives the same draws."""
        if not self.active:
            return x
        b, _, h, w = x.shape

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return (lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)).to(
                x.device, torch.float32
            )

        if self.hflip > 0:  # drawn only when on, so runs without it keep their random stream
            flip = (torch.rand(b, generator=generator) < self.hflip).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.crop_padding > 0:  # like RandomCrop(padding=p): integer shift in [-p, p], zero fill
            p = int(self.crop_padding)
            off = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device)
            padded = F.pad(x, (p, p, p, p))
            rows = (torch.arange(h, device=x.device) + off[0, :, None])[:, None, :, None].expand(
                b, x.shape[1], h, w + 2 * p
            )
            x = padded.gather(2, rows)
            cols = (torch.arange(w, device=x.device) + off[1, :, None])[:, None, None, :].expand(b, x.shape[1], h, w)
            x = x.gather(3, cols)
        if self.affine:
            angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
            scale = uniform(float(self.scale[0]), float(self.scale[1]))
            shift = torch.stack([uniform(-self.max_shift, self.max_shift), uniform(-self.max_shift, self.max_shift)], 1)
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            # theta maps output to input coordinates in [-1,1]; the h/w factors keep rotations rigid on
            # non-square images
            theta = torch.stack(
                [
                    torch.stack([cos, -sin * h / w, 2 * shift[:, 0]], 1),
                    torch.stack([sin * w / h, cos, 2 * shift[:, 1]], 1),
                ],
                1,
            )
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return x
