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
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate

# The official plugin's parser of `hydra.sweeper.params` lives in its private `_impl` module: pyproject.toml pins
# hydra-optuna-sweeper to the tested range for this one import.
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, ListConfig, OmegaConf

from hydra_plugins.vit_lab_sweeper import config as config  # registers hydra/sweeper=vit_optuna

log = logging.getLogger(__name__)

SAMPLERS = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
SESSIONS = "vit_lab_sweep_sessions"  # study user attribute: how many sweep processes have joined the study
BEAT = "vit_lab:heartbeat"  # trial system attribute: the last heartbeat (unix time) on storages without a native one
_ABSENT = object()


class SweepFailed(HydraException):
    """The sweep stopped: too many failed trials in a batch, or none of its trials finished."""


class Outcome(NamedTuple):
    state: Any  # optuna.trial.TrialState
    values: list[float] | None
    reason: str | None
    counts: bool  # counts against max_failure_rate


class _Heartbeat:
    """Beats the trials this process runs, every `interval` seconds: Optuna's own heartbeat on an RDBStorage, a trial
    system attribute on other persistent storages (a journal has no native heartbeat). `fail_stale` marks FAIL the
    study's RUNNING trials whose heartbeat is older than `grace` (their worker died).

    Optuna beats only inside `Study.optimize`, so this calls its storage interface (trial ids, record_heartbeat,
    system attributes) itself; pyproject.toml pins optuna to the tested range for it."""

    def __init__(self, storage: Any, study: Any, interval: int | None, grace: int | None) -> None:
        import optuna

        self.storage, self.study, self.interval = storage, study, interval
        self.grace = grace or 2 * (interval or 0)
        self.native = isinstance(storage, optuna.storages.RDBStorage)
        self.enabled = bool(interval) and not isinstance(storage, optuna.storages.InMemoryStorage)
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.ids: dict[int, int] = {}  # trial number -> trial id
        self.lock, self.stop = threading.Lock(), threading.Event()
        if self.enabled:
            threading.Thread(target=self._run, name="vit_optuna-heartbeat", daemon=True).start()

    def add(self, number: int) -> None:
        if self.enabled:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
            with self.lock:
                self.ids[number] = trial_id
            self._beat([trial_id])

    def done(self, number: int) -> None:
        with self.lock:
            self.ids.pop(number, None)

    def _beat(self, ids: list[int]) -> None:
        for trial_id in ids:
            try:
                if self.native:
                    self.storage.record_heartbeat(trial_id)
                else:
                    self.storage.set_trial_system_attr(trial_id, BEAT, time.time())
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the sweep
                log.debug("heartbeat of trial id %s failed: %s", trial_id, e)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                ids = list(self.ids.values())
            self._beat(ids)

    def fail_stale(self) -> list[int]:
        """FAIL the study's RUNNING trials with a stale heartbeat; returns their numbers."""
        import optuna

        if not self.enabled:
            return []
        running = optuna.trial.TrialState.RUNNING
        before = {t.number: t for t in self.study.get_trials(deepcopy=False, states=(running,))}
        if self.native:
            with warnings.catch_warnings():  # "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            after = {t.number for t in self.study.get_trials(deepcopy=False, states=(running,))}
            return sorted(set(before) - after)
        now, failed = time.time(), []
        for number, t in before.items():
            beat = t.system_attrs.get(BEAT)
            stale = beat is not None and now - beat > self.grace and number not in self.ids
            if stale and _tell(self.study, number, optuna.trial.TrialState.FAIL, None):
                failed.append(number)
        return failed

    def close(self) -> None:
        self.stop.set()


