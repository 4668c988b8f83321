"""What a run is built from: the config's checks, then the data's batches, the optimizer and the schedule.

``vit_lab.train.setup`` builds a :class:`Job` with these; the model owns what is model-specific (its shape check,
run against the data before anything is read, and its optimizer groups, ``model.param_groups(weight_decay)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vit_lab import debug
from vit_lab.callbacks import Callbacks
from vit_lab.config import build
from vit_lab.data import Batches, IDXDataset
from vit_lab.device import check_compile_mode, compile_model
from vit_lab.errors import ConfigError, Interrupted, UserError
from vit_lab.records import Run

log = logging.getLogger("vit_lab.train")


def config_number(cfg: DictConfig, key: str, kind: type, minimum: float | None = None, strict: bool = True,
                  optional: bool = False) -> Any:
    """Read a numeric config value, failing with a one-line ConfigError naming the key."""
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return None
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise ConfigError(f"{key}={value!r} must be {'an integer' if kind is int else 'a number'}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ConfigError(f"{key}={value} must be {'>' if strict else '>='} {minimum}")
    return value


def validate_config(cfg: DictConfig) -> IDXDataset:
    """Check every value before any data is read or any step is taken; returns the data spec."""
    for key in ("trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size"):
        config_number(cfg, key, int, 0)
    config_number(cfg, "trainer.seed", int, 0, strict=False)
    config_number(cfg, "trainer.label_smoothing", float, 0, strict=False)
    if cfg.trainer.label_smoothing >= 1:
        raise ConfigError(f"trainer.label_smoothing={cfg.trainer.label_smoothing} must be < 1")
    config_number(cfg, "trainer.grad_clip", float, 0, optional=True)
    config_number(cfg, "optimizer.lr", float, 0)
    if OmegaConf.select(cfg, "optimizer.weight_decay") is not None:
        config_number(cfg, "optimizer.weight_decay", float, 0, strict=False)
    if cfg.trainer.progress not in ("auto", True, False):
        raise ConfigError(f"trainer.progress={cfg.trainer.progress!r} must be auto, true or false")
    for key in ("device.compile", "device.tune_malloc"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
    check_compile_mode(OmegaConf.select(cfg, "device.compile_mode", default="default"))
    debug.check(cfg.trainer)
    spec = build(cfg.data, _convert_="all")
    spec.validate()
    build(cfg.augment).validate()
    try:  # the model checks its own shape against the data, on the meta device: no memory, no random numbers
        with torch.device("meta"):
            build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
    except (UserError, Interrupted):
        raise
    except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device is checked by its real build
        pass
    return spec


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The model's own optimizer groups (``model.param_groups(weight_decay)``), else one group of everything."""
    if hasattr(model, "param_groups"):
        return model.param_groups(weight_decay)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


@dataclass
class Job:
    """Everything a run is built from (``setup``)."""

    cfg: DictConfig
    run: Run
    device: torch.device
    model: torch.nn.Module
    callbacks: Callbacks
    ckpt: dict | None  # the checkpoint to resume from, dropped once restored
    ckpt_file: Path | None = None
    step_model: torch.nn.Module | None = None  # what the steps call: the model, or its compiled form
    gen: torch.Generator | None = None  # the training order's and augmentation's generator
    train_batches: Batches | None = None
    val_batches: Batches | None = None
    test_batches: Batches | None = None
    opt: torch.optim.Optimizer | None = None
    sched: Any = None
    criterion: torch.nn.Module | None = None
    profiler: debug.StepProfiler | None = None

    def interrupted(self, signum: int) -> Interrupted:
        return Interrupted(signum, self.run.dir, saved=bool(self.cfg.trainer.checkpoint))


def build_data(job: Job, spec: IDXDataset) -> None:
    """Load the splits (on the accelerator, whole) and cut them into batches; training batches are augmented."""
    cfg = job.cfg.trainer
    data = spec.load(seed=cfg.seed)
    if job.device.type != "cpu":  # keep the whole (uint8) dataset on the accelerator: no per-batch host copies
        data = type(data)(**{k: v.to(job.device) for k, v in vars(data).items()})
    data = debug.subset(data, cfg)
    norm = dict(mean=spec.mean, std=spec.std, normalize=spec.normalize, device=job.device)
    overfit = bool(cfg.get("overfit_batches"))
    job.gen = torch.Generator()
    job.train_batches = Batches(data.train_images, data.train_labels, cfg.batch_size, shuffle=not overfit,
                                augment=None if overfit else build(job.cfg.augment), generator=job.gen, **norm)
    job.val_batches = Batches(data.val_images, data.val_labels, cfg.eval_batch_size, **norm)
    job.test_batches = Batches(data.test_images, data.test_labels, cfg.eval_batch_size, **norm)
    if len(job.train_batches) == 0:
        raise ConfigError("data.train_limit leaves no training images; raise data.train_limit or lower data.val_size")
    log.info("%s with %s parameters on %s; %d train / %d val / %d test images; run dir %s", type(job.model).__name__,
             f"{job.run.metrics['n_params']:,}", job.device, len(data.train_labels), len(data.val_labels),
             len(data.test_labels), job.run.dir)


def build_optimizer(job: Job) -> None:
    """The optimizer over the model's own parameter groups, the per-step schedule and the loss."""
    cfg = job.cfg
    compiled = cfg.device.compile
    job.step_model = compile_model(job.model, cfg.device.get("compile_mode", "default")) if compiled else job.model
    job.opt = build(cfg.optimizer)(param_groups(job.model, cfg.optimizer.get("weight_decay", 0.0) or 0.0))
    steps = len(job.train_batches)
    job.sched = build(cfg.scheduler)(job.opt, total_steps=cfg.trainer.epochs * steps, steps_per_epoch=steps)
    job.criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    job.profiler = debug.StepProfiler(cfg.trainer.get("profile"), job.run.dir, job.device)
