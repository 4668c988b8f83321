"""Optuna sweeps (`hparams_search=vit_optuna`): config, storage/resume, failures, pruning, parallel launchers, and
parity with the official sweeper on a toy task (tests/toy_task.py, configs in tests/toy_conf/).

End-to-end sweeps run `python -m vit_lab.train -m ...` in a subprocess with tiny budgets and a SQLite study under
tmp_path. TINY fixes depth/width/patch/lr, so the sampled parameter is `model.n_heads` (all choices divide 16); one
epoch
per trial except in the pruning test. Storages and independent workers: tests/test_storages.py, tests/test_workers.py.
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
from omegaconf import OmegaConf

from benchmarks.screening_fidelity import BUDGETS, PRESET_BUDGET
from tests.conftest import CONF, REPO, TINY, data_root, run_module, run_train
from vit_lab import sweeps
from vit_lab.models.vit import check_vit_shape

STUDY = "vit_optuna-mnist"


def sweep_args(tmp_path: Path, name: str = "s", *extra: str, trials: int = 3, jobs: int = 1) -> list[str]:
    return [
        "-m",
        "hparams_search=vit_optuna",
        *TINY,
        "trainer.epochs=1",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.n_jobs={jobs}",
        f"hydra.sweep.dir={tmp_path}/{name}",
        *extra,
    ]


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
    assert sw.total_trials is None and sw.n_jobs == 2
    assert cfg.callbacks.optuna_trial._target_ == "vit_lab.sweeps.OptunaTrialCallback"
    assert cfg.callbacks.optuna_trial.last_epoch == cfg.trainer.epochs
    assert set(sw.params) == {"model.patch_size", "model.depth", "model.n_heads", "model.hidden_d", "optimizer.lr"}
    assert sw.params["optimizer.lr"].startswith("tag(log")
    # the per-trial budget is the screening budget chosen by benchmarks/screening_fidelity.py, same validation set
    assert (cfg.trainer.epochs, cfg.data.train_limit) == BUDGETS[PRESET_BUDGET] and cfg.data.val_size == 5000
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
    grid = itertools.product(
        dists["model.patch_size"].choices,
        dists["model.n_heads"].choices,
        dists["model.hidden_d"].choices,
        range(depth.low, depth.high + 1),
    )
    n = 0
    for patch, heads, width, d in grid:
        check_vit_shape((1, *cfg.data.image_size), patch, width, heads, d, cfg.model.mlp_ratio)
        n += 1
    assert n == 2 * 4 * 3 * 6


def test_a_job_gets_its_trial_through_one_hydra_setting():
    """The trial travels in hydra.job.env_set, quoted for Hydra's grammar, so any storage URL or study name survives."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in ["it's", "back\\slash'q", "end\\", "x\\\\'", "", "'", "${oc.env:HOME}"]:
        assert parser.parse_overrides([f"k={sweeps.quote(text)}"])[0].value() == text
    override = sweeps.trial_env_override("postgresql+psycopg://u:p'w@db/x", "st${u}dy", 7, {"_target_": "a", "n": None})
    parsed = parser.parse_overrides([override])[0]
    assert parsed.key_or_group == f"hydra.job.env_set.{sweeps.TRIAL_ENV}" and "$" not in parsed.value()
    assert json.loads(parsed.value()) == {
        "storage": "postgresql+psycopg://u:p'w@db/x",
        "study": "st${u}dy",
        "trial": 7,
        "pruner": {"_target_": "a", "n": None},
    }
    assert sweeps.threads_per_job(2, cpus=16) == 8
    assert sweeps.threads_per_job(4, cpus=2) == 1


