"""Run folders made in-process, without training: a composed config and a model's initial weights (milliseconds).

For tests of what reads a run (evaluate, predict, attention) where trained weights do not matter."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import CONF, TINY
from omegaconf import OmegaConf

CNN = [o for o in TINY if not o.startswith("model.")] + ["model=cnn", "model.width=4"]


def compose(*overrides: str, base: list[str] | None = None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF)):
        return hydra_compose(config_name="config", overrides=[*(TINY if base is None else base), *overrides])


def fake_run(path: Path, *overrides: str, base: list[str] | None = None, seed: int = 0):
    """A run folder (.hydra/config.yaml and checkpoint.pt) for the config of TINY (or ``base``) + ``overrides``;
    returns (path, model)."""
    from vit_lab.config import build

    cfg = compose(*overrides, base=base)
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    spec = build(cfg.data, _convert_="all")
    torch.manual_seed(seed)
    model = build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
    torch.save({"model": model.state_dict(), "epoch": 0}, path / "checkpoint.pt")
    return path, model.eval()
