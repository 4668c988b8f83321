"""Learning-rate schedules: the warmup that adapts to the run's length, exact values at chosen steps."""

from __future__ import annotations

import math

import pytest
import torch

from vit_lab.errors import ConfigError
from vit_lab.schedules import constant, warmup_cosine, warmup_steps

LR = 2e-3


def lrs(total_steps: int, steps_per_epoch: int, **kw) -> list[float]:
    """The learning rate of every optimizer step of a run, read from a real AdamW stepped by the scheduler."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = warmup_cosine(opt, total_steps=total_steps, steps_per_epoch=steps_per_epoch, **kw)
    out = []
    for _ in range(total_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def cosine(progress: float, min_lr_ratio: float = 0.01) -> float:
    return LR * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_the_default_main_job_keeps_its_one_epoch_warmup():
    """15 epochs of 430 steps (55,000 images, batch 128): 10% of 6,450 steps is 645 > 430, so the warmup is
    the configured epoch, exactly as before the cap."""
    assert warmup_steps(6450, 430, 1.0, 0.1) == warmup_steps(6450, 430, 1.0, None) == 430
    lr = lrs(6450, 430)
    assert lr[0] == pytest.approx(LR / 430, rel=1e-12)
    assert lr[214] == pytest.approx(LR * 215 / 430, rel=1e-12)
    assert lr[429] == pytest.approx(LR, rel=1e-12) and lr[430] == pytest.approx(LR, rel=1e-12)
    assert lr[430 + 3010] == pytest.approx(cosine(0.5), rel=1e-12) == pytest.approx(LR * 0.505, rel=1e-12)
    assert lr[-1] == pytest.approx(cosine(6019 / 6020), rel=1e-12)
    assert lr == lrs(6450, 430, warmup_fraction=None)


def test_a_short_run_warms_up_for_a_tenth_of_its_steps():
    """1 epoch on 5,000 images = 40 steps: 4 warmup steps (it used to be 39 of 40)."""
    assert warmup_steps(40, 40) == 4 and warmup_steps(40, 40, warmup_fraction=None) == 39
    lr = lrs(40, 40)
    assert lr[:4] == pytest.approx([LR * 0.25, LR * 0.5, LR * 0.75, LR], rel=1e-12)
    assert lr[4] == pytest.approx(LR, rel=1e-12)
    assert lr[4 + 18] == pytest.approx(LR * 0.505, rel=1e-12)  # halfway through the 36 decay steps
    assert lr[39] == pytest.approx(cosine(35 / 36), rel=1e-12)
    old = lrs(40, 40, warmup_fraction=None)
    assert old[38] == pytest.approx(LR * 39 / 39, rel=1e-12) and old[0] == pytest.approx(LR / 39, rel=1e-12)


def test_three_epochs_on_5000_images_and_the_caps_meeting():
    assert warmup_steps(120, 40) == 12  # round(0.1 * 120) < 40
    lr = lrs(120, 40)
    assert lr[11] == pytest.approx(LR, rel=1e-12) and lr[5] == pytest.approx(LR * 6 / 12, rel=1e-12)
    assert lr[12 + 54] == pytest.approx(LR * 0.505, rel=1e-12)
    assert warmup_steps(400, 40) == 40  # 10 epochs: the fraction (40 steps) meets the epoch (40 steps)
    assert warmup_steps(1000, 40, warmup_epochs=2.0, warmup_fraction=0.05) == 50
    assert warmup_steps(2000, 40, warmup_epochs=2.0, warmup_fraction=0.05) == 80
    assert warmup_steps(10, 40, warmup_epochs=0.0) == 0 and lrs(10, 40, warmup_epochs=0.0)[0] == pytest.approx(LR)
    assert warmup_steps(1, 40) == 0  # a one-step run: no warmup, its step at the full rate
    assert warmup_steps(30100, 430, warmup_epochs=2.0) == 860  # a 70-epoch run keeps 2 epochs


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_a_fraction_outside_0_1_is_a_config_error(fraction):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    with pytest.raises(ConfigError, match=r"scheduler.warmup_fraction=.*\[0, 1\]"):
        warmup_cosine(opt, total_steps=100, steps_per_epoch=10, warmup_fraction=fraction)


def test_constant_keeps_the_rate():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = constant(opt, total_steps=5, steps_per_epoch=5)
    for _ in range(5):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == LR
