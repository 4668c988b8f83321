"""`hydra/sweeper=vit_optuna`: a Hydra sweeper on Optuna's public ask-and-tell API, a drop-in for the official
`hydra/sweeper=optuna` (same config schema and search-space syntax) with pruning and independent workers.

Each sweep process asks Optuna for a batch of `n_jobs` trials, launches them with the configured launcher and tells
the study each job's outcome: COMPLETE with the returned value(s), PRUNED (the job raised `optuna.TrialPruned` or
its metrics.json says `status: pruned`), or FAIL (it raised, returned NaN or a non-number, or says `status: failed`).
Several processes running the same command against one storage are independent workers: a pruned trial frees its
worker at once. Around this loop:

* each job gets its trial through `hydra.job.env_set` (`vit_lab.sweeps.current_trial`), never through its config;
* heartbeats for running trials; RUNNING trials whose heartbeat went stale (a killed worker) become FAIL;
* a per-session offset of the sampler seed, so a resumed or concurrent sweep does not re-sample the same points;
* `total_trials`, a study-wide budget shared by all workers; `max_failure_rate` per batch, as upstream;
* `device.threads = cores // parallel jobs` for joblib and submitit_local;
* `optimization_results.yaml` as upstream, plus a summary (best trial's run dir, test accuracy, trial counts).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

# The official plugin's parser of `hydra.sweeper.params` lives in its private `_impl` module: pyproject.toml pins
# hydra-optuna-sweeper to the tested range for this one import.
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from hydra_plugins.vit_lab_sweeper import config as config  # registers hydra/sweeper=vit_optuna
from hydra_plugins.vit_lab_sweeper.heartbeat import Heartbeat
from hydra_plugins.vit_lab_sweeper.outcomes import Outcome, outcome, read_metrics, run_dir_of, tell, write_metrics

log = logging.getLogger(__name__)

SAMPLERS = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
SESSIONS = "vit_lab_sweep_sessions"  # study user attribute: how many sweep processes have joined the study
_ABSENT = object()


class SweepFailed(HydraException):
    """The sweep stopped: too many failed trials in a batch, or none of its trials finished."""


class VitOptunaSweeper(Sweeper):
    """The `vit_optuna` sweeper (see the module docstring); its settings are `config.VitOptunaSweeperConf`."""

    # Optional in Hydra's Sweeper; Hydra calls setup(), which sets both, before sweep()
    config: DictConfig
    launcher: Launcher

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
        pruner: Any = None,
        heartbeat_interval: int | None = 30,
        grace_period: int | None = 120,
        total_trials: int | None = None,
        divide_threads: bool = True,
    ) -> None:
        from vit_lab.errors import ConfigError

        if not 0.0 <= max_failure_rate <= 1.0:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={max_failure_rate} must be between 0 and 1")
        self.sampler_conf, self.directions = sampler, _directions(direction)
        self.storage_conf, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, max(1, n_jobs), max_failure_rate
        self.extender = (
            instantiate({"_target_": custom_search_space, "_partial_": True}) if custom_search_space else None
        )
        self.params = params
        self.pruner = _to_dict(pruner) if isinstance(pruner, DictConfig) else pruner
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.total_trials, self.divide_threads = total_trials, divide_threads
        self.url: str | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        from vit_lab import storages

        params = [f"{k!s}={v}" for k, v in (self.params or {}).items()] + list(arguments)
        space, fixed, fixed_overrides = create_params_from_overrides(params)
        for name in fixed:  # a value fixed on the command line leaves the search space
            space.pop(name, None)
        self.url = storages.resolve_url(self.storage_conf)
        study, storage, session = self._open_study(space, self._objective_names())
        if len(self.directions) > 1 and self.pruner:
            if _pruner_name(self.pruner) != "NopPruner":
                log.warning(
                    "vit_optuna: a multi-objective study cannot be pruned (Optuna prunes one objective): "
                    "pruning is off, %s is ignored and every trial trains its full budget "
                    "(hydra/sweeper/pruner=nop avoids this warning)",
                    _pruner_name(self.pruner),
                )
            self.pruner = None
        elif self.url is None and self.pruner:
            log.info("vit_optuna: no hydra.sweeper.storage, so jobs cannot report to the study: pruning is off")
        heartbeat = Heartbeat(storage, study, self.heartbeat_interval, self.grace_period)
        log.info(
            "vit_optuna: study %r in %s (session %d, %d trials so far, %s)%s",
            study.study_name,
            storages.safe(self.url) if self.url else "memory",
            session,
            len(study.trials),
            type(study.sampler).__name__,
            f"; watch it: optuna-dashboard {storages.dashboard_target(self.url)}" if self.url else "",
        )
        try:
            with warnings.catch_warnings():  # the heartbeat is this sweeper's own (it asks and tells)
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                ran = self._run(study, heartbeat, space, fixed, fixed_overrides)
        finally:
            heartbeat.close()
        self._finish(study, ran)

    # ------------------------------------------------------------------ study and sampler

    def _objective_names(self) -> list[str] | None:
        """The task's `objectives` (the metrics.json keys `vit_lab.train` returns), one per direction; None for a
        task without that list (any other Hydra task)."""
        from vit_lab.errors import ConfigError

        names = OmegaConf.select(self.config, "objectives", default=None)
        if not isinstance(names, ListConfig):
            return None
        if len(names) != len(self.directions):
            raise ConfigError(
                f"objectives={list(names)} returns {len(names)} value(s) but hydra.sweeper.direction="
                f"{self.directions} expects {len(self.directions)}: give one direction per objective "
                "(hparams_search=vit_pareto: objectives=[best_val_acc,n_params], [maximize,minimize])"
            )
        return [str(n) for n in names]

    def _open_study(self, space: dict, names: list[str] | None = None) -> tuple[Any, Any, int]:
        """Create or load the study (under the storage's lock: concurrent workers count sessions one at a time),
        name its objectives after the task's `names`, then load it again with this session's sampler."""
        import optuna

        from vit_lab import storages
        from vit_lab.errors import ConfigError

        with storages.storage_lock(self.url, self.study_name or ""):  # also the first worker's table creation
            storage = storages.open_storage(self.url, self.heartbeat_interval, self.grace_period)
            study = optuna.create_study(
                study_name=self.study_name,
                storage=storage,
                directions=[optuna.study.StudyDirection[d.upper()] for d in self.directions],
                load_if_exists=True,
            )
            found = [d.name.lower() for d in study.directions]
            if found != self.directions:
                raise ConfigError(
                    f"hydra.sweeper.direction={self.directions} does not match study "
                    f"{study.study_name!r}, created with {found}; use another hydra.sweeper.study_name"
                )
            if names and study.metric_names != names:
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2; read by compare and the dashboard
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(names)
            session = study.user_attrs.get(SESSIONS, 0)
            study.set_user_attr(SESSIONS, session + 1)
        sampler = self._sampler(space, session)
        study = optuna.load_study(
            study_name=study.study_name, storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner()
        )  # the jobs prune, with the configured pruner
        return study, storage, session

    def _sampler(self, space: dict, session: int) -> Any:
        """The configured sampler; session k of a study samples with seed + k (the first stays reproducible). A
        GridSampler gets the grid of the search space, and n_trials at most the grid's size (as upstream)."""
        import optuna

        conf = self.sampler_conf
        if isinstance(conf, DictConfig):
            conf = _to_dict(conf)
            if conf.get("seed") is not None and session and not conf.get("_partial_"):
                conf["seed"] += session
                log.info(
                    "vit_optuna: sampler seed %d (seed %d + session %d)", conf["seed"], conf["seed"] - session, session
                )
            conf = instantiate(conf, _execution_whitelist_=SAMPLERS)
        if isinstance(conf, functools.partial) and conf.func is optuna.samplers.GridSampler:
            grid = {name: _grid_choices(dist) for name, dist in space.items()}
            conf = conf(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            log.info("vit_optuna: n_trials %d (GridSampler)", self.n_trials)
        return conf

    # ------------------------------------------------------------------ the loop

    def _run(self, study: Any, heartbeat: Heartbeat, space: dict, fixed: dict, fixed_overrides: list) -> list[int]:
        """Ask, launch, tell, batch after batch; returns the numbers of the trials this sweep ran."""
        ran: list[int] = []
        left = self.n_trials
        while left > 0:
            trials = self._ask(study, heartbeat, space, fixed, min(left, self.n_jobs))
            if not trials:
                break
            overrides = [self._overrides(study, t, fixed, fixed_overrides) for t in trials]
            # job folders follow trial numbers: a rerun into the same hydra.sweep.dir adds folders after the last
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            outcomes = [self._settle(study, t, ret) for t, ret in zip(trials, returns)]
            for t in trials:
                heartbeat.done(t.number)
            ran += [t.number for t in trials]
            self._check_failures(trials, returns, outcomes)
            left -= len(trials)
        return ran

    def _ask(self, study: Any, heartbeat: Heartbeat, space: dict, fixed: dict, batch: int) -> list[Any]:
        import optuna

        from vit_lab import storages

        with storages.storage_lock(self.url, study.study_name):  # count and ask as one step among the workers
            stale = heartbeat.fail_stale()
            if stale:
                log.warning("vit_optuna: marked stale RUNNING trials %s as FAIL (their worker stopped beating)", stale)
            if self.total_trials is not None:
                S = optuna.trial.TrialState
                held = len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING, S.WAITING)))
                batch = min(batch, self.total_trials - held)
                if batch <= 0:
                    log.info("vit_optuna: the study holds %d trials (total_trials=%d): done", held, self.total_trials)
                    return []
            trials = [study.ask(space) for _ in range(batch)]
            for t in trials:
                heartbeat.add(t.number)
        for t in trials:
            for name, value in fixed.items():
                t.set_user_attr(name, value)
            if self.extender is not None:
                self.extender(self.config, t)
            if t.params.keys() & t.user_attrs.keys():
                raise ValueError(
                    f"Overlapping fixed parameters and search space parameters found! Overlapping "
                    f"parameters: {sorted(t.params.keys() & t.user_attrs.keys())}"
                )
        return trials

    def _overrides(self, study: Any, trial: Any, fixed: dict, fixed_overrides: list) -> list[str]:
        from vit_lab import sweeps

        overrides = [f"{name}={value}" for name, value in {**trial.params, **fixed}.items()] + list(fixed_overrides)
        if self.url is not None:
            overrides.append(sweeps.trial_env_override(self.url, study.study_name, trial.number, self.pruner))
        parallel = self._parallel_local_jobs()
        user_set = any(o.split("=", 1)[0].lstrip("+~") == "device.threads" for o in overrides)
        if (
            self.divide_threads
            and parallel > 1
            and not user_set
            and OmegaConf.select(self.config, "device.threads", default=_ABSENT) is None
        ):
            overrides.append(f"device.threads={sweeps.threads_per_job(parallel)}")
        return overrides

    def _parallel_local_jobs(self) -> int:
        """How many jobs of a batch run at once on this machine (1 for in-process or remote launchers)."""
        target = str(self.config.hydra.launcher.get("_target_", ""))
        if "joblib" in target.lower():
            n = self.config.hydra.launcher.get("n_jobs", -1) or -1
            return self.n_jobs if n < 0 else min(self.n_jobs, n)
        return self.n_jobs if target.endswith("LocalLauncher") else 1  # submitit_local: all at once

    # ------------------------------------------------------------------ outcomes

    def _settle(self, study: Any, trial: Any, ret: JobReturn) -> Outcome:
        """Record a finished job's outcome on its trial (user attributes, then tell)."""
        import optuna

        from vit_lab import sweeps

        run_dir = run_dir_of(ret)
        metrics = read_metrics(run_dir)
        out = outcome(ret, metrics, len(self.directions))
        if ret.status == JobStatus.FAILED and metrics.get("status") == "running":  # a vit_lab job that crashed
            write_metrics(run_dir, {**metrics, "status": "failed", "reason": out.reason})
        status = {optuna.trial.TrialState.PRUNED: "pruned", optuna.trial.TrialState.FAIL: "failed"}.get(
            out.state, metrics.get("status") or "completed"
        )
        attrs = {
            sweeps.RUN_DIR: run_dir,
            sweeps.STATUS: status,
            sweeps.REASON: out.reason,
            sweeps.TEST_ACC: metrics.get("test_acc"),
        }
        try:
            for key, value in attrs.items():
                if value is not None:
                    trial.set_user_attr(key, value)
        except optuna.exceptions.UpdateFinishedTrialError:  # e.g. failed as stale by another worker: keep it
            log.warning("vit_optuna: trial %d was already finished in the study; keeping that", trial.number)
            return out
        tell(study, trial.number, out.state, out.values)
        if status in ("pruned", "failed"):
            log.info("vit_optuna: trial %d %s: %s", trial.number, status, out.reason)
        return out

    def _check_failures(self, trials: list, returns: Sequence[JobReturn], outcomes: list[Outcome]) -> None:
        """Stop the sweep when a batch's failures exceed max_failure_rate: re-raise a job's own exception (with its
        traceback, as upstream), or name every failed trial's reason."""
        failed = [(t, ret, o) for t, ret, o in zip(trials, returns, outcomes) if o.counts]
        if not failed or len(failed) / len(returns) <= self.max_failure_rate:
            return
        log.error(
            "vit_optuna: %d of %d trials of the batch failed (max_failure_rate=%s)",
            len(failed),
            len(returns),
            self.max_failure_rate,
        )
        for _, ret, _ in failed:
            if ret.status == JobStatus.FAILED:
                ret.return_value  # noqa: B018 - raises the job's exception, traceback and all
        reasons = "; ".join(f"trial {t.number}: {o.reason}" for t, _, o in failed)
        raise SweepFailed(
            f"vit_optuna sweeper: {len(failed)} of {len(returns)} trials of a batch failed, more than "
            f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows: {reasons}"
        )

    def _finish(self, study: Any, ran: list[int]) -> None:
        """optimization_results.yaml (upstream's keys plus a summary), the summary in the log, and an error when
        every trial of this sweep failed."""
        import optuna

        from vit_lab import storages, sweeps
        from vit_lab.io import atomic_write

        info = sweeps.summary(study)
        info.update(storage=storages.safe(self.url) if self.url else None, this_sweep_trials=len(ran))
        results: dict[str, Any] = {"name": "optuna"}
        if "pareto_front" in info:
            results["solutions"] = [{"params": t["params"], "values": t["values"]} for t in info["pareto_front"]]
        elif info["best_trial"]:
            results.update(best_params=info["best_trial"]["params"], best_value=info["best_trial"]["value"])
        path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = OmegaConf.merge(OmegaConf.load(path) if path.exists() else {}, results, {"summary": info})
        atomic_write(path, lambda f: f.write(OmegaConf.to_yaml(doc)))
        _log_summary(study, info, path)
        mine = [t for t in study.get_trials(deepcopy=False) if t.number in set(ran)]
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        if mine and not any(t.state in finished for t in mine):
            reasons = "; ".join(f"trial {t.number}: {t.user_attrs.get(sweeps.REASON, t.state.name)}" for t in mine)
            raise SweepFailed(
                f"vit_optuna sweeper: none of the {len(mine)} trials of this sweep finished "
                f"(each failed: {reasons}); see each run folder's log"
            )


