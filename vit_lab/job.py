"""What a run is built from: the config's checks, then the data's batches, the optimizer and the schedule.

``vit_lab.train.setup`` builds a :class:`Job` with these; the model owns what is model-specific (its shape check,
run against the data before anything is read, and its optimizer groups, ``model.param_groups(weight_decay)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vit_lab import debug
from vit_lab.callbacks import Callbacks
from vit_lab.config import build
from vit_lab.data import Batches, Dataset
from vit_lab.errors import ConfigError, Interrupted, UserError
from vit_lab.records import Run


def at_least(cfg: DictConfig, key: str, minimum: float, strict: bool = True) -> None:
    """A range check (the schema, vit_lab/schema.py, has checked the type): a one-line ConfigError naming the key."""
    value = OmegaConf.select(cfg, key)
    if value is not None and (value <= minimum if strict else value < minimum):
        raise ConfigError(f"{key}={value} must be {'>' if strict else '>='} {minimum}")


def validate_config(cfg: DictConfig) -> Dataset:
    """What types cannot say, checked before any data is read or any step is taken; returns the data spec.

    Wrong types and unknown keys never get here: they fail while Hydra composes (``vit_lab/schema.py``)."""
    for key in ("trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size", "optimizer.lr", "trainer.grad_clip"):
        at_least(cfg, key, 0)
    for key in (
        "trainer.seed",
        "trainer.label_smoothing",
        "optimizer.weight_decay",
        "trainer.limit_batches",
        "trainer.overfit_batches",
        "trainer.patch_dropout_epochs",
        "trainer.profile.wait",
        "trainer.profile.warmup",
        "device.threads",
    ):
        at_least(cfg, key, 0, strict=False)
    at_least(cfg, "trainer.profile.active", 1, strict=False)
    if cfg.trainer.label_smoothing >= 1:
        raise ConfigError(f"trainer.label_smoothing={cfg.trainer.label_smoothing} must be < 1")
    spec = build(cfg.data, _convert_="all")
    spec.validate()
    build(cfg.augment).validate()
    try:  # the model checks its own shape against the data, on the meta device: no memory, no random numbers
        with torch.device("meta"):
            build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device is checked by its real build
        pass
    return spec


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The model's own optimizer groups (``model.param_groups(weight_decay)``), else one group of everything."""
    own = getattr(model, "param_groups", None)
    if callable(own):
        return own(weight_decay)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


@dataclass
class Job:
    """Everything a run is built from (``vit_lab.train.setup``)."""

    cfg: DictConfig
    run: Run
    device: torch.device
    model: torch.nn.Module
    step_model: torch.nn.Module  # what the steps call: the model, or its compiled form
    callbacks: Callbacks
    gen: torch.Generator  # the training order's and augmentation's generator
    train_batches: Batches
    val_batches: Batches
    test_batches: Batches
    opt: torch.optim.Optimizer
    sched: Any
    criterion: torch.nn.Module
    profiler: debug.StepProfiler
    ckpt: dict | None = None  # the checkpoint to resume from, dropped once restored
    ckpt_file: Path | None = None
    ema: Any = None  # vit_lab.ema.EMA of the model (trainer.ema_decay), or None
    distiller: Any = None  # vit_lab.distill.Distiller (the distill group), or None
    precision: str = "fp32"  # what the steps compute in, resolved once from device.precision (auto: bf16 or fp32)

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation, best.pt and the test use: the weights' moving average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def interrupted(self, signum: int) -> Interrupted:
        return Interrupted(signum, self.run.dir, saved=bool(self.cfg.trainer.checkpoint))


def build_data(
    cfg: DictConfig, spec: Dataset, device: torch.device
) -> tuple[torch.Generator, Batches, Batches, Batches]:
    """Load the splits (on an accelerator, whole) and cut them into batches; training batches are augmented."""
    trainer = cfg.trainer
    data = spec.load(seed=trainer.seed)
    if device.type != "cpu":  # keep the whole (uint8) dataset on the accelerator: no per-batch host copies
        data = type(data)(**{k: v.to(device) for k, v in vars(data).items()})
    data = debug.subset(data, trainer)
    norm: dict[str, Any] = dict(mean=spec.mean, std=spec.std, normalize=spec.normalize, device=device)
    overfit = bool(trainer.get("overfit_batches"))
    gen = torch.Generator()
    train = Batches(
        data.train_images,
        data.train_labels,
        trainer.batch_size,
        shuffle=not overfit,
        augment=None if overfit else build(cfg.augment),
        generator=gen,
        **norm,
    )
    if len(train) == 0:
        raise ConfigError("data.train_limit leaves no training images; raise data.train_limit or lower data.val_size")
    return (
        gen,
        train,
        Batches(data.val_images, data.val_labels, trainer.eval_batch_size, **norm),
        Batches(data.test_images, data.test_labels, trainer.eval_batch_size, **norm),
    )


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer over the model's own parameter groups, and its per-step schedule."""
    opt = build(cfg.optimizer)(param_groups(model, cfg.optimizer.get("weight_decay", 0.0) or 0.0))
    sched = build(cfg.scheduler)(opt, total_steps=cfg.trainer.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch)
    return opt, sched
