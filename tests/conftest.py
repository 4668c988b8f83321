"""Shared test fixtures: the real data root, the repo root and a runner for `python -m vit_lab.*`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.postgres import postgres, postgres_url  # noqa: F401 - a throwaway PostgreSQL server, shared by the session
from vit_lab import schema  # noqa: F401 - registers the config schemas, so every test can compose
from vit_lab.cli import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR  # the package's own config folder, as the trainer's Hydra main reads it

# The README's command passes a relative VIT_LAB_DATA; tests start jobs in other folders, so pin it to the folder
# pytest was launched from, as the lab's entry points do for their own jobs.
if os.environ.get("VIT_LAB_DATA"):
    os.environ["VIT_LAB_DATA"] = str(Path(os.environ["VIT_LAB_DATA"]).expanduser().resolve())


def data_root() -> Path:
    """The real MNIST root: $VIT_LAB_DATA (CI sets it), else ../shared/data beside the repo."""
    root = Path(os.environ.get("VIT_LAB_DATA") or REPO.parent / "shared" / "data")
    if not (root / "MNIST" / "raw").is_dir():
        pytest.fail(f"real MNIST not found under {root}; set VIT_LAB_DATA to the data root")
    return root


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return data_root()


# Tiny budgets keep end-to-end runs at a few seconds on 2 cores.
# The smallest model and data a sweep trial or worker test trains: a trial in seconds.
MICRO = [
    "data.train_limit=256",
    "data.val_size=128",
    "data.test_limit=128",
    "trainer.batch_size=64",
    "model.depth=1",
    "model.hidden_d=16",
    "model.patch_size=7",
    "trainer.progress=false",
]

TINY = [
    "trainer.epochs=2",
    "data.train_limit=1024",
    "data.val_size=256",
    "data.test_limit=256",
    "trainer.batch_size=64",
    "model.depth=1",
    "model.hidden_d=16",
    "model.patch_size=7",
    "optimizer.lr=0.01",
    "scheduler.warmup_epochs=0.2",
    "trainer.progress=false",
]


def run_module(
    module: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` as a user would, with the real data root."""
    full_env = {**os.environ, "VIT_LAB_DATA": str(data_root()), "MPLBACKEND": "Agg", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        env=full_env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def run_train(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_module("vit_lab.train", *args, **kwargs)


def one_epoch_cfg(*overrides: str):
    """The composed config of a one-epoch TINY run without checkpoints, for in-process `train(cfg, dir)` tests
    (set VIT_LAB_DATA, e.g. with monkeypatch, before training)."""
    from hydra import compose, initialize_config_dir

    base = [o for o in TINY if not o.startswith("trainer.epochs")] + ["trainer.epochs=1", "trainer.checkpoint=false"]
    with initialize_config_dir(config_dir=str(CONF)):
        return compose(config_name="config", overrides=base + list(overrides))


def train_interrupted_at(monkeypatch, cfg, run_dir: Path, step: int) -> None:
    """Train ``cfg`` in process into ``run_dir``, sending this process SIGINT after training step ``step`` (the loop's
    own handler saves the checkpoint at that step and raises Interrupted, which this expects)."""
    import signal

    import vit_lab.train as T
    from vit_lab.errors import Interrupted

    real_step, steps = T.train_step, []

    def interrupting_step(job, x, y):
        out = real_step(job, x, y)
        steps.append(1)
        if len(steps) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    with monkeypatch.context() as m:
        m.setattr(T, "train_step", interrupting_step)
        with pytest.raises(Interrupted):
            T.train(cfg, run_dir)
