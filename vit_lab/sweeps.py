"""Optuna sweeps: the job-side trial reporter and the helpers the `vit_optuna` sweeper shares with it.

The sweeper (``hydra_plugins/vit_lab_sweeper``) runs the official ``hydra-optuna-sweeper`` loop and gives every
job one extra override, ``callbacks.optuna_trial``, that builds :class:`OptunaTrialCallback` here (a
:class:`vit_lab.callbacks.Callback`). After every epoch it reports validation accuracy to the study (Optuna's
intermediate values) and asks the pruner; a pruned trial raises ``TrialPruned`` (status "pruned"), which
``vit_lab.train`` records in ``metrics.json``. The sweeper reads that status back and tells Optuna PRUNED.

This module imports neither torch nor ``vit_lab.train`` at import time: the sweeper process imports it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
from pathlib import Path
from typing import Any, Iterator

from vit_lab.callbacks import Callback
from vit_lab.errors import RunStopped

# Sweeper-written keys of a trial's user attributes (visible in optuna-dashboard).
RUN_DIR, STATUS, REASON, TEST_ACC = "run_dir", "status", "reason", "test_acc"


# --------------------------------------------------------------------------- storage


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory SQLite)."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def absolute_storage_url(url: str | None, cwd: str | os.PathLike | None = None) -> str | None:
    """Pin a relative SQLite path to ``cwd`` (so jobs that change directory or run elsewhere find the same file)
    and create its folder (SQLite does not). Other SQLAlchemy URLs are returned unchanged."""
    if url is None:
        return None
    file = sqlite_file(url)
    if file is None:
        return url
    if not file.is_absolute():
        file = Path(cwd or os.getcwd()) / file
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLite: wait up to a minute for a lock instead of failing with 'database is locked' (parallel jobs)."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}


def open_storage(url: str, **kwargs: Any) -> Any:
    """An RDBStorage of its own for this process (each process opens its own connections)."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), **kwargs)


@contextlib.contextmanager
def storage_lock(url: str | None) -> Iterator[None]:
    """Serialise study creation between sweep processes that share one SQLite file (a no-op for servers,
    whose own transactions handle it)."""
    file = sqlite_file(url) if url else None
    if file is None:
        yield
        return
    with open(f"{file}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- job side


class TrialPruned(RunStopped):
    """The pruner stopped this trial. ``vit_lab.train.main`` records ``status`` in metrics.json and returns NaN."""

    def __init__(self, reason: str) -> None:
        super().__init__("pruned", reason)

    def __reduce__(self):
        return type(self), (str(self),)


class OptunaTrialCallback(Callback):
    """Callback of one sweep job: report ``metric`` to its Optuna trial and stop the run when the pruner says so.

    Built by the sweeper's extra override ``callbacks.optuna_trial``. ``pruner`` is an instantiable
    ``optuna.pruners.*`` config (None: report only). The last epoch is never pruned: the run has finished by then.
    """

    def __init__(self, storage: str, study_name: str, trial_number: int, pruner: Any = None,
                 last_epoch: int | None = None, metric: str = "val_acc") -> None:
        import optuna
        from hydra.utils import instantiate

        pruner_obj = (instantiate(pruner, _execution_whitelist_=("optuna.pruners.*",)) if pruner
                      else optuna.pruners.NopPruner())
        self.study = optuna.load_study(study_name=study_name, storage=open_storage(storage), pruner=pruner_obj,
                                       sampler=optuna.samplers.RandomSampler())
        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, trial_number)
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self.trial_number, self.last_epoch, self.metric = trial_number, last_epoch, metric
        self.pruner_name = type(pruner_obj).__name__

    def __call__(self, epoch: int, record: dict) -> None:
        self.on_epoch_end(epoch, record)

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        value = record.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), epoch)
        if self.last_epoch is not None and epoch >= self.last_epoch:
            return
        if self.trial.should_prune():
            raise TrialPruned(f"trial {self.trial_number} pruned by {self.pruner_name} after epoch {epoch} "
                                       f"({self.metric} {value:.4f})")


# --------------------------------------------------------------------------- sweeper helpers


def to_override_value(value: Any) -> str:
    """Write a plain value (dicts, lists, scalars) in Hydra's override grammar."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{to_override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


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


def summary(study: Any) -> dict[str, Any]:
    """The sweep's short summary: the best trial's run directory, parameters and accuracies, and trial counts."""
    out: dict[str, Any] = {"study_name": study.study_name, "trials": trial_counts(study)}
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        out["best_trial"] = None
        return out
    out["best_trial"] = {
        "number": best.number,
        "run_dir": best.user_attrs.get(RUN_DIR),
        "params": dict(best.params),
        "val_acc": best.value,
        "test_acc": best.user_attrs.get(TEST_ACC),
    }
    return out
