"""vit_lab's Optuna sweeper: the official hydra-optuna-sweeper plus pruning, stale-trial recovery, per-trial
run-directory bookkeeping and thread division for parallel local launchers (`hydra/sweeper=vit_optuna`)."""
