"""End-to-end runs of `python -m vit_lab.train` as subprocesses, on tiny budgets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import CONF, TINY, data_root, run_train

pytestmark = pytest.mark.slow


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_main_job_writes_complete_results_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train("model.n_heads=4", "model.hidden_d=16", *TINY, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    m = read(run_dir / "metrics.json")
    assert m["status"] == "completed" and m["epochs_completed"] == 2
    for key in (
        "test_acc",
        "best_val_acc",
        "test_loss",
        "n_params",
        "train_seconds",
        "train_images_per_second",
        "device",
        "versions",
    ):
        assert key in m, key
    assert 0.0 <= m["test_acc"] <= 1.0 and 0.0 < m["best_val_acc"] <= 1.0
    assert m["best_val_acc"] > 0.15  # 2 tiny epochs beat chance (10%)
    assert m["device"] == "cpu" and m["versions"]["torch"] == torch.__version__
    history = read(run_dir / "history.json")
    assert [r["epoch"] for r in history] == [1, 2]
    assert max(r["val_acc"] for r in history) == m["best_val_acc"]
    log = (run_dir / "train.log").read_text()
    assert log.count("epoch 1/2") == 1 and "val_acc" in log and "img/s" in log
    assert (run_dir / ".hydra" / "config.yaml").exists()

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"]["n_heads"] == 4

    # the checkpoint continues: one more epoch, from epoch 2
    resumed = tmp_path / "resumed"
    proc = run_train(
        "model.n_heads=4",
        "model.hidden_d=16",
        *TINY,
        "trainer.epochs=3",
        f"resume={run_dir}",
        f"hydra.run.dir={resumed}",
    )
    assert proc.returncode == 0, proc.stderr
    m2 = read(resumed / "metrics.json")
    assert m2["status"] == "completed" and m2["epochs_completed"] == 3
    assert m2["resumed_from"].endswith("checkpoint.pt")
    assert [r["epoch"] for r in read(resumed / "history.json")] == [1, 2, 3]
    assert read(resumed / "history.json")[:2] == history


def test_tutorial_experiment_runs(tmp_path):
    proc = run_train(
        "experiment=tutorial",
        "trainer.epochs=1",
        "data.train_limit=512",
        "data.val_size=256",
        "data.test_limit=256",
        "trainer.progress=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    m = read(tmp_path / "metrics.json")
    assert m["n_params"] == 1642 and m["status"] == "completed"


def test_cnn_baseline_runs_with_smoothing_and_clipping(tmp_path):
    proc = run_train(
        "model=cnn",
        "trainer.epochs=1",
        "data.train_limit=256",
        "data.val_size=128",
        "data.test_limit=128",
        "trainer.progress=false",
        "trainer.label_smoothing=0.1",
        "trainer.grad_clip=0.5",
        "optimizer=sgd",
        "augment=affine",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    m = read(tmp_path / "metrics.json")
    assert m["model"] == "SimpleCNN" and m["status"] == "completed"
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (
        ckpt["config"]["trainer"]["grad_clip"] == 0.5 and ckpt["config"]["optimizer"]["_target_"] == "torch.optim.SGD"
    )


def test_grid_multirun(tmp_path):
    proc = run_train(
        "-m",
        "model.patch_size=4,7",
        *[o for o in TINY if "patch_size" not in o],
        "trainer.epochs=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    assert {read(p / "metrics.json")["status"] for p in jobs} == {"completed"}


def _assert_one_clear_line(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and "Warning" not in line and not line.startswith("  ")
    ]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    "override,words",
    [
        ("model.patch_size=5", ["model.patch_size=5", "28x28"]),
        ("model.n_heads=3", ["model.n_heads=3", "hidden_d=64"]),
        ("model.depth=two", ["model.depth", "two"]),
        ("trainer.epochs=0", ["trainer.epochs=0"]),
        ("device.tune_malloc=maybe", ["device.tune_malloc", "maybe"]),  # wrong types: refused while Hydra composes
        ("model.attn_kernel=flash", ["model.attn_kernel", "flash", "'auto', 'sdpa', 'explicit'"]),
        # an index past the last GPU, so the case also holds on machines that have one
        ("device=cuda" if not torch.cuda.is_available() else "device.name=cuda:99", ["device=cuda"]),
        ("device=mps", ["device=mps"]),
    ],
)
def test_bad_overrides_one_clear_line(tmp_path, override, words):
    proc = run_train(override, f"hydra.run.dir={tmp_path}")
    _assert_one_clear_line(proc, *words)
    if override.split("=")[0] in ("model.depth", "device.tune_malloc", "model.attn_kernel"):
        assert not (tmp_path / "metrics.json").exists()  # refused at composition, before any job started
    else:
        assert read(tmp_path / "metrics.json")["status"] == "failed"


def test_missing_data_one_clear_line(tmp_path):
    proc = run_train(f"data.root={tmp_path / 'nowhere'}", "data.download=null", f"hydra.run.dir={tmp_path / 'run'}")
    _assert_one_clear_line(proc, str(tmp_path / "nowhere"))


def test_train_as_a_library_holds_its_run_dir_only_while_it_runs(mnist_root, tmp_path, monkeypatch):
    """train() called in-process (not through main) releases the directory's lock when it returns or fails,
    and leaves a lock its caller took (main() keeps it to record failures) to that caller."""
    from conftest import one_epoch_cfg

    from vit_lab.errors import ConfigError
    from vit_lab.io import claim_dir, dir_is_held, release_dir
    from vit_lab.train import train

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    cfg, bad = one_epoch_cfg(), one_epoch_cfg("trainer.batch_size=0")
    run_dir = tmp_path / "run"
    held = []
    monkeypatch.setattr("vit_lab.train.Run.write_history", lambda self: held.append(dir_is_held(self.dir)))
    assert train(cfg, run_dir) > 0.1
    assert held == [True] and not dir_is_held(run_dir)  # held during the epoch, released after
    with pytest.raises(ConfigError):
        train(bad, run_dir)
    assert not dir_is_held(run_dir)
    assert claim_dir(run_dir) is None  # ours again: a later run can take it
    train(cfg, run_dir)
    assert dir_is_held(run_dir)  # the caller's lock stays with the caller
    release_dir(run_dir)


def test_relative_data_root_works_from_another_folder(tmp_path):
    """A relative VIT_LAB_DATA means the launch folder's view, and the run records the absolute root it used."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    rel = os.path.relpath(data_root(), work)
    proc = run_train(*TINY, "trainer.epochs=1", "hydra.run.dir=run", cwd=work, env={"VIT_LAB_DATA": rel})
    assert proc.returncode == 0, proc.stderr
    assert read(work / "run" / "metrics.json")["data_root"] == str(data_root().resolve())


