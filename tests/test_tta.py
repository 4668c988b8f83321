"""Test-time augmentation (vit_lab/tta.py): the shifted views against torch.roll, and the averaged probabilities
against a per-view computation written out; with no shift it is the plain evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from vit_lab.loop import evaluate
from vit_lab.models import MyViT, SimpleCNN
from vit_lab.tta import SHIFTS, shifted_views, trained_on_mirrors, tta_evaluate

CPU = torch.device("cpu")


def bordered(b: int, seed: int = 0) -> torch.Tensor:
    """Random (b, 1, 12, 12) images whose two outer rings are one constant, as MNIST's background is: there a shift
    with the border repeated equals torch.roll."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((b, 1, 12, 12), -0.4242)
    x[..., 2:-2, 2:-2] = torch.randn(b, 1, 8, 8, generator=g)
    return x


def test_views_are_the_image_and_its_four_shifts():
    x = bordered(3)
    v = shifted_views(x)
    assert v.shape == (SHIFTS, 3, 1, 12, 12)
    rolled = [x, x.roll(1, -2), x.roll(-1, -2), x.roll(1, -1), x.roll(-1, -1)]  # down, up, right, left
    for view, expect in zip(v, rolled):
        assert torch.equal(view, expect)
    edge = shifted_views(torch.arange(9.0).view(1, 1, 3, 3))[1, 0, 0]  # down: the top row repeats
    assert edge.tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("model, flip", [("vit", False), ("cnn", False), ("vit", True)])
def test_probabilities_of_the_views_are_averaged(model, flip):
    torch.manual_seed(0)
    net = (
        MyViT((1, 12, 12), patch_size=4, hidden_d=16, n_heads=2) if model == "vit" else SimpleCNN((1, 12, 12), width=4)
    )
    net.eval()
    x, y = bordered(20, seed=1), torch.randint(0, 10, (20,), generator=torch.Generator().manual_seed(2))
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    doc = tta_evaluate(net, batches, CPU, "fp32", flip=flip)
    net.eval()  # BatchNorm's running statistics, as tta_evaluate uses them
    with torch.no_grad():
        views = [x, x.roll(1, -2), x.roll(-1, -2), x.roll(1, -1), x.roll(-1, -1)]
        views += [v.flip(-1) for v in views] if flip else []
        probs = torch.stack([net(v).softmax(dim=-1) for v in views]).mean(dim=0)
    assert doc["views"] == len(views) and doc["shift_pixels"] == 1 and doc["flip"] is flip
    assert doc["accuracy"] == int((probs.argmax(dim=1) == y).sum()) / len(y)
    assert doc["loss"] == pytest.approx(F.nll_loss(probs.log(), y).item(), rel=1e-5)


def test_no_shift_is_the_plain_evaluation():
    torch.manual_seed(0)
    net = MyViT((1, 12, 12), patch_size=4, hidden_d=16, n_heads=2)
    x, y = bordered(30), torch.randint(0, 10, (30,), generator=torch.Generator().manual_seed(3))
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    loss, acc = evaluate(net, batches, CPU, "fp32")
    doc = tta_evaluate(net, batches, CPU, "fp32", pixels=0)
    assert doc["accuracy"] == acc and doc["loss"] == pytest.approx(loss, rel=1e-5)
    assert net.training  # left in training mode, as the trainer's evaluate leaves a model
    assert math.isnan(tta_evaluate(net, [], CPU, "fp32")["accuracy"])  # no images: no figure


def test_mirrors_only_for_runs_trained_on_them():
    def cfg(**augment):
        return OmegaConf.create({"augment": augment})

    assert trained_on_mirrors(cfg(enabled=True, hflip=0.5))
    assert not trained_on_mirrors(cfg(enabled=False, hflip=0.5))  # a disabled group mirrored nothing
    assert not trained_on_mirrors(cfg(enabled=True, hflip=0.0))
    assert not trained_on_mirrors(cfg(enabled=True, crop_padding=2))  # a run from before augment.hflip