class VitOptunaSweeper(Sweeper):
    """The `vit_optuna` sweeper (see the module docstring); its settings are `config.VitOptunaSweeperConf`."""

    def __init__(self, sampler: Any, direction: Any, storage: Any | None, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, custom_search_space: str | None, params: DictConfig | None,
                 pruner: Any = None, heartbeat_interval: int | None = 30, grace_period: int | None = 120,
                 total_trials: int | None = None, divide_threads: bool = True) -> None:
        from vit_lab.errors import ConfigError

        if not 0.0 <= max_failure_rate <= 1.0:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={max_failure_rate} must be between 0 and 1")
        self.sampler_conf, self.directions = sampler, _directions(direction)
        self.storage_conf, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, max(1, n_jobs), max_failure_rate
        self.extender = (instantiate({"_target_": custom_search_space, "_partial_": True})
                         if custom_search_space else None)
        self.params = params
        self.pruner = OmegaConf.to_container(pruner, resolve=True) if isinstance(pruner, DictConfig) else pruner
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.total_trials, self.divide_threads = total_trials, divide_threads
        self.url: str | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                 task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        from vit_lab import storages

        params = [f"{k!s}={v}" for k, v in (self.params or {}).items()] + list(arguments)
        space, fixed, fixed_overrides = create_params_from_overrides(params)
        for name in fixed:  # a value fixed on the command line leaves the search space
            space.pop(name, None)
        self.url = storages.resolve_url(self.storage_conf)
        study, storage, session = self._open_study(space)
        if len(self.directions) > 1 and self.pruner:
            log.warning("vit_optuna: a multi-objective study cannot be pruned (Optuna prunes one objective): "
                        "pruning is off")
            self.pruner = None
        elif self.url is None and self.pruner:
            log.info("vit_optuna: no hydra.sweeper.storage, so jobs cannot report to the study: pruning is off")
        heartbeat = _Heartbeat(storage, study, self.heartbeat_interval, self.grace_period)
        log.info("vit_optuna: study %r in %s (session %d, %d trials so far, %s)%s", study.study_name,
                 storages.safe(self.url) if self.url else "memory", session, len(study.trials),
                 type(study.sampler).__name__, f"; watch it: optuna-dashboard {storages.dashboard_target(self.url)}"
                 if self.url else "")
        try:
            with warnings.catch_warnings():  # the heartbeat is this sweeper's own (it asks and tells)
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                ran = self._run(study, heartbeat, space, fixed, fixed_overrides)
        finally:
            heartbeat.close()
        self._finish(study, ran)

    # ------------------------------------------------------------------ study and sampler

    def _open_study(self, space: dict) -> tuple[Any, Any, int]:
        """Create or load the study (under the storage's lock: concurrent workers count sessions one at a time),
        then load it again with this session's sampler."""
        import optuna

        from vit_lab import storages
        from vit_lab.errors import ConfigError

        with storages.storage_lock(self.url, self.study_name or ""):  # also the first worker's table creation
            storage = storages.open_storage(self.url, self.heartbeat_interval, self.grace_period)
            study = optuna.create_study(study_name=self.study_name, storage=storage, directions=self.directions,
                                        load_if_exists=True)
            session = study.user_attrs.get(SESSIONS, 0)
            study.set_user_attr(SESSIONS, session + 1)
        found = [d.name.lower() for d in study.directions]
        if found != self.directions:
            raise ConfigError(f"hydra.sweeper.direction={self.directions} does not match study {study.study_name!r}, "
                              f"created with {found}; use another hydra.sweeper.study_name")
        sampler = self._sampler(space, session)
        study = optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler,
                                  pruner=optuna.pruners.NopPruner())  # the jobs prune, with the configured pruner
        return study, storage, session

    def _sampler(self, space: dict, session: int) -> Any:
        """The configured sampler; session k of a study samples with seed + k (the first stays reproducible). A
        GridSampler gets the grid of the search space, and n_trials at most the grid's size (as upstream)."""
        import optuna

        conf = self.sampler_conf
        if isinstance(conf, DictConfig):
            conf = OmegaConf.to_container(conf, resolve=True)
            if conf.get("seed") is not None and session and not conf.get("_partial_"):
                conf["seed"] += session
                log.info("vit_optuna: sampler seed %d (seed %d + session %d)", conf["seed"], conf["seed"] - session,
                         session)
            conf = instantiate(conf, _execution_whitelist_=SAMPLERS)
        if isinstance(conf, functools.partial) and conf.func is optuna.samplers.GridSampler:
            grid = {name: _grid_choices(dist) for name, dist in space.items()}
            conf = conf(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            log.info("vit_optuna: n_trials %d (GridSampler)", self.n_trials)
        return conf

    # ------------------------------------------------------------------ the loop

    def _run(self, study: Any, heartbeat: _Heartbeat, space: dict, fixed: dict, fixed_overrides: list) -> list[int]:
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

    def _ask(self, study: Any, heartbeat: _Heartbeat, space: dict, fixed: dict, batch: int) -> list[Any]:
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
                raise ValueError(f"Overlapping fixed parameters and search space parameters found! Overlapping "
                                 f"parameters: {sorted(t.params.keys() & t.user_attrs.keys())}")
        return trials

    def _overrides(self, study: Any, trial: Any, fixed: dict, fixed_overrides: list) -> list[str]:
        from vit_lab import sweeps

        overrides = [f"{name}={value}" for name, value in {**trial.params, **fixed}.items()] + list(fixed_overrides)
        if self.url is not None:
            overrides.append(sweeps.trial_env_override(self.url, study.study_name, trial.number, self.pruner))
        parallel = self._parallel_local_jobs()
        user_set = any(o.split("=", 1)[0].lstrip("+~") == "device.threads" for o in overrides)
        if self.divide_threads and parallel > 1 and not user_set \
                and OmegaConf.select(self.config, "device.threads", default=_ABSENT) is None:
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

        run_dir = _run_dir(ret)
        metrics = _read_metrics(run_dir)
        out = outcome(ret, metrics, len(self.directions))
        if ret.status == JobStatus.FAILED and metrics.get("status") == "running":  # a vit_lab job that crashed
            _write_metrics(run_dir, {**metrics, "status": "failed", "reason": out.reason})
        status = {optuna.trial.TrialState.PRUNED: "pruned", optuna.trial.TrialState.FAIL: "failed"}.get(
            out.state, metrics.get("status") or "completed")
        attrs = {sweeps.RUN_DIR: run_dir, sweeps.STATUS: status, sweeps.REASON: out.reason,
                 sweeps.TEST_ACC: metrics.get("test_acc")}
        try:
            for key, value in attrs.items():
                if value is not None:
                    trial.set_user_attr(key, value)
        except optuna.exceptions.UpdateFinishedTrialError:  # e.g. failed as stale by another worker: keep it
            log.warning("vit_optuna: trial %d was already finished in the study; keeping that", trial.number)
            return out
        _tell(study, trial.number, out.state, out.values)
        if status in ("pruned", "failed"):
            log.info("vit_optuna: trial %d %s: %s", trial.number, status, out.reason)
        return out

    def _check_failures(self, trials: list, returns: Sequence[JobReturn], outcomes: list[Outcome]) -> None:
        """Stop the sweep when a batch's failures exceed max_failure_rate: re-raise a job's own exception (with its
        traceback, as upstream), or name every failed trial's reason."""
        failed = [(t, ret, o) for t, ret, o in zip(trials, returns, outcomes) if o.counts]
        if not failed or len(failed) / len(returns) <= self.max_failure_rate:
            return
        log.error("vit_optuna: %d of %d trials of the batch failed (max_failure_rate=%s)", len(failed), len(returns),
                  self.max_failure_rate)
        for _, ret, _ in failed:
            if ret.status == JobStatus.FAILED:
                ret.return_value  # noqa: B018 - raises the job's exception, traceback and all
        reasons = "; ".join(f"trial {t.number}: {o.reason}" for t, _, o in failed)
        raise SweepFailed(f"vit_optuna sweeper: {len(failed)} of {len(returns)} trials of a batch failed, more than "
                          f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows: {reasons}")

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
            raise SweepFailed(f"vit_optuna sweeper: none of the {len(mine)} trials of this sweep finished "
                              f"(each failed: {reasons}); see each run folder's log")


# --------------------------------------------------------------------------- helpers


def outcome(ret: JobReturn, metrics: dict, n_objectives: int) -> Outcome:
    """What to tell Optuna for one job: its return value(s), or PRUNED/FAIL from its exception or metrics.json."""
    import optuna

    S = optuna.trial.TrialState
    reason = metrics.get("reason")
    if ret.status == JobStatus.FAILED:
        try:
            ret.return_value  # noqa: B018 - raises the job's exception (the public way to read it)
            error: BaseException | None = None
        except Exception as e:  # noqa: BLE001
            error = e
        if isinstance(error, optuna.TrialPruned):
            return Outcome(S.PRUNED, None, str(error) or "pruned by the task", False)
        return Outcome(S.FAIL, None, f"{type(error).__name__}: {error}", True)
    if metrics.get("status") == "pruned":
        return Outcome(S.PRUNED, None, reason, False)
    if metrics.get("status") == "failed":
        return Outcome(S.FAIL, None, reason or "the job failed", True)
    value = ret.return_value
    try:
        values = [float(v) for v in value] if n_objectives > 1 else [float(value)]
    except (TypeError, ValueError):
        kind = f"a list of {n_objectives} numbers" if n_objectives > 1 else "a number"
        return Outcome(S.FAIL, None, f"the job returned {value!r}, not {kind}", True)
    if len(values) != n_objectives:
        return Outcome(S.FAIL, None, f"the job returned {len(values)} values for {n_objectives} objectives", True)
    if any(math.isnan(v) for v in values):  # Optuna stores no NaN; upstream records FAIL and goes on
        return Outcome(S.FAIL, None, f"the job returned {value!r}", False)
    return Outcome(S.COMPLETE, values, None, False)


def _tell(study: Any, number: int, state: Any, values: list[float] | None) -> bool:
    """study.tell that leaves alone a trial someone else already finished; False if it did."""
    import optuna

    try:
        study.tell(number, values, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    except RuntimeError as e:  # GridSampler calls study.stop() when the grid is exhausted: the trial is stored
        if "Study.stop" not in str(e):
            raise
    return True


def _directions(direction: Any) -> list[str]:
    from vit_lab.errors import ConfigError

    items = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    names = [str(getattr(d, "name", d)).lower() for d in items]
    if not names or any(n not in ("minimize", "maximize") for n in names):
        raise ConfigError(f"hydra.sweeper.direction={direction}: use minimize, maximize or a list of them")
    return names


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


def _run_dir(ret: JobReturn) -> str | None:
    run_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
    return str(run_dir or ret.working_dir) if (run_dir or ret.working_dir) else None


def _read_metrics(run_dir: str | None) -> dict:
    from vit_lab.io import read_json

    path = Path(run_dir) / "metrics.json" if run_dir else None
    try:
        return read_json(path) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write_metrics(run_dir: str | None, metrics: dict) -> None:
    from vit_lab.io import write_json

    try:
        write_json(Path(str(run_dir)) / "metrics.json", metrics)
    except OSError:
        pass


def _log_summary(study: Any, info: dict, path: Path) -> None:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(info["trials"].items()))
    best = info.get("best_trial")
    if "pareto_front" in info:
        log.info("vit_optuna: study %r: %s; %d trials on the Pareto front", study.study_name, counts,
                 len(info["pareto_front"]))
    elif best:
        test = f", test_acc {best['test_acc']:.4f}" if best.get("test_acc") is not None else ""
        log.info("vit_optuna: study %r: %s. Best trial %d: value %.4f%s, params %s, run dir %s",
                 study.study_name, counts, best["number"], best["value"], test, best["params"], best["run_dir"])
    else:
        log.info("vit_optuna: study %r: %s; no completed trial", study.study_name, counts)
    log.info("vit_optuna: results in %s", path)
