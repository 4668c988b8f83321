"""Accuracy-vs-cost Pareto sweeps (`hparams_search=vit_pareto`): the preset, the task's `objectives` (what
`vit_lab.train` returns to a sweep), a tiny real Pareto sweep read back from its study, its job folders and
`vit_lab.compare`, and the one line a pruner on a multi-objective study gives.

The end-to-end sweep varies depth and width (so the parameter counts differ) and includes a width that 4 heads
cannot divide, so some trials fail at once: the front is checked against every complete trial by brute force.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF, TINY, run_train
from vit_lab import sweeps
from vit_lab.compare.__main__ import main as compare_main
from vit_lab.errors import ConfigError

STUDY = "vit_pareto-mnist"
# TINY without the keys this sweep searches: depth and width vary; 4 heads cannot divide a width of 6 (a FAIL)
FIXED = [o for o in TINY if not o.startswith(("model.depth", "model.hidden_d"))]
SPACE = ["model.depth=range(1,3)", "model.hidden_d=choice(6,16,32)", "model.n_heads=4"]


def compose_pareto(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF)):
        return compose("config", overrides=["hparams_search=vit_pareto", *overrides], return_hydra_config=True)


def pareto_args(tmp_path: Path, *extra: str, trials: int = 8) -> list[str]:
    return [
        "-m",
        "hparams_search=vit_pareto",
        *FIXED,
        *SPACE,
        "trainer.epochs=1",
        "logger=none",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        f"hydra.sweeper.n_trials={trials}",
        "hydra.sweeper.max_failure_rate=1.0",
        f"hydra.sweep.dir={tmp_path}/pareto",
        *extra,
    ]


def compare(capsys, *args) -> tuple[int, str, str]:
    """`python -m vit_lab.compare args...`, in this process."""
    rc = compare_main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def dominates(a: list[float], b: list[float]) -> bool:
    """a beats b: accuracy at least as high, parameters at most as many, and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


# --------------------------------------------------------------------------- config and objectives (fast)


def test_preset_maximises_accuracy_minimises_parameters_with_seeded_tpe_and_no_pruner():
    cfg, single = compose_pareto(), compose_pareto("hparams_search=vit_optuna")
    sw = cfg.hydra.sweeper
    assert list(sw.direction) == ["maximize", "minimize"] and list(cfg.objectives) == ["best_val_acc", "n_params"]
    assert sw.sampler._target_ == "optuna.samplers.TPESampler" and sw.sampler.seed == 0 and sw.sampler.constant_liar
    assert sw.pruner._target_ == "optuna.pruners.NopPruner"
    assert sw.study_name == STUDY and sw.storage == single.hydra.sweeper.storage
    assert sw.params == single.hydra.sweeper.params  # vit_optuna's search space and per-trial budget
    assert (cfg.trainer.epochs, cfg.data.train_limit) == (single.trainer.epochs, single.data.train_limit)
    # the single-objective preset and a plain run still return the best validation accuracy alone
    assert list(single.objectives) == ["best_val_acc"] and sw.sampler.seed == single.hydra.sweeper.sampler.seed


def test_objectives_pick_metrics_and_failures_return_one_nan_per_objective():
    cfg = OmegaConf.create({"objectives": ["best_val_acc", "n_params"]})
    metrics = {"best_val_acc": 0.875, "n_params": 12345, "test_acc": 0.9}
    assert sweeps.objective_values(sweeps.objectives(cfg), metrics) == (0.875, 12345.0)
    one = OmegaConf.create({"objectives": ["best_val_acc"]})
    value = sweeps.objective_values(sweeps.objectives(one), metrics)
    assert value == 0.875 and isinstance(value, float)  # a number, as a single-objective sweeper expects
    assert sweeps.objectives(OmegaConf.create({})) == ["best_val_acc"]
    pair = sweeps.failed_values(cfg)
    assert len(pair) == 2 and all(math.isnan(v) for v in pair)
    assert math.isnan(sweeps.failed_values(one)) and isinstance(sweeps.failed_values(one), float)
    for bad in (["test_acc"], ["best_val_acc", "seconds"], []):
        with pytest.raises(ConfigError, match=r"objectives=.*best_val_acc, val_acc, n_params, train_seconds"):
            sweeps.objectives(OmegaConf.create({"objectives": bad}))


