"""Loggers: callbacks that mirror a run into a tracker (config group ``conf/logger/``, several at once).

- ``tensorboard.TensorBoardLogger`` (``logger=tensorboard``, the default): event files in the run directory.
- ``mlflow.MLflowLogger`` (``logger=mlflow``, ``pip install -e ".[mlflow]"``): one MLflow run per job.
- ``csv.CSVLogger`` (``logger=csv``): ``metrics.csv`` in the run directory, for people with no tracker.

``metrics.json`` and ``history.json`` stay the source of truth; a logger's failure costs only that logger
(``vit_lab.callbacks.Callbacks`` warns once and switches it off).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vit_lab.io import read_json
from vit_lab.run_files import HISTORY

# Bookkeeping, never hyperparameters: the sweep's per-trial callback and the trackers' own settings (whose URIs may
# carry credentials).
NOT_PARAMS = ("callbacks", "logger")


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as ``{"model.depth": 4, ...}``: scalars kept, lists as JSON, bookkeeping left out."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            out[prefix[:-1]] = json.dumps(node)
        else:
            out[prefix[:-1]] = node

    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    walk({k: v for k, v in container.items() if k not in NOT_PARAMS}, "")
    return out


def history(run_dir: Path) -> list[dict]:
    """The epochs recorded so far (a resumed run's earlier epochs are there before it starts)."""
    path = Path(run_dir) / HISTORY
    return read_json(path) if path.is_file() else []
