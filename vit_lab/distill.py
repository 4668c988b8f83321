"""Distillation from a finished run (DeiT, Touvron et al. 2021): ``distill=hard|soft distill.teacher=RUN_DIR``.

The teacher is rebuilt exactly as ``vit_lab.evaluate`` rebuilds a run (the ``_target_`` whitelist, weights read with
``torch.load(weights_only=True)``), frozen in eval mode, and run without gradients on every training batch the
student sees (augmented alike), inside the student's autocast. A student with a distillation token
(``model.distill_token``) learns the labels with its class head and the teacher with its distillation head; any
other student learns both with its one head (plain knowledge distillation). Checkpoints hold the student only: a
resumed run reloads the teacher from its directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from vit_lab.errors import ConfigError, UserError
from vit_lab.models import MyViT

log = logging.getLogger("vit_lab.train")
Criterion = Any  # the true-label loss: torch.nn.CrossEntropyLoss with the run's label smoothing


def hard_loss(
    cls: torch.Tensor, dist: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, criterion: Criterion, alpha: float
) -> torch.Tensor:
    """DeiT's hard distillation: (1-alpha) criterion(class head, y) + alpha CE(distillation head, teacher's class).

    The teacher's class is a label without smoothing: label smoothing belongs to the true labels' term."""
    return (1 - alpha) * criterion(cls, y) + alpha * F.cross_entropy(dist, teacher.argmax(dim=1))


def soft_loss(
    cls: torch.Tensor,
    dist: torch.Tensor,
    teacher: torch.Tensor,
    y: torch.Tensor,
    criterion: Criterion,
    alpha: float,
    tau: float,
) -> torch.Tensor:
    """(1-alpha) criterion(class head, y) + alpha tau^2 KL(teacher || distillation head), both softmaxes at
    temperature tau; tau^2 keeps the gradients' scale as tau changes (Hinton et al. 2015)."""
    # batchmean: the KL of each image, averaged (DeiT's code divides the sum by batch x classes: 1/classes of it)
    kl = F.kl_div(
        F.log_softmax(dist / tau, dim=1), F.log_softmax(teacher / tau, dim=1), reduction="batchmean", log_target=True
    )
    return (1 - alpha) * criterion(cls, y) + alpha * tau**2 * kl


class Distiller:
    """The frozen teacher and the loss it teaches with; ``vit_lab.loop.optimizer_step`` calls it with the batch, the
    student's output and the labels, inside the student's autocast."""

    def __init__(
        self, teacher: torch.nn.Module, criterion: Criterion, kind: str, alpha: float, tau: float, record: dict
    ) -> None:
        self.teacher, self.criterion, self.kind, self.alpha, self.tau = teacher, criterion, kind, alpha, tau
        self.record = record  # what metrics.json says of the teacher and the loss

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.teacher(x).float()
        # a tutorial-style teacher answers probabilities: their logarithms are logits of the same softmax
        return out.clamp_min(1e-30).log() if getattr(self.teacher, "head_softmax", False) else out

    def __call__(self, x: torch.Tensor, out: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of a step and the logits the student predicts with (both heads' mean), for the train accuracy."""
        cls, dist = (out, out) if isinstance(out, torch.Tensor) else out  # no distillation token: one head learns both
        cls, dist, teacher = cls.float(), dist.float(), self.teacher_logits(x)
        if self.kind == "hard":
            loss = hard_loss(cls, dist, teacher, y, self.criterion, self.alpha)
        else:
            loss = soft_loss(cls, dist, teacher, y, self.criterion, self.alpha, self.tau)
        return loss, (cls + dist) / 2


def check(node: DictConfig) -> None:
    """The distill keys' values the schema cannot check, before anything is loaded."""
    if not node.get("teacher"):
        raise ConfigError(
            "distill.teacher is not set; pass distill.teacher=<the run directory of a finished run> "
            "(e.g. of python -m vit_lab.train model=cnn)"
        )
    if not 0 <= node.alpha <= 1:
        raise ConfigError(f"distill.alpha={node.alpha} must be in [0, 1] (the teacher's share of the loss)")
    if node.tau <= 0:
        raise ConfigError(f"distill.tau={node.tau} must be > 0")


def input_mismatch(teacher_spec: Any, spec: Any) -> list[str]:
    """How the teacher's inputs (image shape, classes, normalisation) differ from this run's; [] if they agree."""
    keys = ("chw", "num_classes", "mean", "std", "normalize")

    def value(s: Any, key: str) -> Any:
        v = getattr(s, key)
        return [float(x) for x in v] if key in ("mean", "std") else tuple(v) if key == "chw" else v

    return [
        f"{k} {value(teacher_spec, k)} vs {value(spec, k)}" for k in keys if value(teacher_spec, k) != value(spec, k)
    ]


def load_teacher(run_dir: Path, weights: str, spec: Any) -> tuple[torch.nn.Module, dict]:
    """The teacher run's model with its weights, frozen, and what metrics.json records of it; one-line errors."""
    from vit_lab.evaluate import read_config, rebuild
    from vit_lab.records import read_metrics

    try:
        teacher_spec, model, epoch = rebuild(run_dir, read_config(run_dir), weights)
    except UserError as e:
        raise type(e)(f"distill.teacher: {e}") from None
    problems = input_mismatch(teacher_spec, spec)
    if problems:
        raise ConfigError(
            f"distill.teacher={run_dir} was trained on other inputs than this run ({'; '.join(problems)}, teacher vs "
            "student); distil from a run of the same data config"
        )
    metrics = read_metrics(run_dir)
    record = {
        "teacher": str(run_dir),
        "weights": weights,
        "teacher_epoch": epoch,
        "teacher_model": type(model).__name__,
        "teacher_status": metrics.get("status"),
        "teacher_test_acc": metrics.get("test_acc"),
    }
    return model.eval().requires_grad_(False), record


def from_config(
    cfg: DictConfig, spec: Any, student: torch.nn.Module, criterion: Criterion, device: torch.device
) -> Distiller | None:
    """The run's Distiller (``distill`` config group), its teacher on ``device``; None when distillation is off.
    The student is read, not changed: the trainer tells a student with a distillation head to return both heads'
    logits in training (``MyViT.set_distilled_training``)."""
    node = cfg.get("distill")
    if node is None:
        return None
    check(node)
    run_dir = Path(node.teacher).expanduser().resolve()
    teacher, record = load_teacher(run_dir, node.weights, spec)
    token = isinstance(student, MyViT) and student.head_dist is not None
    if record["teacher_status"] != "completed":
        log.warning("distillation teacher %s has status %s, not completed", run_dir, record["teacher_status"])
    record.update(kind=node.kind, alpha=node.alpha, tau=node.tau, distill_token=token)
    return Distiller(teacher.to(device), criterion, node.kind, node.alpha, node.tau, record)
