"""Config schema of the `vit_optuna` sweeper: the official `OptunaSweeperConf`, plus a pruner and housekeeping."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class MedianPrunerConf:
    """Stop a trial whose val_acc at an epoch is below the median of earlier trials at that epoch."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 4  # never prune before this many trials have finished
    n_warmup_steps: int = 1  # epochs (steps) before which a trial is never pruned
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # epochs
    max_resource: Any = "auto"  # auto: the most epochs any finished trial reported
    reduction_factor: int = 3


@dataclass
class ThresholdPrunerConf:
    """Prune every trial whose val_acc is below `lower` (useful in tests and for sanity floors)."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = 0


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class VitOptunaSweeperConf(OptunaSweeperConf):
    """The official sweeper's settings (sampler, direction or direction list, storage, study_name, n_trials, n_jobs,
    max_failure_rate, params, custom_search_space), plus pruning, worker bookkeeping and thread division."""

    _target_: str = "hydra_plugins.vit_lab_sweeper.vit_optuna_sweeper.VitOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])

    # Stops unpromising trials from their per-epoch reports (needs a storage): hydra/sweeper/pruner=median (default),
    # hyperband, threshold or nop (no pruning; hydra.sweeper.pruner=null works too). Multi-objective studies are
    # never pruned (Optuna prunes single objectives only): the sweeper switches pruning off and says so (unless nop).
    # A task config's `objectives` list (vit_lab.train's) must match the direction list, and names the study's metrics.
    pruner: Any = MISSING
    # Heartbeat (seconds) of the trials this process runs; a RUNNING trial whose heartbeat is older than grace_period
    # (its worker was killed) is marked FAIL by the next worker that asks for a trial. Live workers keep beating.
    heartbeat_interval: int = 30
    grace_period: int | None = 120
    # The study's target for independent workers: stop asking once the study holds this many COMPLETE, PRUNED or
    # RUNNING trials (FAIL ones are replaced). null: only n_trials (per sweep process) counts.
    total_trials: int | None = None
    # Set device.threads = cores // parallel jobs for local parallel launchers (joblib, submitit_local) when the
    # task config has a device.threads key left null.
    divide_threads: bool = True


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="vit_optuna", node=VitOptunaSweeperConf, provider="vit_lab")
for _name, _node in (
    ("median", MedianPrunerConf),
    ("hyperband", HyperbandPrunerConf),
    ("threshold", ThresholdPrunerConf),
    ("nop", NopPrunerConf),
):
    cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="vit_lab")