def test_the_trial_callback_reports_prunes_and_is_a_no_op_outside_a_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv(sweeps.TRIAL_ENV, raising=False)
    assert sweeps.current_trial() is None
    idle = sweeps.OptunaTrialCallback(last_epoch=3)
    idle(1, {"val_acc": 0.5})  # outside a sweep: nothing to report to

    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    trial = study.ask()
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.9}
    monkeypatch.setenv(
        sweeps.TRIAL_ENV, json.dumps({"storage": url, "study": "s", "trial": trial.number, "pruner": pruner})
    )
    callback = sweeps.OptunaTrialCallback()
    callback.on_run_start(OmegaConf.create({"trainer": {"epochs": 2}}))
    assert callback.last_epoch == 2
    with pytest.raises(sweeps.TrialPruned, match="pruned by ThresholdPruner after epoch 1"):
        callback.on_epoch_end(1, {"val_acc": 0.5})
    callback(2, {"val_acc": 0.6})  # the last epoch is reported, never pruned
    assert optuna.load_study(study_name="s", storage=url).trials[0].intermediate_values == {1: 0.5, 2: 0.6}

    multi = optuna.create_study(study_name="m", storage=url, directions=["maximize", "minimize"])
    monkeypatch.setenv(
        sweeps.TRIAL_ENV, json.dumps({"storage": url, "study": "m", "trial": multi.ask().number, "pruner": None})
    )
    sweeps.OptunaTrialCallback(last_epoch=2)(1, {"val_acc": 0.5})  # several objectives: Optuna takes no reports
    assert multi.trials[0].intermediate_values == {}


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
    assert all(
        metrics(t.user_attrs["run_dir"])["status"] == ("pruned" if t.state.name == "PRUNED" else "completed")
        for t in study.trials
    )
    assert all((Path(t.user_attrs["run_dir"]) / "metrics.json").is_file() for t in study.trials)
    assert study.user_attrs["vit_lab_sweep_sessions"] == 2


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_sweep_goes_on_up_to_the_failure_rate(tmp_path):
    bad = ["model.n_heads=3", "hydra.sweeper.max_failure_rate=1.0"]  # 3 heads cannot divide hidden_d=16
    proc = run_train(*sweep_args(tmp_path, "bad", *bad, trials=2))
    # every trial of the sweep failed: one line, non-zero (as the official sweeper, which finds no best trial)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vit_lab: error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "none of the 2 trials of this sweep finished" in lines[0] and "n_heads=3" in lines[0]
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
    ok(run_train(*sweep_args(tmp_path, "joblib", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", trials=2, jobs=2)))
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in study.trials:
        overrides = yaml.safe_load((Path(t.user_attrs["run_dir"]) / ".hydra" / "overrides.yaml").read_text())
        assert f"device.threads={sweeps.threads_per_job(2)}" in overrides
        assert list(t.intermediate_values) == [1]  # each joblib job reported to its own trial

    # the user's command, twice at once, from one working directory: the preset's own storage
    # (sqlite:///outputs/optuna.db) and sweep folders (unique to the microsecond), here under tmp_path
    cmd = [
        sys.executable,
        "-m",
        "vit_lab.train",
        "-m",
        "hparams_search=vit_optuna",
        *TINY,
        "trainer.epochs=1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
    ]
    env = {**os.environ, "VIT_LAB_DATA": str(data_root())}
    env.pop("HYDRA_FULL_ERROR", None)
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
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
    ok(
        run_train(
            *sweep_args(tmp_path, "sub", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", trials=1)
        )
    )
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert metrics(study.trials[0].user_attrs["run_dir"])["status"] == "completed"
    assert list(study.trials[0].intermediate_values) == [1]  # the submitit job reported to its trial
    assert (tmp_path / "sub" / ".submitit").is_dir()


def test_each_job_outcome_is_told_as_complete_pruned_or_fail():
    """What the sweeper tells Optuna for every kind of job, and which failures count against max_failure_rate."""
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.vit_lab_sweeper.outcomes import outcome

    S = optuna.trial.TrialState

    def job(value, status=JobStatus.COMPLETED):
        return JobReturn(status=status, _return_value=value)

    cases = [  # (job, metrics.json, objectives) -> (state, values, counts against the failure rate)
        (job(0.8), {"status": "completed"}, 1, S.COMPLETE, [0.8], False),
        (job(float("inf")), {}, 1, S.COMPLETE, [float("inf")], False),  # Optuna stores infinities
        (job((37.0, 24.25)), {}, 2, S.COMPLETE, [37.0, 24.25], False),  # a direction list
        (job(float("nan")), {"status": "pruned", "reason": "pruned by MedianPruner"}, 1, S.PRUNED, None, False),
        (job(optuna.TrialPruned("x"), JobStatus.FAILED), {}, 1, S.PRUNED, None, False),  # a task's own pruning
        (job(float("nan")), {"status": "failed", "reason": "training loss became nan"}, 1, S.FAIL, None, True),
        (job(float("nan")), {}, 1, S.FAIL, None, False),  # NaN is no value: FAIL, the sweep goes on (upstream)
        (job(RuntimeError("CUDA out of memory"), JobStatus.FAILED), {}, 1, S.FAIL, None, True),
        (job("oops"), {}, 1, S.FAIL, None, True),
        (job(0.5), {}, 2, S.FAIL, None, True),
        (job((1.0, 2.0, 3.0)), {}, 2, S.FAIL, None, True),
        # vit_lab.train in a multi-objective sweep returns NaN per objective when it stops; metrics.json says why
        (job((float("nan"),) * 2), {"status": "failed", "reason": "training loss became nan"}, 2, S.FAIL, None, True),
        (job((float("nan"),) * 2), {"status": "pruned", "reason": "pruned by the task"}, 2, S.PRUNED, None, False),
        (job((float("nan"), 5706.0)), {}, 2, S.FAIL, None, False),
    ]
    for ret, metrics, n, state, values, counts in cases:
        got = outcome(ret, metrics, n)
        assert (got.state, got.values, got.counts) == (state, values, counts), (ret.return_value, metrics)
    assert outcome(*cases[5][:3]).reason == "training loss became nan"
    assert outcome(*cases[7][:3]).reason == "RuntimeError: CUDA out of memory"
    assert "not a list of 2 numbers" in outcome(*cases[9][:3]).reason


def test_a_crashed_job_is_recorded_in_its_metrics_and_on_its_trial(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.vit_lab_sweeper.vit_optuna_sweeper import VitOptunaSweeper

    sweeper = VitOptunaSweeper(
        OmegaConf.create({"_target_": "optuna.samplers.RandomSampler"}), "maximize", None, "s", 3, 1, 0.0, None, None
    )
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize")
    run_dir = tmp_path / "crashed"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"status": "running"}))
    ret = JobReturn(
        hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}}),
        status=JobStatus.FAILED,
        _return_value=RuntimeError("CUDA out of memory"),
    )
    trial = study.ask()
    assert sweeper._settle(study, trial, ret).counts
    assert metrics(run_dir) == {"status": "failed", "reason": "RuntimeError: CUDA out of memory"}
    stored = study.trials[trial.number]
    assert stored.state == optuna.trial.TrialState.FAIL
    assert stored.user_attrs == {
        "run_dir": str(run_dir),
        "status": "failed",
        "reason": "RuntimeError: CUDA out of memory",
    }
    # a trial that another worker already failed (stale heartbeat) keeps that verdict: no crash, no change
    late = study.ask()
    study.tell(late, state=optuna.trial.TrialState.FAIL)
    ok_ret = JobReturn(hydra_cfg=ret.hydra_cfg, status=JobStatus.COMPLETED, _return_value=0.9)
    sweeper._settle(study, late, ok_ret)
    assert study.trials[late.number].state == optuna.trial.TrialState.FAIL


