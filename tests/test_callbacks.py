"""The callback protocol (vit_lab/callbacks.py): what callbacks see and when, how runs end, and that a failing logger
costs nothing. Runs train in-process on one-epoch TINY budgets; callbacks defined here are let through the lab's
``_target_`` whitelist for the test."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
from pathlib import Path

import pytest
from conftest import one_epoch_cfg
from omegaconf import OmegaConf, open_dict

from vit_lab.callbacks import Callback, Callbacks, EarlyStopping, StopTraining
from vit_lab.errors import ConfigError, Diverged, Interrupted, RunStopped
from vit_lab.train import train

CALLS: list[tuple] = []


class Recorder(Callback):
    """Records every call, with copies of what it was given."""

    def __init__(self, stop_at: int | None = None, interrupt_at: int | None = None) -> None:
        self.stop_at, self.interrupt_at = stop_at, interrupt_at

    def on_run_start(self, cfg, run_dir, resumed):
        CALLS.append(("start", Path(run_dir), resumed))

    def on_epoch_end(self, epoch, record):
        CALLS.append(("epoch", epoch, dict(record)))
        if epoch == self.interrupt_at:  # a real SIGINT, at the end of this epoch
            os.kill(os.getpid(), signal.SIGINT)
        if epoch == self.stop_at:
            raise RunStopped("pruned", f"stopped by the test after epoch {epoch}")

    def on_run_end(self, metrics, status):
        CALLS.append(("end", status, json.loads(json.dumps(metrics))))


class Broken(Callback):
    """A logger that raises on every call."""

    def on_run_start(self, cfg, run_dir, resumed):
        raise OSError(28, "No space left on device")

    def on_epoch_end(self, epoch, record):
        raise ConnectionError("tracking server unreachable")

    def on_run_end(self, metrics, status):
        raise ConnectionError("tracking server unreachable")


@pytest.fixture
def lab(mnist_root, monkeypatch):
    """Train in-process on the real data, with this module's classes allowed as `_target_`s."""
    import vit_lab.config

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    monkeypatch.setattr(vit_lab.config, "TRUSTED_TARGETS", (*vit_lab.config.TRUSTED_TARGETS, f"{__name__}.*"))
    CALLS.clear()


def with_entries(cfg, group: str, **entries):
    with open_dict(cfg):
        for name, node in entries.items():
            cfg[group][name] = node
    return cfg


def node(cls: type, **kwargs) -> dict:
    return {"_target_": f"{__name__}.{cls.__name__}", **kwargs}


def read(path: Path):
    return json.loads(path.read_text())


def test_callbacks_see_start_every_epoch_and_the_end(lab, tmp_path):
    cfg = with_entries(one_epoch_cfg("trainer.epochs=2", "logger=none"), "callbacks", rec=node(Recorder))
    train(cfg, tmp_path)
    history, metrics = read(tmp_path / "history.json"), read(tmp_path / "metrics.json")
    assert [c[0] for c in CALLS] == ["start", "epoch", "epoch", "end"]
    assert CALLS[0] == ("start", tmp_path, False)
    assert [c[2] for c in CALLS[1:3]] == history and [c[1] for c in CALLS[1:3]] == [1, 2]
    assert CALLS[3] == ("end", "completed", metrics)  # the final metrics.json, already written


def test_failed_run_ends_the_callbacks_as_failed(lab, tmp_path):
    cfg = with_entries(
        one_epoch_cfg("trainer.epochs=5", "optimizer.lr=1e6", "logger=none"), "callbacks", rec=node(Recorder)
    )
    with pytest.raises(Diverged):
        train(cfg, tmp_path)
    end = CALLS[-1]
    assert end[:2] == ("end", "failed") and "loss became" in end[2]["reason"]
    assert read(tmp_path / "metrics.json")["status"] == "failed"


def test_a_callback_that_stops_the_run_still_lets_the_loggers_see_that_epoch(lab, tmp_path):
    cfg = with_entries(one_epoch_cfg("trainer.epochs=3", "logger=csv"), "callbacks", rec=node(Recorder, stop_at=1))
    with pytest.raises(RunStopped):
        train(cfg, tmp_path)
    m = read(tmp_path / "metrics.json")
    assert m["status"] == "pruned" and m["epochs_completed"] == 1 and "stopped by the test" in m["reason"]
    assert CALLS[-1][:2] == ("end", "pruned")
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")  # the header and epoch 1