# --------------------------------------------------------------------------- structure (issue 13)


class TinyMLP(torch.nn.Module):
    """A model config with no ViT keys: the trainer needs only `_target_`, `chw` and `out_d`."""

    def __init__(self, chw=(1, 28, 28), out_d=10, width=32):
        super().__init__()
        c, h, w = chw
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(c * h * w, width), torch.nn.ReLU(), torch.nn.Linear(width, out_d)
        )

    def forward(self, x):
        return self.net(x)


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF)):
        return hydra_compose(config_name="config", overrides=list(overrides))


def _groups() -> dict[str, list[str]]:
    return {
        g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
        for g in (
            "model",
            "data",
            "augment",
            "optimizer",
            "scheduler",
            "device",
            "trainer",
            "callbacks",
            "logger",
            "experiment",
            "debug",
        )
    }


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in _groups().items() for o in opts])
def test_every_group_option_composes_validates_and_builds_its_callbacks(group, option):
    from vit_lab.callbacks import Callbacks
    from vit_lab.train import validate_config

    cfg = compose(f"{group}={option}")
    validate_config(cfg)
    names = [name for name, _, _ in Callbacks.from_config(cfg).entries]
    if group == "logger":
        expected = {"none": [], "many": ["tensorboard", "mlflow", "csv"]}.get(option, [option])
        assert names == [f"logger.{n}" for n in expected]


def test_the_trainer_needs_no_vit_keys(mnist_root, tmp_path, monkeypatch):
    """model=cnn and a toy model with nothing but its own keys train through the same code, in debug=fast."""
    from conftest import one_epoch_cfg
    from omegaconf import OmegaConf, open_dict

    import vit_lab.config
    from vit_lab.train import Job, param_groups, setup, train

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    monkeypatch.setattr(vit_lab.config, "TRUSTED_TARGETS", (*vit_lab.config.TRUSTED_TARGETS, f"{__name__}.*"))
    cfg = one_epoch_cfg("debug=fast")
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"_target_": f"{__name__}.TinyMLP", "width": 24})
    train(cfg, tmp_path / "toy")
    m = read(tmp_path / "toy" / "metrics.json")
    assert m["status"] == "completed" and m["model"] == "TinyMLP" and m["n_params"] == 784 * 24 + 24 + 24 * 10 + 10
    assert len(param_groups(TinyMLP(), 0.1)) == 1  # no groups of its own: everything decays alike

    cnn = setup(compose("model=cnn", "debug=fast", "data.val_size=512"), tmp_path / "cnn")
    assert isinstance(cnn, Job) and len(cnn.train_batches) == len(cnn.test_batches) == 3
    assert len(cnn.val_batches) == 1  # 512 images, batches of 1000
    decays = [g["weight_decay"] for g in cnn.opt.param_groups]
    assert decays == [0.05, 0.0] and all(p.ndim == 4 or p.ndim == 2 for p in cnn.opt.param_groups[0]["params"])