def test_joblib_sweep_from_another_folder_with_a_relative_data_root(tmp_path):
    """Launcher workers see the launch folder's data even when VIT_LAB_DATA is relative."""
    rel = os.path.relpath(data_root(), tmp_path)
    ok(
        run_train(
            "-m",
            *TINY,
            "trainer.epochs=1",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "model.n_heads=1,2",
            "hydra.sweep.dir=sweep",
            cwd=tmp_path,
            env={"VIT_LAB_DATA": rel},
        )
    )
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    for path in runs:
        m = json.loads(path.read_text())
        assert m["status"] == "completed" and m["data_root"] == str(data_root().resolve())


# --------------------------------------------------------------------------- upstream parity (toy task, slow)


def toy(
    tmp_path: Path, config: str, *extra: str, sweeper: str = "vit_optuna", name: str = "sweep", storage: bool = True
) -> subprocess.CompletedProcess:
    """`python -m tests.toy_task -m --config-name <config> hydra/sweeper=<sweeper>`: upstream's example configs,
    switched to this sweeper on the command line."""
    db = [f"hydra.sweeper.storage=sqlite:///{tmp_path}/{name}.db"] if storage else []
    return run_module(
        "tests.toy_task",
        "-m",
        "--config-name",
        config,
        f"hydra/sweeper={sweeper}",
        *db,
        f"hydra.sweep.dir={tmp_path}/{name}",
        *extra,
        cwd=REPO,
    )


def toy_study(tmp_path: Path, study: str, name: str = "sweep") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path}/{name}.db")


def results(tmp_path: Path, name: str = "sweep") -> dict:
    return yaml.safe_load((tmp_path / name / "optimization_results.yaml").read_text())


