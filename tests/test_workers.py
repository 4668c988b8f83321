"""Independent sweep workers: several processes run the same `-m hparams_search=vit_optuna` command against one
storage (a real PostgreSQL server on loopback, a journal file), each asking, training and telling on its own.

One worker is killed with SIGKILL in the middle of a trial: its trial turns FAIL once its heartbeat is older than the
grace period, the others finish theirs, and a restarted worker fills the study's budget (`total_trials`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import MICRO, data_root
from vit_lab import storages

STUDY = "vit_optuna-mnist"
BUDGET = [*MICRO, "device.threads=1"]


def worker_cmd(storage: str) -> list[str]:
    """The command every worker runs: one trial at a time, 2 per worker, 6 in the study."""
    return [
        sys.executable,
        "-m",
        "vit_lab.train",
        "-m",
        "hparams_search=vit_optuna",
        *BUDGET,
        "trainer.epochs=4",
        "hydra/sweeper/pruner=nop",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.total_trials=6",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
    ]


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "VIT_LAB_DATA": str(data_root())}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def runs(tmp_path: Path) -> dict[Path, dict]:
    found = {}
    for path in tmp_path.glob("outputs/multirun/*/*/*/metrics.json"):
        try:
            found[path.parent] = json.loads(path.read_text())
        except ValueError:  # never half-written (atomic writes), but be safe while polling
            continue
    return found


def kill_one_mid_trial(tmp_path: Path, workers: list[subprocess.Popen]) -> int:
    """SIGKILL the first worker seen with a trial past its first epoch and not finished; returns its pid."""
    pids = {w.pid: w for w in workers}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for metrics in runs(tmp_path).values():
            if metrics["status"] == "running" and 1 <= metrics["epochs_completed"] < 4 and metrics["pid"] in pids:
                os.kill(metrics["pid"], signal.SIGKILL)
                pids[metrics["pid"]].communicate(timeout=30)
                return metrics["pid"]
        assert all(w.poll() is None for w in workers), "a worker ended before one could be killed mid-trial"
        time.sleep(0.02)
    raise AssertionError("no trial was seen mid-run")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "journal"])
def test_three_workers_one_killed_mid_trial_and_restarted_fill_the_study(kind, tmp_path, request):
    # plain postgresql:// (the driver is picked), a journal file relative to the workers' folder
    storage = (
        request.getfixturevalue("postgres_url").replace("postgresql+psycopg://", "postgresql://")
        if kind == "postgres"
        else "journal:///outputs/optuna.log"
    )
    cmd = worker_cmd(storage)
    workers = [start(cmd, tmp_path) for _ in range(3)]
    killed = kill_one_mid_trial(tmp_path, workers)
    killed_at = time.monotonic()
    logs = []
    for w in [w for w in workers if w.pid != killed] + ["restart"]:
        if w == "restart":
            time.sleep(max(0.0, 3.5 - (time.monotonic() - killed_at)))  # past the grace period
            w = start(cmd, tmp_path)
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, out[-2000:] + err[-2000:]
        logs.append(out + err)

    study = optuna.load_study(study_name=STUDY, storage=storages.open_storage(storages.resolve_url(storage, tmp_path)))
    by_state: dict[str, list] = {}
    for t in study.trials:
        by_state.setdefault(t.state.name, []).append(t)
    dead = [d for d, m in runs(tmp_path).items() if m["pid"] == killed and m["status"] == "running"]
    assert len(dead) == 1 and len(by_state["FAIL"]) == 1  # the killed worker's trial, failed by another worker
    assert dead[0].name == str(by_state["FAIL"][0].number)  # job folders are named by trial number
    assert len(by_state["COMPLETE"]) == 6 and set(by_state) == {"COMPLETE", "FAIL"}  # the budget, filled
    assert sorted(t.number for t in study.trials) == list(range(7))  # distinct numbers, none lost
    assert study.user_attrs["vit_lab_sweep_sessions"] == 4  # three workers and the restart
    run_dirs = set()
    for t in by_state["COMPLETE"]:  # each trial's folder ran that trial's parameters and holds its result
        run_dir = Path(t.user_attrs["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["best_val_acc"] == pytest.approx(t.value)
        assert t.user_attrs["test_acc"] == metrics["test_acc"]
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        assert all(f"{k}={v}" in overrides for k, v in t.params.items())
        run_dirs.add(run_dir)
    assert len(run_dirs) == 6
    stale = f"marked stale RUNNING trials [{by_state['FAIL'][0].number}] as FAIL"
    assert sum(stale in log for log in logs) == 1, logs
