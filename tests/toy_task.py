"""A toy Hydra task for the sweeper parity tests (upstream's example tasks, in our own words): it returns a float
computed from the config, or a pair of them for a direction list. It resolves its whole config, as many tasks do.

    python -m tests.toy_task -m --config-name sphere hydra/sweeper=vit_optuna   # from the repo root
"""

from __future__ import annotations

import math

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="toy_conf", config_name="sphere")
def main(cfg: DictConfig) -> float | tuple[float, float]:
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if cfg.get("error"):
        raise RuntimeError("cfg.error is True")
    x, y = float(cfg.x), float(cfg.y)
    if cfg.get("objectives", 1) == 2:
        return 4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2
    value = x**2 + y**2 + float(cfg.get("z", 0)) ** 2 + float(cfg.get("w", 0)) ** 2
    if cfg.get("nan_above") is not None and x > cfg.nan_above:
        return float("nan")
    if cfg.get("report"):  # report to and prune through the trial the sweeper handed this job
        import optuna

        from vit_lab.sweeps import current_trial

        trial = current_trial()
        trial.set_user_attr("job_saw_trial", trial.number)
        trial.report(value, 0)
        if x > cfg.report.prune_above:
            raise optuna.TrialPruned(f"x={x} is above {cfg.report.prune_above}")
    return value if math.isfinite(value) else float("inf")


def configure(cfg: DictConfig, trial) -> None:
    """A custom search space: z depends on the sampled x."""
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
    trial.suggest_float("w", 0.0, 1.0)


if __name__ == "__main__":
    main()