@pytest.mark.slow
def test_parity_single_objective_samples_and_reports_what_upstream_does(tmp_path):
    """The same seeded TPE study with both sweepers: the same trials, values and optimization_results.yaml keys."""
    ok(toy(tmp_path, "sphere", sweeper="optuna", name="upstream"))
    ok(toy(tmp_path, "sphere", name="ours"))
    theirs, ours = toy_study(tmp_path, "sphere", "upstream"), toy_study(tmp_path, "sphere", "ours")
    assert [(t.params, t.value) for t in ours.trials] == [(t.params, t.value) for t in theirs.trials]
    assert len(ours.trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in ours.trials)
    mine = results(tmp_path, "ours")
    assert {k: mine[k] for k in ("name", "best_params", "best_value")} == results(tmp_path, "upstream")
    assert mine["summary"]["best_trial"]["run_dir"] == str(tmp_path / "ours" / str(ours.best_trial.number))
    # a job's config is the task's own: nothing added to it (the trial travels in the Hydra config)
    job = yaml.safe_load((tmp_path / "ours" / "0" / ".hydra" / "config.yaml").read_text())
    assert set(job) == {"x", "y", "z"}


@pytest.mark.slow
def test_parity_direction_list_gives_a_pareto_front_and_switches_pruning_off(tmp_path):
    proc = ok(toy(tmp_path, "multi"))
    assert "a multi-objective study cannot be pruned" in proc.stdout and "pruning is off" in proc.stdout
    study = toy_study(tmp_path, "multi-objective")
    assert len(study.trials) == 8 and all(len(t.values) == 2 for t in study.trials)
    solutions = results(tmp_path)["solutions"]
    assert solutions and sorted(tuple(s["values"]) for s in solutions) == sorted(
        tuple(t.values) for t in study.best_trials
    )
    for a in solutions:  # no solution dominates another
        assert not any(
            all(p <= q for p, q in zip(b["values"], a["values"])) and b["values"] != a["values"] for b in solutions
        )


@pytest.mark.slow
def test_parity_grid_sampler_visits_each_point_once(tmp_path):
    ok(toy(tmp_path, "grid"))  # n_trials=20 is cut to the grid's 9 points
    study = toy_study(tmp_path, "grid")
    points = sorted((t.params["x"], t.params["y"]) for t in study.trials)
    assert points == sorted(itertools.product([-1, 0, 1], [-1.0, -0.5, 0.0]))
    assert results(tmp_path)["best_value"] == 0.0


@pytest.mark.slow
def test_parity_custom_search_space(tmp_path):
    ok(toy(tmp_path, "custom", "max_z_difference_from_x=0.3"))
    for t in toy_study(tmp_path, "custom-search-space").trials:
        assert abs(t.params["z"] - t.params["x"]) <= 0.3 and 0 <= t.params["w"] <= 1
    assert {"x", "y", "z", "w"} == set(results(tmp_path)["best_params"])


@pytest.mark.slow
def test_nan_returns_fail_and_the_sweep_goes_on_but_an_all_failed_sweep_exits_non_zero(tmp_path):
    ok(
        toy(tmp_path, "sphere", "+nan_above=0", "hydra.sweeper.n_trials=4", name="nan")
    )  # max_failure_rate 0.0, as upstream's default: NaN is no failure of the job
    states = {t.state for t in toy_study(tmp_path, "sphere", "nan").trials}
    assert states == {optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE}

    proc = toy(
        tmp_path,
        "sphere",
        "+error=true",
        "hydra.sweeper.max_failure_rate=1.0",
        "hydra.sweeper.n_trials=2",
        name="all_failed",
    )
    assert proc.returncode != 0 and "none of the 2 trials of this sweep finished" in proc.stderr
    assert results(tmp_path, "all_failed")["summary"]["trials"] == {"fail": 2}
    # over max_failure_rate, the job's own error and traceback, as upstream
    proc = toy(tmp_path, "sphere", "+error=true", "hydra.sweeper.n_trials=2", name="stopped")
    assert proc.returncode != 0 and "RuntimeError: cfg.error is True" in proc.stderr
    assert len(toy_study(tmp_path, "sphere", "stopped").trials) == 1  # the first batch stopped it


@pytest.mark.slow
def test_joblib_jobs_of_a_task_without_device_get_their_trial_and_can_prune(tmp_path):
    proc = ok(
        toy(
            tmp_path,
            "sphere",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.n_trials=4",
            "+report.prune_above=0",
        )
    )
    study = toy_study(tmp_path, "sphere")
    assert len(study.trials) == 4
    for t in study.trials:  # each job reported to its own trial, from a joblib worker process
        assert t.user_attrs["job_saw_trial"] == t.number and list(t.intermediate_values) == [0]
        assert t.state == (optuna.trial.TrialState.PRUNED if t.params["x"] > 0 else optuna.trial.TrialState.COMPLETE)
        overrides = yaml.safe_load((Path(t.user_attrs["run_dir"]) / ".hydra" / "overrides.yaml").read_text())
        assert not any(o.startswith("device.threads") for o in overrides)  # no device key: nothing to divide
    assert "Could not override" not in proc.stderr
