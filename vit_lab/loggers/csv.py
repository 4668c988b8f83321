"""``metrics.csv`` in the run directory: one row per epoch (the history.json record), then a row with the test
results; for spreadsheets and people with no tracker. Rewritten atomically after every epoch."""

from __future__ import annotations

import csv
from pathlib import Path

from omegaconf import DictConfig

from vit_lab.callbacks import Callback
from vit_lab.io import atomic_write
from vit_lab.loggers import history

FILE = "metrics.csv"


class CSVLogger(Callback):
    def __init__(self, filename: str = FILE) -> None:
        self.filename = filename
        self.rows: list[dict] = []
        self.path = Path(filename)

    def on_run_start(self, cfg: DictConfig, run_dir: Path, resumed: bool) -> None:
        self.path = Path(run_dir) / self.filename
        self.rows = history(run_dir) if resumed else []
        self._write()

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        self.rows.append(dict(record))
        self._write()

    def on_run_end(self, metrics: dict, status: str) -> None:
        if status == "completed":
            self.rows.append(
                {
                    "epoch": metrics.get("epochs_completed"),
                    "test_loss": metrics.get("test_loss"),
                    "test_acc": metrics.get("test_acc"),
                }
            )
            self._write()

    def _write(self) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))

        def write(f) -> None:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)

        atomic_write(self.path, write)