def test_interrupted_run_ends_as_interrupted_and_resumes_with_its_callback_state(lab, tmp_path):
    stopper = {"_target_": "vit_lab.callbacks.EarlyStopping", "monitor": "val_acc", "patience": 5}
    overrides = ("trainer.epochs=3", "trainer.checkpoint=true", "logger=csv")
    cfg = with_entries(one_epoch_cfg(*overrides), "callbacks", rec=node(Recorder, interrupt_at=1), stop=stopper)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path)
    assert CALLS[-1][:2] == ("end", "interrupted")
    assert read(tmp_path / "metrics.json")["status"] == "interrupted"
    saved = __import__("torch").load(tmp_path / "checkpoint.pt", weights_only=True)["callbacks"]
    assert saved["callbacks.stop"]["best"] == read(tmp_path / "history.json")[0]["val_acc"]

    CALLS.clear()
    cfg = with_entries(one_epoch_cfg(*overrides, f"resume={tmp_path}"), "callbacks", rec=node(Recorder), stop=stopper)
    train(cfg, tmp_path)  # in place
    assert CALLS[0] == ("start", tmp_path, True) and [c[1] for c in CALLS[1:3]] == [2, 3]
    assert CALLS[-1][:2] == ("end", "completed")
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3", "3"]  # each epoch once, then the test row


def test_a_logger_that_raises_on_every_call_costs_nothing(lab, tmp_path, caplog):
    train(one_epoch_cfg("trainer.epochs=2", "logger=csv"), tmp_path / "plain")
    cfg = with_entries(one_epoch_cfg("trainer.epochs=2", "logger=csv"), "logger", broken=node(Broken))
    with caplog.at_level(logging.WARNING, logger="vit_lab.train"):
        train(cfg, tmp_path / "broken")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "logger.broken" in warnings[0] and "No space left" in warnings[0]
    assert "\n" not in warnings[0]
    volatile = ("started", "finished", "pid", "train_seconds", "train_images_per_second")
    a, b = (read(tmp_path / d / "metrics.json") for d in ("plain", "broken"))
    assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
    assert b["status"] == "completed"
    # the logger after the broken one still logged every epoch
    assert (tmp_path / "broken" / "metrics.csv").read_text().count("\n") == 4  # header, 2 epochs, test


def test_early_stopping_counts_epochs_without_improvement():
    stop = EarlyStopping(monitor="val_loss", mode="min", patience=2, min_delta=0.01)
    stop.on_epoch_end(1, {"val_loss": 1.0})
    stop.on_epoch_end(2, {"val_loss": 0.5})
    stop.on_epoch_end(3, {"val_loss": 0.495})  # within min_delta: no improvement
    saved = stop.state_dict()
    again = EarlyStopping(monitor="val_loss", mode="min", patience=2, min_delta=0.01)
    again.load_state_dict(saved)
    for s in (stop, again):
        with pytest.raises(StopTraining, match="val_loss did not improve for 2 epochs"):
            s.on_epoch_end(4, {"val_loss": math.nan})
    with pytest.raises(ConfigError, match="monitor='val_accuracy'.*val_acc"):
        EarlyStopping(monitor="val_accuracy").on_epoch_end(1, {"val_acc": 0.5})
    with pytest.raises(ConfigError, match="patience=0"):
        EarlyStopping(patience=0)


def test_early_stopping_ends_training_and_the_run_still_tests(lab, tmp_path):
    cfg = one_epoch_cfg(
        "trainer.epochs=4",
        "callbacks=early_stopping",
        "callbacks.early_stopping.monitor=train_loss",
        "callbacks.early_stopping.patience=1",
        "logger=none",
    )  # mode max: a falling loss never improves
    train(cfg, tmp_path)
    m = read(tmp_path / "metrics.json")
    assert m["status"] == "completed" and m["epochs_completed"] == 2 < m["epochs"]
    assert "early stopping" in m["stopped_early"] and 0 <= m["test_acc"] <= 1


def test_callbacks_and_loggers_come_from_their_config_groups():
    cfg = OmegaConf.create(
        {
            "callbacks": {"a": {"_target_": "vit_lab.callbacks.EarlyStopping"}, "off": None},
            "logger": {"csv": {"_target_": "vit_lab.loggers.csv.CSVLogger"}},
        }
    )
    cbs = Callbacks.from_config(cfg)
    assert [name for name, _, _ in cbs.entries] == ["callbacks.a", "logger.csv"]
    assert [type(c).__name__ for c in cbs] == ["EarlyStopping", "CSVLogger"]
