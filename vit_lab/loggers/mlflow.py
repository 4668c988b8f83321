"""MLflow through its client (``MlflowClient``): one MLflow run per Hydra job, one experiment per sweep.

- Store: ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///outputs/mlflow.db``; a relative
  SQLite path means the folder the command was launched from, like the data root). A local store keeps artifacts
  beside the database (``outputs/mlartifacts``); a tracking server (``http://...``) keeps them where it is set up to.
- Experiment: ``experiment_name``, else the Optuna study of a sweep, else the sweep folder of a multirun, else
  ``vit_lab``.
- Params: the flattened config; metrics: every history.json key per epoch (the epoch is the step), then
  ``test_acc``, ``test_loss`` and ``best_val_acc``; artifacts: ``metrics.json``, ``history.json`` and ``.hydra/``.
- Status: completed -> FINISHED, failed -> FAILED, interrupted and pruned -> KILLED (the run's own status is the
  tag ``vit_lab.status``). A resumed run continues the same MLflow run (its id travels in checkpoint.pt).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vit_lab.callbacks import Callback
from vit_lab.errors import ConfigError
from vit_lab.loggers import flat_config, history
from vit_lab.run_files import HISTORY, METRICS

log = logging.getLogger("vit_lab.train")

STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "pruned": "KILLED"}
RESULTS = ("test_acc", "test_loss", "best_val_acc")
BATCH = 100  # MLflow's limit of params per log_batch call


def launch_folder() -> str:
    """Where the command was started (Hydra records it for every job, whichever folder the job runs in)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


class MLflowLogger(Callback):
    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        artifacts: bool = True,
        http_retries: int = 2,
        http_timeout: int = 10,
    ) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError(
                'logger=mlflow needs MLflow, an optional extra: pip install -e ".[mlflow]" (or pip install mlflow)'
            ) from None
        from vit_lab.storages import resolve_url, sqlite_file

        uri = tracking_uri or "sqlite:///outputs/mlflow.db"
        self.uri = str(resolve_url(uri, launch_folder()) if sqlite_file(uri) is not None else uri)
        self.experiment_name, self.artifacts = experiment_name, artifacts
        if self.uri.startswith(("http:", "https:")):  # a logger must not stall training for minutes of retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(http_retries))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(http_timeout))
        self.client: Any = None
        self.run_id: str | None = None
        self.run_dir = Path()
        self.logged: set[int] = set()  # epochs already in the MLflow run

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")

    def on_run_start(self, cfg: DictConfig, run_dir: Path, resumed: bool) -> None:
        from mlflow import MlflowClient

        self.client, self.run_dir = MlflowClient(tracking_uri=self.uri), Path(run_dir)
        if resumed and self.run_id and self._reopen():
            # a kill between logging an epoch and saving its checkpoint (or the other way round) must not leave
            # the MLflow run with a duplicate or a missing step
            self.logged = {m.step for m in self.client.get_metric_history(self.run_id, "val_acc")}
            for record in history(run_dir):
                self.on_epoch_end(record["epoch"], record)
            self._params(cfg, skip=set(self.client.get_run(self.run_id).data.params))
            return
        run = self.client.create_run(
            self._experiment_id(cfg), run_name=self._run_name(run_dir), tags=self._tags(run_dir)
        )
        self.run_id = run.info.run_id
        self._params(cfg)

    def _reopen(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.update_run(self.run_id, status="RUNNING")
            return True
        except MlflowException:
            log.warning(
                "the MLflow run %s of the resumed run is not in %s; starting a new MLflow run", self.run_id, self.uri
            )
            return False

    def _experiment_id(self, cfg: DictConfig) -> str:
        """The experiment's id, created if needed (a lock keeps parallel jobs from creating a SQLite store twice)."""
        from mlflow.exceptions import MlflowException

        from vit_lab.storages import sqlite_file, storage_lock

        name = self.experiment_name or default_experiment()
        with storage_lock(self.uri, f"mlflow:{name}"):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            db = sqlite_file(self.uri)
            location = (db.parent / "mlartifacts").as_uri() if db is not None else None
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException:  # another job's server call created it first
                return self.client.get_experiment_by_name(name).experiment_id

    def _run_name(self, run_dir: Path) -> str:
        try:
            return str(Path(run_dir).resolve().relative_to(Path(launch_folder()).resolve()))
        except ValueError:
            return str(run_dir)

    def _tags(self, run_dir: Path) -> dict[str, str]:
        from vit_lab.records import git_info

        tags = {"run_dir": str(Path(run_dir).resolve()), "vit_lab.status": "running"}
        git = git_info()
        if git:
            tags.update({"mlflow.source.git.commit": git["commit"], "git_dirty": str(git["dirty"])})
        return tags

    def _params(self, cfg: DictConfig, skip: frozenset[str] | set[str] = frozenset()) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flat_config(cfg).items() if k not in skip]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        if epoch not in self.logged:
            self._metrics(record, epoch)
            self.logged.add(epoch)

    def _metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), stamp, step)
            for k, v in values.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_run_end(self, metrics: dict, status: str) -> None:
        if self.run_id is None:
            return
        self._metrics({k: metrics[k] for k in RESULTS if k in metrics}, metrics.get("epochs_completed") or 0)
        self.client.set_tag(self.run_id, "vit_lab.status", status)
        if metrics.get("reason"):
            self.client.set_tag(self.run_id, "vit_lab.reason", str(metrics["reason"])[:5000])
        if self.artifacts:
            for name in (METRICS, HISTORY, "metrics.csv"):
                if (self.run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            if (self.run_dir / ".hydra").is_dir():
                self.client.log_artifacts(self.run_id, str(self.run_dir / ".hydra"), artifact_path=".hydra")
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FAILED"))


def default_experiment() -> str:
    """The experiment of a job without ``experiment_name``: its Optuna study in a ``vit_optuna`` sweep, else its
    sweep folder in a multirun, else ``vit_lab``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from vit_lab.sweeps import trial_spec

    spec = trial_spec()
    if spec is not None:
        return spec["study"]
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().sweep.dir)
    return "vit_lab"
