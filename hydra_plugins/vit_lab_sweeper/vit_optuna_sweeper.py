"""`hydra/sweeper=vit_optuna`: the official Optuna sweeper, extended through its public seams.

The optimisation loop (ask a batch of `n_jobs` trials, launch them, tell the results, `max_failure_rate`,
`optimization_results.yaml`) is the plugin's own `OptunaSweeperImpl.sweep`, unchanged. This class adds:

* a launcher wrapper: each job gets `callbacks.optuna_trial` (storage, study, trial number, pruner), so the job
  reports val_acc per epoch and prunes itself; after the batch it reads each job's `metrics.json` and records
  the run directory, status, reason and test accuracy as trial user attributes;
* a storage subclass that turns the sweeper's tell into PRUNED for jobs that stopped as pruned (with the last
  reported value, as Optuna's own `tell(PRUNED)` does), and leaves alone a trial someone else already finished;
* failed jobs (invalid shape, NaN loss, ...: the job returns NaN with `status: failed`) become failed job returns,
  so the plugin counts them against `max_failure_rate`; jobs that raised get `status: failed` + reason written;
* a heartbeat for running trials and, at start, FAIL for RUNNING trials whose heartbeat went stale (killed sweep);
* a per-session offset of the sampler seed, so a resumed or concurrent sweep does not re-sample the same points;
* `device.threads = cores // parallel jobs` for joblib and submitit_local;
* a summary (best trial's run dir, params, val/test accuracy, trial counts) added to `optimization_results.yaml`.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from hydra_plugins.vit_lab_sweeper import config as config  # noqa: F401 - registers hydra/sweeper=vit_optuna
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")


class TrialFailed(Exception):
    """A job that ended with `status: failed` (the task returned NaN); its reason is the message."""


def _storage_class(base: type) -> type:
    """`base` (an Optuna storage) that can redirect the sweeper's final tell of chosen trials."""

    class SweepStorage(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.prune_ids: set[int] = set()  # trials whose job stopped as pruned
            self.finished_ids: set[int] = set()  # trials that something else already finished: keep their state

        def get_trial(self, trial_id: int):  # noqa: ANN201
            trial = super().get_trial(trial_id)
            if trial_id in self.finished_ids and trial.state.is_finished():
                import optuna

                trial = copy.copy(trial)  # let the plugin's tell go through; set_trial_state_values ignores it
                trial.state, trial.values, trial.datetime_complete = optuna.trial.TrialState.RUNNING, None, None
            return trial

        def set_trial_state_values(self, trial_id: int, state: Any, values: Sequence[float] | None = None) -> bool:
            import optuna

            if trial_id in self.finished_ids:
                self.finished_ids.discard(trial_id)
                return False
            if trial_id in self.prune_ids and state.is_finished():
                self.prune_ids.discard(trial_id)
                trial = super().get_trial(trial_id)
                last = trial.last_step
                value = trial.intermediate_values[last] if last is not None else None
                state = optuna.trial.TrialState.PRUNED
                values = [value] if value is not None and math.isfinite(value) else None
            return super().set_trial_state_values(trial_id, state, values)

    SweepStorage.__name__ = SweepStorage.__qualname__ = f"Sweep{base.__name__}"
    return SweepStorage


def make_storage(url: str | None, heartbeat_interval: int | None = None, grace_period: int | None = None) -> Any:
    """The sweeper's storage: Optuna's own (an RDBStorage behind its usual cache, or in memory), able to tell a
    pruned job's trial PRUNED and to leave a trial that something else already finished alone."""
    import optuna
    from optuna.storages._cached_storage import _CachedStorage  # what optuna.create_study wraps an RDBStorage in

    from vit_lab import sweeps

    if url is None:
        return _storage_class(optuna.storages.InMemoryStorage)()
    hb = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period) if heartbeat_interval else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        backend = optuna.storages.RDBStorage(url, engine_kwargs=sweeps.engine_kwargs(url), **hb)
    return _storage_class(_CachedStorage)(backend)


