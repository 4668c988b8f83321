"""The pieces of the training loop that know nothing of a run: one optimizer step, the running sums of an epoch,
the divergence check, evaluation of a split, the signal flag, and the State a checkpoint saves."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vit_lab import preemption
from vit_lab.data import Batches
from vit_lab.device import autocast
from vit_lab.errors import Diverged


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Batches, device: torch.device, precision: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in batches:
        with autocast(device, precision):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(dim=1) == y).sum()
        n += len(y)
    model.train()
    if n == 0:
        return float("nan"), float("nan")
    return loss_sum.item() / n, correct.item() / n


@contextmanager
def signal_handlers(handler, signals=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """``handler`` for ``signals`` while the block runs, the previous handlers restored after it."""
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (some launchers): signals stay with their default handlers
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def stop_on_signals() -> Iterator[dict]:
    """Turn SIGINT/SIGTERM (and, in a submitit job, its preemption signal) into a flag checked at each step."""
    flag: dict = {"signum": None}

    def handler(signum, frame):  # noqa: ARG001
        flag["signum"] = signum

    with signal_handlers(handler, (signal.SIGINT, signal.SIGTERM, *preemption.signals())):
        yield flag


class Sums:
    """An epoch's running loss, correct predictions, images and seconds; on the device, so steps never sync."""

    def __init__(self, device: torch.device, saved: dict | None = None) -> None:
        saved = saved or {"loss": 0.0, "correct": 0, "seen": 0}
        self.loss = torch.tensor(saved["loss"], device=device, dtype=torch.float64)
        self.correct = torch.tensor(saved["correct"], device=device)
        self.seen, self.before, self.tic = saved["seen"], saved.get("seconds", 0.0), time.perf_counter()

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach() * len(y)
        self.correct += (out.argmax(dim=1) == y).sum()
        self.seen += len(y)

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.tic

    def state(self) -> dict:
        """What a checkpoint keeps of a partial epoch, so the resumed epoch reports the same losses and time."""
        return {
            "loss": self.loss.item(),
            "correct": int(self.correct.item()),
            "seen": self.seen,
            "seconds": self.seconds(),
        }


@dataclass
class State:
    """Where training stands: what ``checkpoint.pt`` saves and ``resume`` restores (besides the weights)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in the current epoch
    perm: torch.Tensor | None = None  # the current epoch's sample order
    sums: dict | None = None  # the current epoch's partial Sums
    best_val_acc: float = float("nan")
    best_epoch: int | None = None
    train_seconds: float = 0.0


def optimizer_step(
    model: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    criterion,
    opt,
    sched,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    grad_clip: float | None = None,
    distiller: Callable[[torch.Tensor, Any, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward through ``forward`` (the model, or its compiled form), loss on float logits, backward, optional
    clipping, optimizer and schedule step; returns (loss, logits). The benchmarks time this same function.
    With a ``distiller`` (``vit_lab.distill``) the loss is its: the teacher sees the batch in the same autocast."""
    with autocast(x.device, precision):
        out = forward(x)
        loss, out = (criterion(out.float(), y), out) if distiller is None else distiller(x, out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    return loss, out


def finite_loss(sums: Sums, state: State) -> float:
    """The epoch's mean loss so far; a NaN or infinite one stops the run (checked every 25 steps)."""
    mean = sums.loss.item() / sums.seen
    if not math.isfinite(mean):
        raise Diverged(
            f"training loss became {mean} at epoch {state.epoch + 1}, step {state.step}; "
            "lower optimizer.lr or set trainer.grad_clip"
        )
    return mean
