"""Optuna sweeps: the job side of a trial, and the helpers the `vit_optuna` sweeper shares with it.

The sweeper (``hydra_plugins/vit_lab_sweeper``) asks Optuna for a trial and launches a job with its parameters; it
hands the job its trial through one environment variable (``VIT_OPTUNA_TRIAL``, set with ``hydra.job.env_set``), so
the task's own config is never touched. In the job, :func:`current_trial` returns that trial (any task may report
intermediate values and raise ``optuna.TrialPruned``), and :class:`OptunaTrialCallback` (``callbacks.optuna_trial``
of the ``vit_optuna`` preset) reports validation accuracy after each epoch and stops a trial the pruner rejects,
which ``vit_lab.train`` records as ``status: pruned`` in metrics.json. The sweeper tells Optuna PRUNED.

This module imports neither torch nor ``vit_lab.train`` at import time: the sweeper process imports it too.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from vit_lab.callbacks import Callback
from vit_lab.errors import ConfigError, RunStopped

# Sweeper-written keys of a trial's user attributes (visible in optuna-dashboard).
RUN_DIR, STATUS, REASON, TEST_ACC = "run_dir", "status", "reason", "test_acc"
TRIAL_ENV = "VIT_OPTUNA_TRIAL"  # {"storage", "study", "trial" (number), "pruner" (an instantiable config or null)}
PRUNERS = ("optuna.pruners.*",)
# metrics.json keys a job can return to a sweep (the config's `objectives`); never the test accuracy, which must
# stay unseen by the search
OBJECTIVES = ("best_val_acc", "val_acc", "n_params", "train_seconds")
_STORAGES: dict[str, Any] = {}


# --------------------------------------------------------------------------- job side


def trial_env_override(storage: str, study_name: str, number: int, pruner: dict | None) -> str:
    """The Hydra override that gives one job its trial (a Hydra setting: the task config stays as it is)."""
    spec = json.dumps({"storage": storage, "study": study_name, "trial": number, "pruner": pruner})
    spec = spec.replace("$", "\\u0024")  # never an interpolation for OmegaConf; JSON reads it back as "$"
    return f"++hydra.job.env_set.{TRIAL_ENV}={quote(spec)}"


def trial_spec() -> dict | None:
    """The trial the sweeper handed this job (``VIT_OPTUNA_TRIAL``): storage, study, trial number, pruner; or None."""
    raw = os.environ.get(TRIAL_ENV)
    return json.loads(raw) if raw else None


def current_trial() -> Any:
    """This job's Optuna trial (``optuna.trial.Trial``, with the sweep's pruner), or None outside a sweep of the
    ``vit_optuna`` sweeper or when its study is in memory."""
    spec = trial_spec()
    if spec is None:
        return None
    import optuna
    from hydra.utils import instantiate

    from vit_lab import storages

    if spec["storage"] not in _STORAGES:  # one per process: a worker runs many jobs, each opening its trial
        _STORAGES[spec["storage"]] = storages.open_storage(spec["storage"])
    storage = _STORAGES[spec["storage"]]
    pruner = (
        instantiate(spec["pruner"], _execution_whitelist_=PRUNERS) if spec.get("pruner") else optuna.pruners.NopPruner()
    )
    study = optuna.load_study(
        study_name=spec["study"], storage=storage, pruner=pruner, sampler=optuna.samplers.RandomSampler()
    )
    # Optuna offers no public way to reopen a running trial in another process; its storage interface maps the
    # number to an id (pyproject.toml pins optuna to the tested range)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(spec["study"]), spec["trial"]
    )
    return optuna.trial.Trial(study, trial_id)


class TrialPruned(RunStopped):
    """The pruner stopped this trial. ``vit_lab.train.main`` records ``status`` in metrics.json and returns NaN."""

    def __init__(self, reason: str) -> None:
        super().__init__("pruned", reason)

    def __reduce__(self):
        return type(self), (str(self),)


class OptunaTrialCallback(Callback):
    """Epoch callback of a sweep job: report ``metric`` to the job's Optuna trial, stop the run when the pruner says so.

    A no-op outside a ``vit_optuna`` sweep, and for multi-objective studies (Optuna prunes single objectives only).
    The last epoch is never pruned: the run has finished by then. Called as ``on_epoch_end(epoch, record)`` or as
    ``callback(epoch, record)``.
    """

    def __init__(self, last_epoch: int | None = None, metric: str = "val_acc", trial: Any = None) -> None:
        self.trial = trial if trial is not None else current_trial()
        self.last_epoch, self.metric = last_epoch, metric
        if self.trial is not None and len(self.trial.study.directions) > 1:
            self.trial = None

    def on_run_start(self, cfg: Any, run_dir: Any = None, resumed: bool = False) -> None:
        if self.last_epoch is None:
            from omegaconf import OmegaConf

            self.last_epoch = OmegaConf.select(cfg, "trainer.epochs")

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        value = record.get(self.metric)
        if self.trial is None or value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), epoch)
        if self.last_epoch is not None and epoch >= self.last_epoch:
            return
        if self.trial.should_prune():
            raise TrialPruned(
                f"trial {self.trial.number} pruned by {type(self.trial.study.pruner).__name__} "
                f"after epoch {epoch} ({self.metric} {value:.4f})"
            )

    def on_run_end(self, metrics: dict, status: str) -> None:
        pass

    def __call__(self, epoch: int, record: dict) -> None:
        self.on_epoch_end(epoch, record)


def objectives(cfg: Any) -> list[str]:
    """The config's ``objectives``: the metrics.json keys ``vit_lab.train`` returns, checked before any training."""
    names = _objective_names(cfg)
    bad = [n for n in names if n not in OBJECTIVES]
    if not names or bad:
        raise ConfigError(
            f"objectives={names}: list one or more of {', '.join(OBJECTIVES)} (the values the job "
            f"returns to a sweep, e.g. objectives=[best_val_acc,n_params] for hparams_search=vit_pareto)"
        )
    return names