class _Heartbeat:
    """Records a storage heartbeat for the trials this sweeper is running, every `interval` seconds."""

    def __init__(self, storage: Any, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="vit_optuna-heartbeat", daemon=True)
        self.thread.start()

    def beat(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.add(trial_id)
        self._record([trial_id])

    def done(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.discard(trial_id)

    def _record(self, ids: list[int]) -> None:
        for trial_id in ids:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the sweep
                log.debug("heartbeat for trial id %s failed: %s", trial_id, e)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                ids = sorted(self.trial_ids)
            self._record(ids)

    def close(self) -> None:
        self.stop.set()


class _TrialLauncher:
    """Wraps the configured launcher: adds each trial's overrides, then settles the jobs' outcomes."""

    def __init__(self, inner: Any, owner: "VitOptunaSweeper") -> None:
        self.inner, self.owner = inner, owner

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        trials, self.owner.pending = self.owner.pending, []
        if len(trials) != len(job_overrides):
            raise RuntimeError(f"vit_optuna: {len(trials)} asked trials for {len(job_overrides)} jobs; "
                               "is this hydra-optuna-sweeper version supported?")
        overrides = [list(o) + self.owner.extra_overrides(trial, o) for trial, o in zip(trials, job_overrides)]
        # job folders follow the study's trial numbers, so a rerun into the same hydra.sweep.dir adds folders
        # after the last trial instead of overwriting the first session's 0, 1, ...
        initial_job_idx = trials[0].number if trials else initial_job_idx
        returns = self.inner.launch(overrides, initial_job_idx=initial_job_idx)
        for trial, ret in zip(trials, returns):
            self.owner.settle(trial, ret)
        self.owner.launched += len(returns)
        return returns


class VitOptunaSweeper(OptunaSweeper):
    """The official `OptunaSweeper` with pruning, recovery and bookkeeping (see the module docstring)."""

    def __init__(self, sampler: Any, direction: Any, storage: Any | None, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, custom_search_space: str | None, params: DictConfig | None,
                 pruner: Any = None, heartbeat_interval: int | None = 30, grace_period: int | None = 120,
                 divide_threads: bool = True) -> None:
        super().__init__(sampler, direction, None, study_name, n_trials, n_jobs, max_failure_rate,
                         custom_search_space, params)
        self.sampler_conf = sampler
        self.storage_url = storage
        self.pruner_conf = OmegaConf.to_container(pruner, resolve=True) if isinstance(pruner, DictConfig) else pruner
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.divide_threads = divide_threads
        self.pending: list[Any] = []
        self.launched = 0
        self.storage: Any = None
        self.heartbeat: _Heartbeat | None = None

    # ------------------------------------------------------------------ hydra entry points

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config
        impl = self.sweeper
        impl.launcher = _TrialLauncher(impl.launcher, self)
        user_extender = impl.custom_search_space_extender

        def extender(cfg: DictConfig, trial: Any) -> None:  # the plugin calls this once per asked trial, in order
            if user_extender is not None:
                user_extender(cfg, trial)
            self.pending.append(trial)
            if self.heartbeat is not None:
                self.heartbeat.beat(trial._trial_id)

        impl.custom_search_space_extender = extender

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from vit_lab import sweeps

        impl = self.sweeper
        url = sweeps.absolute_storage_url(self.storage_url)
        self.storage_url = url
        with sweeps.storage_lock(url):
            self.storage = make_storage(url, self.heartbeat_interval, self.grace_period)
            study = optuna.create_study(study_name=impl.study_name, storage=self.storage,
                                        directions=impl._get_directions(), load_if_exists=True)
            impl.study_name = study.study_name
            session = study.user_attrs.get("vit_lab_sweep_sessions", 0)
            study.set_user_attr("vit_lab_sweep_sessions", session + 1)
        if url is None and self.pruner_conf:
            log.warning("vit_optuna: no hydra.sweeper.storage, so jobs cannot report to the study: pruning is off")
        if url is not None and self.heartbeat_interval:
            before = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            after = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
            if before - after:
                log.warning("vit_optuna: marked stale RUNNING trials %s as FAIL (left by a killed sweep)",
                            sorted(before - after))
            self.heartbeat = _Heartbeat(self.storage, self.heartbeat_interval)
        self._reseed(session)
        impl.storage = self.storage
        # the heartbeat is ours (the plugin uses ask/tell, not Study.optimize); heartbeat args are "experimental"
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        log.info("vit_optuna: study %r in %s (session %d, %d trials so far)", study.study_name,
                 url or "memory", session, len(study.trials))
        try:
            impl.sweep(arguments)
        except ValueError:  # the plugin asks for study.best_trial even when no trial completed
            completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if completed or self.launched < impl.n_trials:
                raise
            log.warning("vit_optuna: no trial of study %r has completed yet", study.study_name)
        finally:
            if self.heartbeat is not None:
                self.heartbeat.close()
        self._write_summary(study)

    # ------------------------------------------------------------------ pieces

    def _reseed(self, session: int) -> None:
        """Session k of a study samples with seed + k: a resumed or concurrent sweep explores new points, while
        the first session of a study stays reproducible."""
        seed = self.sampler_conf.get("seed") if isinstance(self.sampler_conf, DictConfig) else None
        if seed is None or session == 0 or self.sampler_conf.get("_partial_"):
            return
        conf = OmegaConf.to_container(self.sampler_conf, resolve=True)
        conf["seed"] = int(seed) + session
        self.sweeper.sampler = instantiate(conf, _execution_whitelist_=SAMPLER_WHITELIST)
        log.info("vit_optuna: sampler seed %d (seed %d + session %d)", seed + session, seed, session)

    def _parallel_local_jobs(self) -> int:
        """How many jobs of a batch run at once on this machine (1 for in-process or remote launchers)."""
        target = str(self.config.hydra.launcher.get("_target_", ""))
        batch = max(1, self.sweeper.n_jobs)
        if "joblib" in target.lower():
            n = self.config.hydra.launcher.get("n_jobs", -1) or -1
            return batch if n < 0 else min(batch, n)
        if target.endswith("LocalLauncher"):  # submitit_local: one process per job, all at once
            return batch
        return 1

    def extra_overrides(self, trial: Any, overrides: Sequence[str]) -> list[str]:
        from vit_lab import sweeps

        extra = []
        if self.storage_url is not None:
            spec = {"_target_": "vit_lab.sweeps.OptunaTrialCallback", "_recursive_": False,
                    "storage": self.storage_url, "study_name": self.sweeper.study_name, "trial_number": trial.number,
                    "last_epoch": "${trainer.epochs}", "pruner": self.pruner_conf or None}
            extra.append(f"++callbacks.optuna_trial={sweeps.to_override_value(spec)}")
        parallel = self._parallel_local_jobs()
        user_set = any(o.split("=", 1)[0].lstrip("+~") == "device.threads" for o in overrides)
        if self.divide_threads and parallel > 1 and not user_set \
                and OmegaConf.select(self.config, "device.threads") is None:
            extra.append(f"device.threads={sweeps.threads_per_job(parallel)}")
        return extra

    def settle(self, trial: Any, ret: JobReturn) -> None:
        """Record a finished job's outcome on its trial, before the plugin tells the study."""
        from vit_lab import sweeps
        from vit_lab.io import read_json, write_json

        storage, tid = self.storage, trial._trial_id
        if self.heartbeat is not None:
            self.heartbeat.done(tid)
        run_dir = None
        if ret.hydra_cfg is not None:
            run_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir")
        run_dir = run_dir or ret.working_dir
        metrics_file = Path(run_dir) / "metrics.json" if run_dir else None
        try:
            metrics = read_json(metrics_file) if metrics_file and metrics_file.exists() else {}
        except (OSError, ValueError):
            metrics = {}
        status, reason = metrics.get("status"), metrics.get("reason")

        if ret.status == JobStatus.FAILED:  # the job raised (out of memory, a bug, ...): the plugin tells FAIL
            error = ret._return_value
            status, reason = "failed", f"{type(error).__name__}: {error}"
            if metrics_file is not None and metrics.get("status") in (None, "running"):
                metrics.update(status=status, reason=reason)
                try:
                    write_json(metrics_file, metrics)
                except OSError:
                    pass
        elif status == "pruned":
            storage.prune_ids.add(tid)
            values = storage.get_trial(tid).intermediate_values
            ret.return_value = float(values[max(values)]) if values else 0.0  # told COMPLETE, stored as PRUNED
        elif status == "failed" or not _is_finite(ret._return_value):
            reason = reason or f"the job returned {ret._return_value!r}"
            status = "failed"
            ret.status, ret.return_value = JobStatus.FAILED, TrialFailed(f"trial {trial.number}: {reason}")

        attrs = {sweeps.RUN_DIR: str(run_dir) if run_dir else None, sweeps.STATUS: status}
        if reason:
            attrs[sweeps.REASON] = reason
        if metrics.get("test_acc") is not None:
            attrs[sweeps.TEST_ACC] = metrics["test_acc"]
        current = storage.get_trial(tid)
        if current.state.is_finished():  # e.g. failed as stale by another sweep: keep that verdict, do not crash
            log.warning("vit_optuna: trial %d is already %s in the study; keeping it", trial.number,
                        current.state.name)
            storage.finished_ids.add(tid)
            storage.prune_ids.discard(tid)
            return
        for key, value in attrs.items():
            storage.set_trial_user_attr(tid, key, value)
        if status in ("pruned", "failed"):
            log.info("vit_optuna: trial %d %s: %s", trial.number, status, reason)

    def _write_summary(self, study: Any) -> None:
        from vit_lab import sweeps

        info = sweeps.summary(study)
        info["storage"] = self.storage_url
        info["this_sweep_trials"] = self.launched
        path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        results = OmegaConf.load(path) if path.exists() else OmegaConf.create({"name": "optuna"})
        results = OmegaConf.merge(results, {"summary": info})
        OmegaConf.save(results, path)
        best = info.get("best_trial")
        counts = ", ".join(f"{n} {k}" for k, n in sorted(info["trials"].items()))
        if best:
            test = f"{best['test_acc']:.4f}" if best.get("test_acc") is not None else "n/a"
            log.info("vit_optuna: study %r: %s. Best trial %d: val_acc %.4f, test_acc %s, params %s, run dir %s",
                     study.study_name, counts, best["number"], best["val_acc"], test, best["params"],
                     best["run_dir"])
        else:
            log.info("vit_optuna: study %r: %s; no completed trial", study.study_name, counts)
        log.info("vit_optuna: results in %s", path)


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
