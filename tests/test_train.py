"""End-to-end runs of `python -m vit_lab.train` as subprocesses, on tiny budgets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY, data_root, run_train

pytestmark = pytest.mark.slow


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_main_job_writes_complete_results_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train("model.n_heads=4", "model.hidden_d=16", *TINY, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    m = read(run_dir / "metrics.json")
    assert m["status"] == "completed" and m["epochs_completed"] == 2
    for key in ("test_acc", "best_val_acc", "test_loss", "n_params", "train_seconds", "train_images_per_second",
                "device", "versions"):
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
    proc = run_train("model.n_heads=4", "model.hidden_d=16", *TINY, "trainer.epochs=3", f"resume={run_dir}",
                     f"hydra.run.dir={resumed}")
    assert proc.returncode == 0, proc.stderr
    m2 = read(resumed / "metrics.json")
    assert m2["status"] == "completed" and m2["epochs_completed"] == 3
    assert m2["resumed_from"].endswith("checkpoint.pt")
    assert [r["epoch"] for r in read(resumed / "history.json")] == [1, 2, 3]
    assert read(resumed / "history.json")[:2] == history


def test_tutorial_experiment_runs(tmp_path):
    proc = run_train("experiment=tutorial", "trainer.epochs=1", "data.train_limit=512", "data.val_size=256",
                     "data.test_limit=256", "trainer.progress=false", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    m = read(tmp_path / "metrics.json")
    assert m["n_params"] == 1642 and m["status"] == "completed"


def test_cnn_baseline_runs_with_smoothing_and_clipping(tmp_path):
    proc = run_train("model=cnn", "trainer.epochs=1", "data.train_limit=256", "data.val_size=128",
                     "data.test_limit=128", "trainer.progress=false", "trainer.label_smoothing=0.1",
                     "trainer.grad_clip=0.5", "optimizer=sgd", "augment=affine", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    m = read(tmp_path / "metrics.json")
    assert m["model"] == "SimpleCNN" and m["status"] == "completed"
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["trainer"]["grad_clip"] == 0.5 and ckpt["config"]["optimizer"]["_target_"] == "torch.optim.SGD"


def test_grid_multirun(tmp_path):
    proc = run_train("-m", "model.patch_size=4,7", *[o for o in TINY if "patch_size" not in o], "trainer.epochs=1",
                     f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    assert {read(p / "metrics.json")["status"] for p in jobs} == {"completed"}


def _assert_one_clear_line(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line
             and not line.startswith("  ")]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("override,words", [
    ("model.patch_size=5", ["model.patch_size=5", "28x28"]),
    ("model.n_heads=3", ["model.n_heads=3", "hidden_d=64"]),
    ("model.depth=two", ["model.depth", "two"]),
    ("trainer.epochs=0", ["trainer.epochs=0"]),
    ("device.tune_malloc=maybe", ["device.tune_malloc='maybe'", "true or false"]),
    ("model.attn_kernel=flash", ["model.attn_kernel='flash'", "auto, sdpa, explicit"]),
    # an index past the last GPU, so the case also holds on machines that have one
    ("device=cuda" if not torch.cuda.is_available() else "device.name=cuda:99", ["device=cuda"]),
    ("device=mps", ["device=mps"]),
])
def test_bad_overrides_one_clear_line(tmp_path, override, words):
    proc = run_train(override, f"hydra.run.dir={tmp_path}")
    _assert_one_clear_line(proc, *words)
    if override != "model.depth=two":
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