def objective_values(names: list[str], metrics: dict) -> float | tuple[float, ...]:
    """What the job returns: the one objective's value (a float, as a single-objective sweeper expects), else a
    tuple in the order of ``names`` (the order of ``hydra.sweeper.direction``)."""
    values = tuple(float(metrics[n]) if metrics.get(n) is not None else math.nan for n in names)
    return values[0] if len(values) == 1 else values


def failed_values(cfg: Any) -> float | tuple[float, ...]:
    """What a failed or pruned job returns: NaN for each objective (the sweeper reads the reason from metrics.json)."""
    n = len(_objective_names(cfg))
    return math.nan if n <= 1 else (math.nan,) * n


def _objective_names(cfg: Any) -> list[str]:
    from omegaconf import ListConfig, OmegaConf

    names = OmegaConf.select(cfg, "objectives", default=None)
    if names is None:
        return ["best_val_acc"]
    return [str(n) for n in names] if isinstance(names, (list, tuple, ListConfig)) else [str(names)]


# --------------------------------------------------------------------------- sweeper helpers


def quote(text: str) -> str:
    """``text`` as a quoted value of Hydra's override grammar (backslashes are escaped only before a quote)."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"


def threads_per_job(parallel_jobs: int, cpus: int | None = None) -> int:
    """Torch threads for each of ``parallel_jobs`` local processes so that together they fill, not oversubscribe,
    the cores."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, parallel_jobs))


def trial_counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def _entry(trial: Any) -> dict[str, Any]:
    return {
        "number": trial.number,
        "run_dir": trial.user_attrs.get(RUN_DIR),
        "params": dict(trial.params),
        "test_acc": trial.user_attrs.get(TEST_ACC),
    }


def summary(study: Any) -> dict[str, Any]:
    """The sweep's short summary: trial counts, and the best trial (single objective: run directory, parameters,
    objective value, test accuracy) or the Pareto front (several objectives: each trial's values)."""
    out: dict[str, Any] = {"study_name": study.study_name, "trials": trial_counts(study)}
    if len(study.directions) > 1:
        out["pareto_front"] = [{**_entry(t), "values": list(t.values)} for t in study.best_trials]
        return out
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        out["best_trial"] = None
        return out
    out["best_trial"] = {**_entry(best), "value": best.value}
    return out