def test_best_weights_follow_validation_and_survive_resume(mnist_root, tmp_path, monkeypatch):
    from conftest import one_epoch_cfg

    from vit_lab.train import train

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    base = ("trainer.epochs=2", "trainer.checkpoint=true", "logger=none")
    train(one_epoch_cfg(*base), tmp_path / "a")
    history = read(tmp_path / "a" / "history.json")
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    top = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))  # the first epoch reaching the best
    assert (best["epoch"], best["val_acc"]) == (top["epoch"], top["val_acc"])
    assert read(tmp_path / "a" / "metrics.json")["best_epoch"] == top["epoch"]
    if top["epoch"] == 2:
        last = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
        assert all(torch.equal(best["model"][k], last[k]) for k in last)

    train(one_epoch_cfg(*base[1:], "trainer.epochs=3", f"resume={tmp_path / 'a'}"), tmp_path / "b")
    history = read(tmp_path / "b" / "history.json")
    resumed = torch.load(tmp_path / "b" / "best.pt", weights_only=True)
    top = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))
    assert (resumed["epoch"], resumed["val_acc"]) == (top["epoch"], top["val_acc"])
    if top["epoch"] <= 2:  # carried over from the first folder
        assert all(torch.equal(resumed["model"][k], best["model"][k]) for k in best["model"])


def test_metrics_record_the_git_commit_of_the_checkout(tmp_path):
    import subprocess

    proc = run_train(*TINY, "debug=fast", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    )
    assert read(tmp_path / "metrics.json")["git"] == {"commit": head, "dirty": dirty}


def test_debug_presets(tmp_path):
    tiny = [o for o in TINY if not o.startswith("trainer.epochs")]  # the presets set the epochs
    fast = run_train(*tiny, "debug=fast", f"hydra.run.dir={tmp_path / 'fast'}")
    assert fast.returncode == 0, fast.stderr
    m = read(tmp_path / "fast" / "metrics.json")
    assert m["status"] == "completed" and m["epochs_completed"] == 1
    assert not (tmp_path / "fast" / "checkpoint.pt").exists() and not list((tmp_path / "fast").glob("events.*"))

    overfit = run_train(
        *tiny,
        "debug=overfit",
        "trainer.batch_size=16",
        "trainer.epochs=60",
        "optimizer.lr=0.01",
        f"hydra.run.dir={tmp_path / 'overfit'}",
    )
    assert overfit.returncode == 0, overfit.stderr
    history = read(tmp_path / "overfit" / "history.json")
    assert history[-1]["train_loss"] < 0.05 < history[0]["train_loss"] and history[-1]["val_acc"] == 1.0

    profile = run_train(*tiny, "debug=profile", f"hydra.run.dir={tmp_path / 'profile'}")
    assert profile.returncode == 0, profile.stderr
    traces = list((tmp_path / "profile" / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1 and json.loads(traces[0].read_text())["traceEvents"]
    assert "aten::" in (tmp_path / "profile" / "profile" / "summary.txt").read_text()


def test_patch_dropout_stops_after_its_epochs(mnist_root, tmp_path, monkeypatch, caplog):
    """trainer.patch_dropout_epochs=1 of 2: every step of epoch 1 drops patches, no step of epoch 2 does."""
    import logging

    from conftest import one_epoch_cfg

    import vit_lab.train as T

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    seen, real = [], T.train_step

    def spy(job, x, y):
        seen.append(job.model.drop_patches)
        return real(job, x, y)

    monkeypatch.setattr(T, "train_step", spy)
    cfg = one_epoch_cfg("model.patch_dropout=0.5", "trainer.patch_dropout_epochs=1", "trainer.epochs=2")
    with caplog.at_level(logging.INFO, logger="vit_lab.train"):
        T.train(cfg, tmp_path / "run")
    half = len(seen) // 2
    assert half > 0 and seen == [True] * half + [False] * half
    assert "epoch 2 on: every patch token" in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_patch_dropout_run_resumes_exactly(mnist_root, tmp_path, monkeypatch):
    """SIGINT mid-epoch while patches are dropped, then resume: the same metrics as an uninterrupted run (the tokens
    kept are drawn from the RNG that the checkpoint restores)."""
    from conftest import one_epoch_cfg, train_interrupted_at

    import vit_lab.train as T

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    run = ("model.patch_dropout=0.5", "trainer.patch_dropout_epochs=1", "trainer.epochs=2", "trainer.checkpoint=true")
    T.train(one_epoch_cfg(*run), tmp_path / "ref")
    train_interrupted_at(monkeypatch, one_epoch_cfg(*run), tmp_path / "a", step=5)
    T.train(one_epoch_cfg(*run, f"resume={tmp_path / 'a'}"), tmp_path / "b")
    ref, got = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ref", "b"))
    assert got["status"] == "completed"
    for key in ("test_acc", "test_loss", "best_val_acc", "best_epoch"):
        assert got[key] == ref[key], key
    curves = [[e["train_loss"] for e in json.loads((tmp_path / d / "history.json").read_text())] for d in ("ref", "b")]
    assert curves[0] == curves[1]
