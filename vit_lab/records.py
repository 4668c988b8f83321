"""The run directory's files: metrics.json, history.json, checkpoint.pt and best.pt, each written atomically.

``metrics.json`` is the run's record and its source of truth (trackers only mirror it): status, results, the
device, library versions and the code's git commit. The caller (``vit_lab.train``) holds the directory's lock.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vit_lab import preemption
from vit_lab.errors import ConfigError
from vit_lab.io import atomic_write, read_json, write_json
from vit_lab.run_files import BEST, CHECKPOINT, HISTORY, METRICS

log = logging.getLogger("vit_lab.train")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import hydra
    import optuna
    import torchvision

    from vit_lab import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "hydra": hydra.__version__,
        "optuna": optuna.__version__,
        "vit_lab": __version__,
    }


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, Any] | None:
    """The commit of the checkout this code runs from and whether its tracked files differ (None outside one)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, or an installed copy, not a checkout
        return None
    return {"commit": commit, "dirty": dirty}


def load_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """Find and read a checkpoint (a run directory or the file itself), with errors a user can act on."""
    path = Path(path)
    file = path / CHECKPOINT if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"resume={path}: no checkpoint found at {file}; point resume at a run directory or its {CHECKPOINT}"
        )
    try:
        return file, torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise ConfigError(
            f"resume={path}: {file} is not a readable checkpoint ({type(e).__name__}); start a fresh run"
        ) from None


def architecture_mismatch(model: torch.nn.Module, state: dict, shown: int = 4) -> list[str]:
    """How ``state`` (a state dict) differs from ``model``'s: missing and unexpected keys, other shapes; [] if none."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)
    ]
    return [
        f"{label}: {', '.join(items[:shown])}{' ...' if len(items) > shown else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if items
    ]


def check_compatible(model: torch.nn.Module, state: dict, where: Path) -> None:
    """A checkpoint of another architecture names the mismatching keys instead of a torch traceback."""
    problems = architecture_mismatch(model, state)
    if problems:
        raise ConfigError(
            f"resume={where} holds a different architecture ({'; '.join(problems)}); "
            "use the original run's model overrides"
        )


class Run:
    """The run directory's files: metrics, history, checkpoint and best weights, always written atomically."""

    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        self.dir = run_dir
        self.cfg = cfg
        for name in (CHECKPOINT, BEST, METRICS, HISTORY):  # temp files of a writer killed in this directory before
            for stale in self.dir.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        self.metrics: dict[str, Any] = {
            "status": "running",
            "started": now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "epochs": cfg.trainer.epochs,
            "epochs_completed": 0,
        }
        job = preemption.job_id()
        if job is not None:  # a submitit/Slurm job: its requeued self finds its own run directory by this id
            self.metrics["job_id"] = job
        self.history: list[dict] = []

    def write_metrics(self, **updates: Any) -> None:
        self.metrics.update(updates)
        write_json(self.dir / METRICS, self.metrics)

    def write_history(self) -> None:
        write_json(self.dir / HISTORY, self.history)

    def add_epoch(self, record: dict) -> None:
        self.history.append(record)
        log.info(
            "epoch %d/%d train_loss %.4f train_acc %.2f%% val_loss %.4f val_acc %.2f%% lr %.2e %.0f img/s %.1fs",
            record["epoch"],
            self.cfg.trainer.epochs,
            record["train_loss"],
            100 * record["train_acc"],
            record["val_loss"],
            100 * record["val_acc"],
            record["lr"],
            record["images_per_second"],
            record["epoch_seconds"],
        )
        self.write_history()

    def save_checkpoint(self, state: dict) -> None:
        if self.cfg.trainer.checkpoint:
            atomic_write(self.dir / CHECKPOINT, lambda f: torch.save(state, f), mode="wb")

    def save_best(self, model: torch.nn.Module, epoch: int, val_acc: float) -> None:
        """The best validation weights so far, for ``python -m vit_lab.evaluate RUN --weights best``."""
        if self.cfg.trainer.checkpoint:
            best = {"model": model.state_dict(), "epoch": epoch, "val_acc": val_acc}
            atomic_write(self.dir / BEST, lambda f: torch.save(best, f), mode="wb")

    def carry_best(self, checkpoint_file: Path) -> None:
        """A run resumed into a new folder brings the best weights along from the checkpoint's folder."""
        source, target = checkpoint_file.parent / BEST, self.dir / BEST
        if not self.cfg.trainer.checkpoint or not source.is_file() or source.resolve() == target.resolve():
            return
        data = source.read_bytes()
        atomic_write(target, lambda f: f.write(data), mode="wb")


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json, or {} when it is missing or unreadable."""
    try:
        return read_json(run_dir / METRICS)
    except (OSError, ValueError):
        return {}


def finish_with_error(run_dir: Path, status: str, reason: str) -> None:
    """Record why a run ended in its metrics.json, keeping what was already there."""
    path = run_dir / METRICS
    metrics = read_metrics(run_dir)
    metrics.update(status=status, reason=reason, finished=now())
    try:
        write_json(path, metrics)
    except OSError:
        pass
