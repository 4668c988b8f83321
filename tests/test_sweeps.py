"""Optuna sweeps (`hparams_search=vit_optuna`): config, storage/resume, failures, pruning, parallel launchers.

End-to-end sweeps run `python -m vit_lab.train -m ...` in a subprocess with tiny budgets and a SQLite study under
tmp_path. TINY fixes depth/width/patch/lr, so the sampled parameter is `model.n_heads` (all choices divide 16); one epoch
per trial except in the pruning test.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, TINY, data_root, run_train
from vit_lab import sweeps
from vit_lab.models.vit import check_vit_shape

STUDY = "vit_optuna-mnist"


def sweep_args(tmp_path: Path, name: str = "s", *extra: str, trials: int = 3, jobs: int = 1) -> list[str]:
    return ["-m", "hparams_search=vit_optuna", *TINY, "trainer.epochs=1", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
            f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.n_jobs={jobs}",
            f"hydra.sweep.dir={tmp_path}/{name}", *extra]


def load(tmp_path: Path, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


# --------------------------------------------------------------------------- config (fast)


def compose_preset(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF)):
        return compose("config", overrides=["hparams_search=vit_optuna", *overrides], return_hydra_config=True)


def test_preset_maximises_val_acc_with_a_seeded_persistent_pruned_study():
    cfg = compose_preset()
    sw = cfg.hydra.sweeper
    assert sw._target_ == "hydra_plugins.vit_lab_sweeper.vit_optuna_sweeper.VitOptunaSweeper"
    assert sw.direction == "maximize"
    assert sw.storage == "sqlite:///outputs/optuna.db"
    assert sw.study_name == "vit_optuna-mnist"
    assert sw.sampler.seed == 0
    assert sw.pruner._target_ == "optuna.pruners.MedianPruner"
    assert set(sw.params) == {"model.patch_size", "model.depth", "model.n_heads", "model.hidden_d", "optimizer.lr"}
    assert sw.params["optimizer.lr"].startswith("tag(log")
    assert cfg.trainer.epochs == 3 and cfg.data.train_limit == 5000 and cfg.data.val_size == 2000  # the per-trial budget
    # microseconds: two sweeps started in the same second get different folders
    assert re.fullmatch(r"outputs/multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", cfg.hydra.sweep.dir)
    fashion = compose_preset("data=fashion_mnist", "hydra/sweeper/pruner=hyperband")
    assert fashion.hydra.sweeper.study_name == "vit_optuna-fashion_mnist"
    assert fashion.hydra.sweeper.pruner._target_ == "optuna.pruners.HyperbandPruner"
    slurm = compose_preset("hydra/launcher=vit_slurm").hydra.launcher
    assert slurm._target_.endswith("submitit_launcher.SlurmLauncher") and slurm.cpus_per_task == 4


def test_every_combination_of_the_search_space_is_a_valid_model():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    cfg = compose_preset()
    dists, fixed, _ = create_params_from_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    assert not fixed
    assert isinstance(dists["optimizer.lr"], optuna.distributions.FloatDistribution) and dists["optimizer.lr"].log
    depth = dists["model.depth"]
    assert (depth.low, depth.high) == (1, 6)
    grid = itertools.product(dists["model.patch_size"].choices, dists["model.n_heads"].choices,
                             dists["model.hidden_d"].choices, range(depth.low, depth.high + 1))
    n = 0
    for patch, heads, width, d in grid:
        check_vit_shape((1, *cfg.data.image_size), patch, width, heads, d, cfg.model.mlp_ratio)
        n += 1
    assert n == 2 * 4 * 3 * 6


def test_helpers_storage_url_override_grammar_and_threads(tmp_path):
    url = sweeps.absolute_storage_url("sqlite:///sub/o.db", cwd=tmp_path)
    assert url == f"sqlite:///{tmp_path}/sub/o.db" and (tmp_path / "sub").is_dir()
    assert sweeps.absolute_storage_url("postgresql://u@db/optuna") == "postgresql://u@db/optuna"
    assert sweeps.to_override_value({"a": "x'y", "b": [1, 2.5, None, True]}) == "{a:'x\\'y',b:[1,2.5,null,true]}"
    assert sweeps.threads_per_job(2, cpus=16) == 8
    assert sweeps.threads_per_job(4, cpus=2) == 1


def test_stale_running_trials_fail_on_restart_but_live_ones_stay(tmp_path):
    """A killed sweep leaves RUNNING trials; the next sweep fails those whose heartbeat is stale, not live ones."""
    from hydra_plugins.vit_lab_sweeper.vit_optuna_sweeper import make_storage

    storage = make_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    stale, live = study.ask(), study.ask()
    storage.record_heartbeat(stale._trial_id)
    import time

    time.sleep(2.2)
    storage.record_heartbeat(live._trial_id)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {stale.number: optuna.trial.TrialState.FAIL, live.number: optuna.trial.TrialState.RUNNING}
    # and the sweeper never crashes on a trial someone else already finished: its tell is dropped
    storage.finished_ids.add(stale._trial_id)
    study.tell(stale, 0.5)
    assert study.get_trials()[stale.number].state == optuna.trial.TrialState.FAIL


# --------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_sweep_records_trials_results_and_resumes(tmp_path):
    ok(run_train(*sweep_args(tmp_path, "first")))
    study = load(tmp_path)
    assert len(study.trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["run_dir"] for t in study.trials} == {str(tmp_path / "first" / str(i)) for i in range(3)}
    for t in study.trials:
        m = metrics(t.user_attrs["run_dir"])
        assert m["status"] == "completed" and m["best_val_acc"] == pytest.approx(t.value)
        assert t.intermediate_values and max(t.intermediate_values.values()) == pytest.approx(t.value)
        assert t.user_attrs["test_acc"] == m["test_acc"]
    results = yaml.safe_load((tmp_path / "first" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(study.best_value)
    assert results["best_params"] == study.best_params
    best = results["summary"]["best_trial"]
    assert best["number"] == study.best_trial.number and best["run_dir"] == study.best_trial.user_attrs["run_dir"]
    assert best["test_acc"] == metrics(best["run_dir"])["test_acc"]

    first = [(t.number, t.state, t.value) for t in study.trials]
    first_files = {i: (tmp_path / "first" / str(i) / "metrics.json").read_text() for i in range(3)}
    ok(run_train(*sweep_args(tmp_path, "first")))  # the same command again, same sweep dir: resumes the study
    study = load(tmp_path)
    assert len(study.trials) == 6 and len({t.number for t in study.trials}) == 6
    assert [(t.number, t.state, t.value) for t in study.trials[:3]] == first  # nothing finished is lost
    # job folders follow trial numbers: the rerun wrote 3, 4, 5 and left the first session's folders alone
    assert [t.user_attrs["run_dir"] for t in study.trials] == [str(tmp_path / "first" / str(i)) for i in range(6)]
    assert {i: (tmp_path / "first" / str(i) / "metrics.json").read_text() for i in range(3)} == first_files
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # the median pruner may now act
    assert all(t.state in done for t in study.trials)
    assert all(metrics(t.user_attrs["run_dir"])["status"] == ("pruned" if t.state.name == "PRUNED" else "completed")
               for t in study.trials)
    assert all((Path(t.user_attrs["run_dir"]) / "metrics.json").is_file() for t in study.trials)
    assert study.user_attrs["vit_lab_sweep_sessions"] == 2


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_sweep_goes_on_up_to_the_failure_rate(tmp_path):
    bad = ["model.n_heads=3", "hydra.sweeper.max_failure_rate=1.0"]  # 3 heads cannot divide hidden_d=16
    ok(run_train(*sweep_args(tmp_path, "bad", *bad, trials=2)))
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    for t in study.trials:
        m = metrics(t.user_attrs["run_dir"])
        assert m["status"] == "failed" and "n_heads=3" in m["reason"] and "n_heads=3" in t.user_attrs["reason"]
        assert not (Path(t.user_attrs["run_dir"]) / "history.json").exists()  # failed fast, no training
    results = yaml.safe_load((tmp_path / "bad" / "optimization_results.yaml").read_text())
    assert results["summary"]["best_trial"] is None and results["summary"]["trials"] == {"fail": 2}
    # with the preset's max_failure_rate (0.5 per batch) a batch of only failures stops the sweep
    proc = run_train(*sweep_args(tmp_path, "stop", "model.n_heads=3", trials=3))
    assert proc.returncode != 0 and "n_heads=3" in proc.stderr
    assert len(load(tmp_path).trials) == 3  # 2 + the one batch that stopped it


@pytest.mark.slow
def test_pruned_trials_are_pruned_in_the_study_and_stop_early(tmp_path):
    prune = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=0.99", "trainer.epochs=3"]
    ok(run_train(*sweep_args(tmp_path, "p", *prune, trials=2)))
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    for t in study.trials:
        m = metrics(t.user_attrs["run_dir"])
        assert m["status"] == "pruned" and "ThresholdPruner" in m["reason"]
        assert m["epochs_completed"] == 1 < m["epochs"] == 3
        assert list(t.intermediate_values) == [1] and t.value == pytest.approx(t.intermediate_values[1])


@pytest.mark.slow
def test_joblib_divides_threads_and_two_sweep_processes_share_one_study(tmp_path):
    ok(run_train(*sweep_args(tmp_path, "joblib", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                             trials=2, jobs=2)))
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in study.trials:
        overrides = yaml.safe_load((Path(t.user_attrs["run_dir"]) / ".hydra" / "overrides.yaml").read_text())
        assert f"device.threads={sweeps.threads_per_job(2)}" in overrides

    # the user's command, twice at once, from one working directory: the preset's own storage
    # (sqlite:///outputs/optuna.db) and sweep folders (unique to the microsecond), here under tmp_path
    cmd = [sys.executable, "-m", "vit_lab.train", "-m", "hparams_search=vit_optuna", *TINY, "trainer.epochs=1",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1"]
    env = {**os.environ, "VIT_LAB_DATA": str(data_root())}
    env.pop("HYDRA_FULL_ERROR", None)
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out[-2000:] + err[-2000:]
    shared = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    assert len(shared.trials) == 4 and sorted(t.number for t in shared.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in shared.trials)
    run_dirs = {Path(t.user_attrs["run_dir"]) for t in shared.trials}
    assert len(run_dirs) == 4 and len({d.parent for d in run_dirs}) == 2  # two sweep folders, no collision
    assert all(d.is_relative_to(tmp_path / "outputs" / "multirun") for d in run_dirs)
    assert shared.user_attrs["vit_lab_sweep_sessions"] == 2


@pytest.mark.slow
def test_submitit_local_sweep_completes(tmp_path):
    ok(run_train(*sweep_args(tmp_path, "sub", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                             trials=1)))
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert metrics(study.trials[0].user_attrs["run_dir"])["status"] == "completed"
    assert (tmp_path / "sub" / ".submitit").is_dir()


def test_settle_records_pruned_failed_and_crashed_jobs_on_their_trials(tmp_path):
    """What the sweeper tells for each kind of job outcome (the plugin's own tell follows `settle`)."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from hydra_plugins.vit_lab_sweeper.vit_optuna_sweeper import TrialFailed, VitOptunaSweeper, make_storage

    sweeper = VitOptunaSweeper(OmegaConf.create({"_target_": "optuna.samplers.RandomSampler"}), "maximize", None,
                               "s", 3, 1, 0.0, None, None)
    sweeper.storage = make_storage(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.create_study(study_name="s", storage=sweeper.storage, direction="maximize")

    def job(name: str, status: dict, value, job_status=JobStatus.COMPLETED):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps(status))
        hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}})
        return run_dir, JobReturn(hydra_cfg=hydra_cfg, status=job_status, _return_value=value)

    pruned = study.ask()
    pruned.report(0.4, 1)
    run_dir, ret = job("pruned", {"status": "pruned", "reason": "pruned by MedianPruner"}, float("nan"))
    sweeper.settle(pruned, ret)
    assert ret.return_value == 0.4  # a float, so the plugin does not count it as a failure ...
    study.tell(pruned, ret.return_value)
    assert study.trials[pruned.number].state == optuna.trial.TrialState.PRUNED  # ... and the study stores PRUNED
    assert study.trials[pruned.number].value == 0.4
    assert study.trials[pruned.number].user_attrs["run_dir"] == str(run_dir)

    failed = study.ask()
    _, ret = job("failed", {"status": "failed", "reason": "training loss became nan"}, float("nan"))
    sweeper.settle(failed, ret)
    assert ret.status == JobStatus.FAILED and isinstance(ret._return_value, TrialFailed)  # counts as a failure
    assert study.trials[failed.number].user_attrs["reason"] == "training loss became nan"

    crashed = study.ask()
    run_dir, ret = job("crashed", {"status": "running"}, RuntimeError("CUDA out of memory"), JobStatus.FAILED)
    sweeper.settle(crashed, ret)
    assert metrics(run_dir) == {"status": "failed", "reason": "RuntimeError: CUDA out of memory"}
    assert study.trials[crashed.number].user_attrs["reason"] == "RuntimeError: CUDA out of memory"


def test_joblib_sweep_from_another_folder_with_a_relative_data_root(tmp_path):
    """Launcher workers see the launch folder's data even when VIT_LAB_DATA is relative."""
    rel = os.path.relpath(data_root(), tmp_path)
    ok(run_train("-m", *TINY, "trainer.epochs=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 "model.n_heads=1,2", "hydra.sweep.dir=sweep", cwd=tmp_path, env={"VIT_LAB_DATA": rel}))
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    for path in runs:
        m = json.loads(path.read_text())
        assert m["status"] == "completed" and m["data_root"] == str(data_root().resolve())
