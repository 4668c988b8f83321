"""Config schema of the `vit_optuna` sweeper: the official `OptunaSweeperConf`, plus a pruner and housekeeping."""

from dataclasses import dataclass, field
from typing import Any, List, Optional

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
    lower: Optional[float] = None
    upper: Optional[float] = None
    n_warmup_steps: int = 0


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class VitOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.vit_lab_sweeper.vit_optuna_sweeper.VitOptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])

    # Stops unpromising trials from their per-epoch val_acc (needs a storage): hydra/sweeper/pruner=median (default),
    # hyperband, threshold or nop (no pruning; hydra.sweeper.pruner=null works too).
    pruner: Any = MISSING
    # Storage heartbeat (seconds): the sweeper heartbeats its running trials; at start it marks FAIL the RUNNING
    # trials of this study whose heartbeat is older than grace_period (left by a killed sweep). Concurrent live
    # sweeps keep heartbeating, so their trials are never touched.
    heartbeat_interval: int = 30
    grace_period: Optional[int] = 120
    # Set device.threads = cores // parallel jobs for local parallel launchers (joblib, submitit_local) when the
    # config leaves device.threads null.
    divide_threads: bool = True


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="vit_optuna", node=VitOptunaSweeperConf, provider="vit_lab")
for _name, _node in (("median", MedianPrunerConf), ("hyperband", HyperbandPrunerConf),
                     ("threshold", ThresholdPrunerConf), ("nop", NopPrunerConf)):
    cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="vit_lab")
