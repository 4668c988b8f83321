"""The callback protocol: code that runs when a run starts, after each of its epochs, and when it ends.

The trainer builds one object for every entry of ``cfg.callbacks`` and ``cfg.logger`` (``{name: {_target_: ...}}``,
the config groups ``conf/callbacks/`` and ``conf/logger/``) and calls, callbacks first, in config order:

- ``on_run_start(cfg, run_dir, resumed)``: once, before the first epoch this process trains. On a resumed run,
  ``run_dir/history.json`` already holds the epochs trained before.
- ``on_epoch_end(epoch, record)``: after each epoch (1-based), once its record is in ``history.json``; the
  epoch's checkpoint (with the callbacks' state) and ``metrics.json`` follow, whatever they do. It may end the run by
  raising :class:`vit_lab.errors.RunStopped` (Optuna's ``TrialPruned``:
  status ``pruned``, no test), or end training early with :class:`StopTraining` (the run tests and completes).
- ``on_run_end(metrics, status)``: once after ``on_run_start``, on every ending, with the final ``metrics.json``
  content (already written) and ``status``: ``completed``, ``failed``, ``interrupted`` or ``pruned``.
- ``state_dict()`` / ``load_state_dict(state)``: what a callback needs to continue a resumed run (the MLflow run id,
  early stopping's counter). It is saved in ``checkpoint.pt`` and handed back before ``on_run_start``.

Every entry sees every call even when an earlier one stops the run (a pruned epoch is still logged); anything
else a callback raises fails the run. A logger (``cfg.logger``) is a callback whose failures must not cost the run:
its first error prints one warning line and switches it off; ``metrics.json`` stays complete.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vit_lab.errors import ConfigError, RunStopped

log = logging.getLogger("vit_lab.train")

STATUSES = ("completed", "failed", "interrupted", "pruned")


class Callback:
    """Base class: every hook is a no-op, so a callback overrides only what it needs."""

    def on_run_start(self, cfg: DictConfig, run_dir: Path, resumed: bool) -> None:
        """The run starts (or continues, when ``resumed``) in ``run_dir``."""

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        """Epoch ``epoch`` (1-based) ended; ``record`` is its history.json entry."""

    def on_run_end(self, metrics: dict, status: str) -> None:
        """The run ended with ``status``; ``metrics`` is its final metrics.json."""

    def state_dict(self) -> dict:
        """What a resumed run needs (saved in checkpoint.pt)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, before ``on_run_start`` of a resumed run."""


class StopTraining(Exception):
    """Raised by ``on_epoch_end`` to end training after this epoch; the run still tests and completes."""


class EarlyStopping(Callback):
    """Stop training when ``monitor`` (a history key) has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_acc", mode: str = "max", patience: int = 5, min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"callbacks.early_stopping.mode={mode!r} must be max or min")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"callbacks.early_stopping.patience={patience!r} must be an integer >= 1")
        self.monitor, self.sign, self.patience, self.min_delta = (
            monitor,
            1 if mode == "max" else -1,
            patience,
            min_delta,
        )
        self.best, self.wait = -math.inf, 0

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        value = record.get(self.monitor)
        if value is None:
            raise ConfigError(
                f"callbacks.early_stopping.monitor={self.monitor!r} is not in the history; "
                f"use one of {', '.join(record)}"
            )
        if math.isfinite(value) and self.sign * value > self.best + self.min_delta:
            self.best, self.wait = self.sign * value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            raise StopTraining(f"{self.monitor} did not improve for {self.patience} epochs (early stopping)")

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state.get("best", -math.inf), state.get("wait", 0)


class Callbacks:
    """The run's callbacks and loggers, called in order. A logger that raises is warned about once and left out."""

    def __init__(
        self, callbacks: dict[str, Callback] | None = None, loggers: dict[str, Callback] | None = None
    ) -> None:
        self.entries = [(f"callbacks.{k}", c, False) for k, c in (callbacks or {}).items()]
        self.entries += [(f"logger.{k}", c, True) for k, c in (loggers or {}).items()]
        self.started: set[str] = set()
        self.failed: set[str] = set()

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Callbacks:
        """Build ``cfg.callbacks`` and ``cfg.logger`` (dicts of ``_target_`` nodes; a null entry is skipped)."""
        from vit_lab.config import build

        def build_all(group: str) -> dict[str, Callback]:
            return {name: build(node) for name, node in (cfg.get(group) or {}).items() if node is not None}

        return cls(build_all("callbacks"), build_all("logger"))

    def __iter__(self):
        return iter(cb for _, cb, _ in self.entries)

    def _call(self, method: str, *args: Any) -> None:
        """Call ``method`` on every entry, even when one stops the run, then raise the first callback's exception."""
        first: BaseException | None = None
        for name, cb, is_logger in self.entries:
            if name in self.failed or (method != "on_run_start" and name not in self.started):
                continue
            self.started.add(name)
            try:
                getattr(cb, method)(*args)
            except Exception as e:  # noqa: BLE001 - a logger's failure must never cost the run
                if not is_logger or isinstance(e, (RunStopped, StopTraining)):
                    first = first or e
                    continue
                self.failed.add(name)
                detail = " ".join(str(e).split())[:300]
                log.warning(
                    "%s failed in %s (%s: %s); it is off for the rest of this run, metrics.json and "
                    "history.json are complete",
                    name,
                    method,
                    type(e).__name__,
                    detail,
                )
        if first is not None:
            raise first

    def on_run_start(self, cfg: DictConfig, run_dir: Path, resumed: bool) -> None:
        self._call("on_run_start", cfg, run_dir, resumed)

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        self._call("on_epoch_end", epoch, record)

    def on_run_end(self, metrics: dict, status: str) -> None:
        self._call("on_run_end", metrics, status)

    def state_dict(self) -> dict[str, dict]:
        return {name: cb.state_dict() for name, cb, _ in self.entries}

    def load_state_dict(self, states: dict[str, dict]) -> None:
        for name, cb, _ in self.entries:
            if name in states:
                cb.load_state_dict(states[name])
