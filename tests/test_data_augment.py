"""Tests for vit_lab.data.augment: the augment group's batched crop and affine, and its config checks."""

from __future__ import annotations

import pytest
import torch
from data_files import one_line_error

from vit_lab.config import build
from vit_lab.data import Augment
from vit_lab.errors import ConfigError

AUG = Augment(enabled=True, max_shift=0.1, degrees=20, scale=(0.9, 1.1), crop_padding=1)


def test_augment_identity_when_disabled_or_neutral():
    x = torch.rand(6, 3, 8, 6)
    g = torch.Generator().manual_seed(0)
    for aug in (Augment(), Augment(enabled=False, degrees=30, crop_padding=2), Augment(enabled=True)):
        state = g.get_state()
        assert torch.equal(aug(x, g), x) and torch.equal(g.get_state(), state)
    out = AUG(x, g)
    assert out.shape == x.shape and out.dtype == torch.float32 and not torch.equal(out, x)


def test_crop_padding_is_an_integer_shift():
    x = torch.rand(16, 2, 7, 5)
    out = Augment(enabled=True, crop_padding=2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for xi, oi in zip(x, out):  # reference: plain zero-padded shift, found by trying all offsets
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros_like(xi)
                ys, yd = slice(max(dy, 0), 7 + min(dy, 0)), slice(max(-dy, 0), 7 + min(-dy, 0))
                xs, xd = slice(max(dx, 0), 5 + min(dx, 0)), slice(max(-dx, 0), 5 + min(-dx, 0))
                ref[:, yd, xd] = xi[:, ys, xs]
                if torch.equal(oi, ref):
                    matches.append((dy, dx))
        assert matches, "output is not an integer shift of the input"
        seen.add(matches[0])
    assert len(seen) > 3  # offsets are random per sample


def test_rotation_changes_images_but_stays_rigid():
    """Large rotations move pixels; on a non-square image a centred disc stays round (no aspect distortion)."""
    h, w = 16, 32
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    disc = ((yy**2 + xx**2) <= 5**2).float().expand(8, 1, h, w)
    bar = torch.zeros(8, 1, h, w)
    bar[:, :, 7:9, 4:28] = 1
    aug = Augment(enabled=True, degrees=180)
    g = torch.Generator().manual_seed(0)
    assert (aug(bar, g) - bar).abs().amax(dim=(1, 2, 3)).min() > 0.5
    out = aug(disc, g)
    mass = out.sum(dim=(1, 2, 3))
    assert torch.allclose(mass, disc[0].sum().expand(8), rtol=0.05)
    vy, vx = (out * yy**2).sum(dim=(1, 2, 3)) / mass, (out * xx**2).sum(dim=(1, 2, 3)) / mass
    assert ((vy / vx) - 1).abs().max() < 0.15


def test_shift_and_scale_ranges():
    x = torch.zeros(32, 1, 20, 20)
    x[:, :, 8:12, 8:12] = 1
    shifted = Augment(enabled=True, max_shift=0.2)(x, torch.Generator().manual_seed(0))
    cy = (shifted.sum(dim=(1, 3)) * torch.arange(20)).sum(1) / shifted.sum(dim=(1, 2, 3)) - 9.5
    assert cy.abs().max() <= 0.2 * 20 + 1e-4 and cy.abs().max() > 1  # within +-20% of the size, and it moves
    zoom = Augment(enabled=True, scale=(2.0, 2.0))(x, None)
    assert torch.allclose(zoom.sum(dim=(1, 2, 3)), torch.full((32,), 64.0), rtol=1e-4)  # 2x zoom: 4x area


def test_hflip_mirrors_a_share_of_the_images():
    x = torch.rand(400, 2, 5, 7)
    assert torch.equal(Augment(enabled=True, hflip=1.0)(x, torch.Generator().manual_seed(0)), x.flip(-1))
    out = Augment(enabled=True, hflip=0.5)(x, torch.Generator().manual_seed(0))
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.equal(mirrored, ~(out == x).flatten(1).all(1))  # each image is either itself or its mirror
    assert 150 < int(mirrored.sum()) < 250


@pytest.mark.parametrize(
    "over, key",
    [
        ({"max_shift": 1.5}, "max_shift"),
        ({"degrees": -1}, "degrees"),
        ({"scale": (1.2, 0.8)}, "scale"),
        ({"crop_padding": -1}, "crop_padding"),
        ({"hflip": 1.5}, "hflip"),
        ({"hflip": "yes"}, "hflip"),
    ],
)
def test_augment_validate(over, key):
    with pytest.raises(ConfigError) as e:
        Augment(enabled=True, **over).validate()
    one_line_error(e, f"augment.{key}=")


def test_augment_from_hydra_config():
    from omegaconf import OmegaConf

    conf = OmegaConf.create(
        {
            "_target_": "vit_lab.data.Augment",
            "enabled": True,
            "degrees": 10.0,
            "scale": [0.9, 1.1],
            "max_shift": 0.1,
            "crop_padding": 2,
        }
    )
    aug = build(conf)
    aug.validate()
    assert type(aug.scale) is list and aug.active
    x = torch.rand(4, 1, 28, 28)
    assert aug(x, torch.Generator().manual_seed(0)).shape == x.shape