# --------------------------------------------------------------------------- helpers


def _directions(direction: Any) -> list[str]:
    from vit_lab.errors import ConfigError

    items = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    names = [str(getattr(d, "name", d)).lower() for d in items]
    if not names or any(n not in ("minimize", "maximize") for n in names):
        raise ConfigError(f"hydra.sweeper.direction={direction}: use minimize, maximize or a list of them")
    return names


def _to_dict(conf: DictConfig) -> dict[str, Any]:
    """The resolved dict of a DictConfig (OmegaConf's stubs type to_container as any container, for any input)."""
    return cast("dict[str, Any]", OmegaConf.to_container(conf, resolve=True))


def _pruner_name(pruner: Any) -> str:
    target = pruner.get("_target_") if isinstance(pruner, dict) else None
    return str(target).rsplit(".", 1)[-1] if target else type(pruner).__name__


def _grid_choices(dist: Any) -> list:
    """The grid of one distribution of the search space (GridSampler takes discrete ones only)."""
    import optuna.distributions as D

    if isinstance(dist, D.CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, D.IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, D.FloatDistribution) and dist.step is not None:
        from hydra.core.override_parser.types import FloatRange

        choices = list(FloatRange(dist.low, dist.high, dist.step))  # Hydra's own float range: no drift
        return choices if choices and choices[-1] == dist.high else [*choices, dist.high]
    raise ValueError("GridSampler only supports discrete distributions (choice or range with a step)")


def _log_summary(study: Any, info: dict, path: Path) -> None:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(info["trials"].items()))
    best = info.get("best_trial")
    if "pareto_front" in info:
        log.info(
            "vit_optuna: study %r: %s; %d trials on the Pareto front (python -m vit_lab.compare %s lists them)",
            study.study_name,
            counts,
            len(info["pareto_front"]),
            path.parent,
        )
    elif best:
        test = f", test_acc {best['test_acc']:.4f}" if best.get("test_acc") is not None else ""
        log.info(
            "vit_optuna: study %r: %s. Best trial %d: value %.4f%s, params %s, run dir %s",
            study.study_name,
            counts,
            best["number"],
            best["value"],
            test,
            best["params"],
            best["run_dir"],
        )
    else:
        log.info("vit_optuna: study %r: %s; no completed trial", study.study_name, counts)
    log.info("vit_optuna: results in %s", path)
