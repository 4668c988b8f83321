"""TensorBoard through ``torch.utils.tensorboard.SummaryWriter``: event files in the run directory, so
``tensorboard --logdir outputs`` shows single runs and every sweep trial side by side.

Per epoch (the epoch is the step): ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``lr``,
``images_per_second``, ``epoch_seconds``, ``train/seconds``; at the end ``test/acc`` and ``test/loss``, and the
flattened config with ``add_hparams`` (metrics ``hparams/best_val_acc``, ``hparams/test_acc``, ``hparams/test_loss``;
the status as a hyperparameter), which the HParams tab compares across a sweep's trials.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vit_lab.callbacks import Callback
from vit_lab.errors import ConfigError
from vit_lab.loggers import flat_config, history

RESULTS = ("best_val_acc", "test_acc", "test_loss")


def tag(key: str) -> str:
    """A record key as a TensorBoard tag: ``val_acc`` -> ``val/acc``, so each split's curves share a section."""
    split, _, rest = key.partition("_")
    return f"{split}/{rest}" if split in ("train", "val", "test") and rest else key


class TensorBoardLogger(Callback):
    """Scalars per epoch, the test results and the hyperparameters of one run, in its run directory."""

    def __init__(self, flush_secs: int = 30, hparams: bool = True) -> None:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(
                "logger=tensorboard needs the tensorboard package: pip install tensorboard "
                "(or choose logger=csv / logger=none)"
            ) from None
        self.flush_secs, self.hparams = flush_secs, hparams
        self.writer: Any = None
        self.cfg: DictConfig | None = None
        self.last_epoch = 0

    def on_run_start(self, cfg: DictConfig, run_dir: Path, resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        # purge_step=0: TensorBoard drops whatever an earlier process wrote in this folder (an in-place resume or a
        # rerun), and a resumed run writes its earlier epochs again below: one series, no duplicate steps
        self.writer = SummaryWriter(str(run_dir), purge_step=0, flush_secs=self.flush_secs)
        for record in history(run_dir) if resumed else []:
            self._scalars(record)
        self.writer.flush()

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        self._scalars(record)
        self.writer.flush()  # visible in TensorBoard now, not after flush_secs

    def _scalars(self, record: dict) -> None:
        step = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(tag(key), value, step)
        self.last_epoch = step

    def on_run_end(self, metrics: dict, status: str) -> None:
        if self.writer is None:
            return
        step = metrics.get("epochs_completed") or self.last_epoch
        for key in ("test_acc", "test_loss"):
            if isinstance(metrics.get(key), (int, float)):
                self.writer.add_scalar(tag(key), metrics[key], step)
        if self.hparams and self.cfg is not None:
            results = {
                f"hparams/{k}": float(metrics[k]) if isinstance(metrics.get(k), (int, float)) else math.nan
                for k in RESULTS
            }
            # run_name=".": the same folder (torch would make a new run in a timestamped subfolder)
            self.writer.add_hparams(
                {**flat_config(self.cfg), "status": status}, results, run_name=".", global_step=step
            )
        self.writer.close()
        self.writer = None