def test_a_cost_spanning_decades_is_drawn_on_a_log_axis(tmp_path):
    import matplotlib.image

    from vit_lab.compare import plots

    def study_of(values):
        study = optuna.create_study(directions=["maximize", "minimize"])
        for v in values:
            study.add_trial(optuna.trial.create_trial(values=list(v)))
        return study

    wide = study_of([(0.90, 12_000), (0.95, 150_000), (0.97, 1_200_000), (0.93, 900_000)])
    assert plots.log_axes(wide) == [False, True]
    assert plots.log_axes(study_of([(0.90, 12_000), (0.95, 60_000)])) == [False, False]
    assert plots.log_axes(study_of([(-1.0, 10.0), (0.5, 1000.0)])) == [False, True]  # only positive values
    out, n = plots.plot_pareto([{"_study": wide}], tmp_path / "front.png")
    assert n == 3 and matplotlib.image.imread(out).shape[:2] == (600, 800)


# --------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_tiny_pareto_sweep_front_values_compare_summary_and_plot(tmp_path, capsys):
    proc = run_train(*pareto_args(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cannot be pruned" not in proc.stdout + proc.stderr  # the preset's nop pruner: no warning
    assert f"on the Pareto front (python -m vit_lab.compare {tmp_path / 'pareto'} lists them)" in proc.stdout
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/optuna.db")
    S = optuna.trial.TrialState
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["best_val_acc", "n_params"] and len(study.trials) == 8
    complete = [t for t in study.trials if t.state == S.COMPLETE]
    failed = [t for t in study.trials if t.state == S.FAIL]
    assert len(complete) + len(failed) == 8 and failed and len(complete) >= 3
    assert len({t.values[1] for t in complete}) >= 2  # the costs differ: a real trade-off to find
    for t in complete:  # each trial's values are its job's metrics.json
        m = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert m["status"] == "completed" and t.values == [m["best_val_acc"], m["n_params"]]
        assert t.intermediate_values == {}  # Optuna takes no per-epoch reports for several objectives
    for t in failed:  # a failed job in multi-objective mode: FAIL, no values, its reason kept
        m = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert t.values is None and m["status"] == "failed" and "hidden_d" in t.user_attrs["reason"]
    front = {t.number for t in complete if not any(dominates(o.values, t.values) for o in complete)}
    assert {t.number for t in study.best_trials} == front
    solutions = yaml.safe_load((tmp_path / "pareto" / "optimization_results.yaml").read_text())["solutions"]
    assert sorted(tuple(s["values"]) for s in solutions) == sorted(tuple(t.values) for t in study.best_trials)

    rc, out, err = compare(capsys, tmp_path / "pareto")
    assert rc == 0, err[-3000:]
    text = " ".join(out.split())  # the summary wraps at the terminal's width
    assert f"study '{STUDY}'" in text and "maximize best_val_acc, minimize n_params" in text
    assert f"Pareto front (trials no other trial beats in every objective): {len(front)}" in text
    for t in study.best_trials:
        assert f"trial {t.number}: best_val_acc {t.values[0]:.4g}, n_params {t.values[1]:.4g}" in text
    rc, out, _ = compare(capsys, tmp_path / "pareto", "--format", "json")
    summary = json.loads(out)["sweeps"][0]
    assert {p["trial"] for p in summary["pareto"]} == front
    accs = [p["values"]["best_val_acc"] for p in summary["pareto"]]
    assert accs == sorted(accs, reverse=True)  # most accurate first

    png = tmp_path / "front.png"
    rc, _, err = compare(capsys, tmp_path / "pareto", "--plot", png, "--pareto")
    assert rc == 0 and f"Pareto front ({len(front)} Pareto-optimal trials)" in err, err
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (600, 800) and pixels[..., :3].std() > 0.05  # a drawn figure, not a blank canvas


@pytest.mark.slow
def test_a_pruner_on_a_multi_objective_sweep_is_one_warning_and_a_wrong_objective_count_one_error(tmp_path):
    proc = run_train(*pareto_args(tmp_path, "hydra/sweeper/pruner=median", trials=0))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "pruned" in line]
    assert len(lines) == 1, lines
    assert "a multi-objective study cannot be pruned" in lines[0] and "pruning is off" in lines[0]
    assert "MedianPruner is ignored" in lines[0] and "hydra/sweeper/pruner=nop" in lines[0]

    proc = run_train(*pareto_args(tmp_path, "objectives=[best_val_acc]"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vit_lab: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "objectives=['best_val_acc']" in errors[0] and "direction=['maximize', 'minimize']" in errors[0]
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert study.trials == []  # stopped before any trial


@pytest.mark.slow
def test_an_unknown_objective_fails_a_single_run_in_one_line(tmp_path):
    proc = run_train(*TINY, "objectives=[test_acc]", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("vit_lab: error: objectives=['test_acc']: list one")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"
