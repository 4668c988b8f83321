"""What a finished sweep job tells Optuna: its value(s), PRUNED or FAIL, read from its return and metrics.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from vit_lab.run_files import METRICS


class Outcome(NamedTuple):
    state: Any  # optuna.trial.TrialState
    values: list[float] | None
    reason: str | None
    counts: bool  # counts against max_failure_rate


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


def tell(study: Any, number: int, state: Any, values: list[float] | None) -> bool:
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


def run_dir_of(ret: JobReturn) -> str | None:
    run_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
    return str(run_dir or ret.working_dir) if (run_dir or ret.working_dir) else None


def read_metrics(run_dir: str | None) -> dict:
    from vit_lab.io import read_json

    path = Path(run_dir) / METRICS if run_dir else None
    try:
        return read_json(path) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        return {}


def write_metrics(run_dir: str | None, metrics: dict) -> None:
    from vit_lab.io import write_json

    try:
        write_json(Path(str(run_dir)) / METRICS, metrics)
    except OSError:
        pass
