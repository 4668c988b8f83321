"""The loggers (vit_lab/loggers/), read back with the trackers' own readers: TensorBoard's EventAccumulator, MLflow's
MlflowClient, and `tensorboard` / `mlflow server` started on loopback. Runs train in-process on TINY budgets, except
the sweep and the server runs, which use the real command."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, one_epoch_cfg, run_train
from omegaconf import open_dict

from vit_lab.callbacks import Callback
from vit_lab.errors import ConfigError, Diverged, Interrupted
from vit_lab.loggers import flat_config
from vit_lab.loggers.tensorboard import tag
from vit_lab.train import train

KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_second", "epoch_seconds", "train_seconds")


class Interrupter(Callback):
    """Sends this process a real SIGINT at the end of epoch ``at``."""

    def __init__(self, at: int = 1) -> None:
        self.at = at

    def on_epoch_end(self, epoch, record):
        if epoch == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def lab(mnist_root, monkeypatch):
    import vit_lab.config

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    monkeypatch.setattr(vit_lab.config, "TRUSTED_TARGETS", (*vit_lab.config.TRUSTED_TARGETS, f"{__name__}.*"))


def interrupting(cfg, at: int = 1):
    with open_dict(cfg):
        cfg.callbacks.stop = {"_target_": f"{__name__}.Interrupter", "at": at}
    return cfg


def read(path: Path):
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- TensorBoard


def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def assert_series_equal_history(run_dir: Path) -> None:
    acc, history = events(run_dir), read(run_dir / "history.json")
    for key in KEYS:
        points = acc.Scalars(tag(key))
        assert [p.step for p in points] == [r["epoch"] for r in history], key  # each epoch once, in order
        assert [p.value for p in points] == pytest.approx([r[key] for r in history], rel=1e-6), key  # float32


def test_tensorboard_scalars_test_results_and_hparams(lab, tmp_path):
    from tensorboard.plugins.hparams import metadata

    cfg = one_epoch_cfg("trainer.epochs=2", "logger=tensorboard")
    train(cfg, tmp_path)
    assert_series_equal_history(tmp_path)
    acc, m = events(tmp_path), read(tmp_path / "metrics.json")
    assert [(p.step, p.value) for p in acc.Scalars("test/acc")] == [(2, pytest.approx(m["test_acc"], rel=1e-6))]
    assert acc.Scalars("hparams/best_val_acc")[0].value == pytest.approx(m["best_val_acc"], rel=1e-6)
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    hparams = {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in start.hparams.items()}
    assert hparams["model.hidden_d"] == 16 and hparams["optimizer._target_"] == "torch.optim.AdamW"
    assert hparams["status"] == "completed" and not any(k.startswith(("logger.", "callbacks.")) for k in hparams)


def test_tensorboard_after_interrupt_and_resume_has_each_epoch_once(lab, tmp_path):
    overrides = ("trainer.epochs=2", "trainer.checkpoint=true", "logger=tensorboard")
    for where in ("new", "same"):  # resumed into a new folder, and in place
        first = tmp_path / f"{where}-first"
        with pytest.raises(Interrupted):
            train(interrupting(one_epoch_cfg(*overrides)), first)
        assert [p.step for p in events(first).Scalars("val/acc")] == [1]
        resumed = tmp_path / f"{where}-resumed" if where == "new" else first
        train(one_epoch_cfg(*overrides, f"resume={first}"), resumed)
        assert_series_equal_history(resumed)
        assert [p.step for p in events(resumed).Scalars("test/acc")] == [2]


# --------------------------------------------------------------------------- CSV


def test_csv_rows_are_the_history_then_the_test_results(lab, tmp_path):
    import csv

    train(one_epoch_cfg("trainer.epochs=2", "logger=csv"), tmp_path)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    history, m = read(tmp_path / "history.json"), read(tmp_path / "metrics.json")
    assert [{k: float(r[k]) for k in KEYS} for r in rows[:2]] == [{k: r[k] for k in KEYS} for r in history]
    assert rows[2]["epoch"] == "2" and float(rows[2]["test_acc"]) == m["test_acc"] and rows[2]["val_acc"] == ""


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for this module's runs (each test uses its own experiment)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def mlflow_cfg(store: str, experiment: str, *overrides: str):
    return one_epoch_cfg(
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={store}",
        f"logger.mlflow.experiment_name={experiment}",
        *overrides,
    )


def only_run(store: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def assert_metrics_equal_history(client, run, run_dir: Path) -> None:
    history = read(run_dir / "history.json")
    for key in KEYS:
        points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda p: p.step)
        assert [(p.step, p.value) for p in points] == [(r["epoch"], r[key]) for r in history], key


def test_mlflow_run_has_the_config_the_history_the_results_and_the_files(lab, tmp_path, store):
    cfg = mlflow_cfg(store, "complete", "trainer.epochs=2")
    train(cfg, tmp_path)
    client, run = only_run(store, "complete")
    m = read(tmp_path / "metrics.json")
    assert run.info.status == "FINISHED" and run.data.tags["vit_lab.status"] == "completed"
    assert run.data.params == {k: str(v) for k, v in flat_config(cfg).items()}
    assert run.data.params["model.hidden_d"] == "16" and "logger.mlflow.tracking_uri" not in run.data.params
    assert_metrics_equal_history(client, run, tmp_path)
    assert run.data.metrics["test_acc"] == m["test_acc"] and run.data.metrics["best_val_acc"] == m["best_val_acc"]
    assert run.data.tags["run_dir"] == str(tmp_path.resolve())
    assert run.data.tags["mlflow.source.git.commit"] == m["git"]["commit"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "history.json"}
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / "dl")))
    assert read(local) == m


def test_mlflow_failed_run_is_failed(lab, tmp_path, store):
    cfg = mlflow_cfg(store, "failed", "trainer.epochs=5", "optimizer.lr=1e6")
    with pytest.raises(Diverged):
        train(cfg, tmp_path)
    _, run = only_run(store, "failed")
    assert run.info.status == "FAILED" and "loss became" in run.data.tags["vit_lab.reason"]


def test_mlflow_interrupted_run_is_killed_then_resumed_in_the_same_run(lab, tmp_path, store):
    overrides = ("trainer.epochs=2", "trainer.checkpoint=true")
    with pytest.raises(Interrupted):
        train(interrupting(mlflow_cfg(store, "resume", *overrides)), tmp_path / "a")
    client, run = only_run(store, "resume")
    assert run.info.status == "KILLED" and run.data.tags["vit_lab.status"] == "interrupted"
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert ckpt["callbacks"]["logger.mlflow"]["run_id"] == run.info.run_id
    train(mlflow_cfg(store, "resume", *overrides, f"resume={tmp_path / 'a'}"), tmp_path / "b")
    client, again = only_run(store, "resume")  # still one run: the same one
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert_metrics_equal_history(client, again, tmp_path / "b")  # epochs 1-2, each once


def test_mlflow_missing_is_one_line_naming_the_extra(lab, monkeypatch, capsys, tmp_path):
    from test_reliability import assert_one_clear_line, cli_run

    monkeypatch.setitem(sys.modules, "mlflow", None)  # what Python does when a package is not installed
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[mlflow\]"'):
        from vit_lab.loggers.mlflow import MLflowLogger

        MLflowLogger()
    proc = cli_run(capsys, monkeypatch, *TINY, "logger=mlflow", f"hydra.run.dir={tmp_path}")
    assert_one_clear_line(proc, "logger=mlflow", ".[mlflow]")


@pytest.mark.slow
def test_a_pruned_sweep_is_one_experiment_with_killed_runs(tmp_path):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_train(
        "-m",
        "hparams_search=vit_optuna",
        *TINY,
        "trainer.epochs=3",
        "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri={store}",
        "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=0.99",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=store)
    assert {e.name for e in client.search_experiments()} == {
        "Default",
        "vit_optuna-mnist",
    }  # the study (and MLflow's own)
    runs = client.search_runs([client.get_experiment_by_name("vit_optuna-mnist").experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "KILLED" and run.data.tags["vit_lab.status"] == "pruned"
        assert {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")} >= {".hydra/config.yaml"}
        run_dir = Path(run.data.tags["run_dir"])
        assert read(run_dir / "metrics.json")["status"] == "pruned"
        assert [p.step for p in events(run_dir).Scalars("val/acc")] == [1]


# --------------------------------------------------------------------------- the trackers' own servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, data: dict | None = None):
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or "null")


@contextlib.contextmanager
def serving(args: list[str], ready: str, log: Path, timeout: float = 60, cwd: Path | None = None):
    """Start a server from this venv's scripts, wait until ``ready`` answers, stop it at the end."""
    script = Path(sys.executable).with_name(args[0])
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(script), *args[1:]], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while fetch(ready) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{args[0]} did not answer within {timeout} s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def fetch(url: str):
    """The answer, or None while the server cannot give it yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:
        return None


def wait_for(check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.3)
    return value


@pytest.mark.slow
def test_tensorboard_server_shows_the_run(lab, tmp_path):
    run_dir = tmp_path / "logs" / "run-a"
    train(one_epoch_cfg("logger=tensorboard"), run_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving(
        ["tensorboard", "--logdir", str(tmp_path / "logs"), "--host", "127.0.0.1", "--port", str(port)],
        f"{base}/data/runs",
        tmp_path / "tensorboard.log",
    ):
        assert wait_for(lambda: "run-a" in json.loads(fetch(f"{base}/data/runs") or "[]")), fetch(f"{base}/data/runs")
        points = json.loads(wait_for(lambda: fetch(f"{base}/data/plugin/scalars/scalars?run=run-a&tag=val/acc")))
    history = read(run_dir / "history.json")
    assert [(step, value) for _, step, value in points] == [
        (r["epoch"], pytest.approx(r["val_acc"], rel=1e-6)) for r in history
    ]


@pytest.mark.slow
def test_mlflow_server_receives_a_run_from_the_command(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/server.db",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with serving(args, f"{base}/health", tmp_path / "mlflow.log", cwd=tmp_path):
        proc = run_train(
            *TINY,
            "trainer.epochs=1",
            "logger=mlflow",
            f"logger.mlflow.tracking_uri={base}",
            f"hydra.run.dir={tmp_path / 'run'}",
            cwd=REPO,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        experiment = get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=vit_lab")["experiment"]
        runs = get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        from mlflow import MlflowClient

        files = {a.path for a in MlflowClient(tracking_uri=base).list_artifacts(runs[0]["info"]["run_id"])}
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
    m = read(tmp_path / "run" / "metrics.json")
    metrics = {x["key"]: x["value"] for x in runs[0]["data"]["metrics"]}
    assert (
        metrics["test_acc"] == m["test_acc"]
        and metrics["val_acc"] == read(tmp_path / "run" / "history.json")[-1]["val_acc"]
    )
    assert {"metrics.json", "history.json", ".hydra"} <= files
