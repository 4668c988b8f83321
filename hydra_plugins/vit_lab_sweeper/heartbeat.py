"""Heartbeats of the trials a sweep process runs, and failing the trials whose worker stopped beating."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import Any

from hydra_plugins.vit_lab_sweeper.outcomes import tell

log = logging.getLogger(__name__)

BEAT = "vit_lab:heartbeat"  # trial system attribute: the last heartbeat (unix time) on storages without a native one


class Heartbeat:
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
            if stale and tell(self.study, number, optuna.trial.TrialState.FAIL, None):
                failed.append(number)
        return failed

    def close(self) -> None:
        self.stop.set()
