"""Preempted and timed-out submitit jobs (vit_lab/preemption.py): step-exact checkpoint, requeue, resume in the same
run directory, the same Optuna trial; the run directory's lock lets the requeued job in, and no one else.

The jobs run under `hydra/launcher=submitit_local`, submitit's own local executor, whose controller sends the
preemption signal 30 s before `timeout_min` and restarts a job that asks to be requeued, as Slurm does. No Slurm
cluster runs in CI (see the README's Slurm section and .ci/slurm_single_node.sh).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO, data_root, run_train
from vit_lab import preemption
from vit_lab.train import claim_run_dir

USR = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))  # what submitit sends
SMALL = [
    "data.val_size=256",
    "data.test_limit=256",
    "trainer.batch_size=16",
    "model.depth=1",
    "model.hidden_d=16",
    "model.patch_size=7",
    "model.n_heads=2",
    "optimizer.lr=0.01",
    "scheduler.warmup_epochs=0.2",
    "trainer.progress=false",
    "trainer.checkpoint=true",
    "device=cpu",
    "device.threads=1",
]
RUN = [*SMALL, "trainer.epochs=3", "data.train_limit=9600"]  # 600 steps per epoch


def read(path: Path) -> dict | list:
    return json.loads(path.read_text())


def results(run_dir: Path) -> tuple:
    """What an uninterrupted run and a requeued one must share exactly (not the timings)."""
    m, h = read(run_dir / "metrics.json"), read(run_dir / "history.json")
    curves = [(r["epoch"], r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"], r["lr"]) for r in h]
    return m["status"], m["epochs_completed"], m["test_acc"], m["test_loss"], m["best_val_acc"], curves


def popen(*args: str) -> subprocess.Popen:
    env = {**os.environ, "VIT_LAB_DATA": str(data_root())}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "vit_lab.train", *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def submitit_log(sweep_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((sweep_dir / ".submitit").rglob("*_log.*")))


def pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` waits for process ``pid`` (Linux: the pending-signal masks in /proc/<pid>/status)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return any(int(line.split()[1], 16) >> (sig - 1) & 1 for line in lines if line.startswith(("SigPnd:", "ShdPnd:")))


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


def epochs_done(run_dir: Path) -> int:
    return len(read(run_dir / "history.json")) if (run_dir / "history.json").is_file() else 0


@pytest.mark.slow
def test_timeout_requeues_and_the_job_resumes_to_the_uninterrupted_metrics(tmp_path):
    """submitit's timeout signal: the job checkpoints at a step, is requeued, resumes in its own run directory and
    ends with the metrics and history of an uninterrupted run (CPU, one thread, same seed).

    submitit_local signals a job 30 s after it starts (timeout_min=1, 30 s before the end). So that the signal finds
    the job mid-epoch on any machine, the test pauses it there (SIGSTOP) until the signal is pending, then lets it
    go."""
    sweep, run_dir = tmp_path / "sweep", tmp_path / "sweep" / "0"
    proc = popen(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=1", *RUN, f"hydra.sweep.dir={sweep}"
    )
    try:
        wait_until(lambda: epochs_done(run_dir) >= 1, proc)
        pid = int((run_dir / ".lock").read_text().split()[1])
        time.sleep(0.3)  # into epoch 2
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: pending(pid, USR), proc, timeout=90)  # the controller's timeout signal, not the test's
        os.kill(pid, signal.SIGCONT)
        ref = run_train(*RUN, f"hydra.run.dir={tmp_path / 'ref'}")  # meanwhile, on the other core
        assert ref.returncode == 0, ref.stderr[-3000:]
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    log = submitit_log(sweep)
    assert f"Caught signal {USR.name}" in log and "Requeued job" in log, log[-3000:]
    m = read(run_dir / "metrics.json")
    assert m["resumed_from"] == str(run_dir / "checkpoint.pt") and m["job_id"]  # the same folder, not a new one
    assert re.search(r"resumed from .* at epoch 1, step [1-9]", (run_dir / "train.log").read_text())  # mid-epoch
    assert results(run_dir) == results(tmp_path / "ref")  # exactly


@pytest.mark.slow
def test_preempted_trial_resumes_and_reports_to_the_same_trial(tmp_path):
    """A vit_optuna trial preempted mid-epoch (the signal `scancel --signal` delivers) is requeued, resumes in its run
    directory and reports its remaining epochs to the same trial, which the study ends with as COMPLETE."""
    sweep, db = tmp_path / "sweep", f"sqlite:///{tmp_path}/optuna.db"
    proc = popen(
        "-m",
        "hparams_search=vit_optuna",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        *SMALL,
        "trainer.epochs=3",
        "data.train_limit=19200",
        f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.storage={db}",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.n_jobs=1",
    )
    run_dir = sweep / "0"
    wait_until(lambda: epochs_done(run_dir) >= 1, proc)
    holder = (run_dir / ".lock").read_text()
    assert ", submitit job " in holder  # the lock names the job, which its requeued self recognises
    time.sleep(0.5)  # into epoch 2 (1200 steps, ~2.5 s)
    os.kill(int(holder.split()[1]), USR)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Requeued job" in submitit_log(sweep)
    assert re.search(r"resumed from .* at epoch 1, step [1-9]", (run_dir / "train.log").read_text())  # mid-epoch
    study = optuna.load_study(study_name="vit_optuna-mnist", storage=db)
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["run_dir"] == str(run_dir)
    m = read(run_dir / "metrics.json")
    assert m["status"] == "completed" and m["resumed_from"] == str(run_dir / "checkpoint.pt")
    assert trial.value == m["best_val_acc"]
    history = read(run_dir / "history.json")
    assert trial.intermediate_values == {r["epoch"]: r["val_acc"] for r in history} and len(history) == 3


def hold_lock(run_dir: Path, job: str, seconds: float) -> subprocess.Popen:
    """Another process (a submitit job `job`) holding the run directory's lock for `seconds`."""
    code = (
        "import sys, time; from vit_lab import preemption; from pathlib import Path; "
        "assert preemption.claim(Path(sys.argv[1])) is None; print('held', flush=True); time.sleep(float(sys.argv[2]))"
    )
    env = {**os.environ, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": job}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir), str(seconds)], env=env, text=True, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_requeued_job_waits_for_its_predecessor_and_other_writers_are_refused(tmp_path, monkeypatch):
    from vit_lab.errors import RunDirBusy
    from vit_lab.io import release_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    assert preemption.job_id() == "4242" and preemption.signals() == (USR,)
    predecessor = hold_lock(run_dir, "4242", 1.5)  # the same job, still letting go
    started = time.monotonic()
    assert claim_run_dir(run_dir) is True  # waited for it, then took the lock
    assert 0.5 < time.monotonic() - started < 30 and predecessor.wait(timeout=30) == 0
    assert (run_dir / ".lock").read_text().endswith(", submitit job 4242\n")
    release_dir(run_dir)

    other = hold_lock(run_dir, "777", 60)  # a different job (or any other run) is refused at once
    try:
        started = time.monotonic()
        with pytest.raises(RunDirBusy, match=f"in use by another run \\(pid {other.pid} .*submitit job 777\\)"):
            claim_run_dir(run_dir)
        assert time.monotonic() - started < 1
        monkeypatch.delenv("SUBMITIT_EXECUTOR")  # outside submitit too
        with pytest.raises(RunDirBusy):
            claim_run_dir(run_dir)
    finally:
        other.kill()
        other.wait()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setattr(preemption, "PREDECESSOR_WAIT_S", 0.5)
    stuck = hold_lock(run_dir, "4242", 60)  # a predecessor that never lets go: refused after the wait
    try:
        with pytest.raises(RunDirBusy, match="submitit job 4242"):
            claim_run_dir(run_dir)
    finally:
        stuck.kill()
        stuck.wait()


def test_resume_only_a_run_directory_of_this_same_job(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted", "job_id": "12_3"}))
    assert preemption.resume_from(run_dir, "checkpoint.pt", "metrics.json") is None  # not a submitit job
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert preemption.resume_from(run_dir, "checkpoint.pt", "metrics.json") == str(run_dir)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")  # another task of the array: its own folder, not this one
    assert preemption.resume_from(run_dir, "checkpoint.pt", "metrics.json") is None


def test_vit_slurm_requeues_timed_out_trials():
    """submitit_slurm's max_num_timeout=0 would end every timed-out trial as FAIL instead of requeueing it."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF)):
        launcher = compose("config", overrides=["hydra/launcher=vit_slurm"], return_hydra_config=True).hydra.launcher
    assert launcher.max_num_timeout >= 1 and launcher.signal_delay_s >= 60
