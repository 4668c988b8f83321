"""`python -m vit_lab.figures` on a seed-comparison folder of fake runs (initial weights, made-up histories)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
from conftest import run_module
from fake_runs import CNN, fake_run


def seed_folder(root: Path) -> Path:
    """<root>/<row>/seed<k> for the ViT and CNN rows (two seeds each) and the tutorial rows (one seed)."""
    rows = {"1-tutorial": ([], 1), "2-tutorial_fixed": ([], 1), "3-vit": ([], 2), "4-cnn": (CNN, 2)}
    for name, (base, seeds) in rows.items():
        for seed in range(seeds):
            run, _ = fake_run(root / name / f"seed{seed}", f"trainer.seed={seed}", base=base or None, seed=seed)
            (run / "metrics.json").write_text(json.dumps({"status": "completed", "test_acc": 0.1}))
            hist = [{"epoch": e, "val_acc": 0.5 + 0.1 * e + 0.01 * seed, "train_loss": 2.0 / e} for e in (1, 2, 3)]
            (run / "history.json").write_text(json.dumps(hist))
    return root


def sweep_folder(root: Path) -> Path:
    """Six hand-made completed trials and a pruned one (left out of the plot)."""
    import yaml

    for i, (ps, depth, heads) in enumerate(
        [(4, 2, 2), (4, 4, 4), (7, 2, 4), (7, 6, 8), (14, 4, 2), (7, 4, 2), (4, 6, 8)]
    ):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        cfg = {
            "model": {"patch_size": ps, "depth": depth, "n_heads": heads},
            "data": {},
            "trainer": {},
            "optimizer": {},
        }
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        status = "pruned" if i == 6 else "completed"
        (run / "metrics.json").write_text(json.dumps({"status": status, "best_val_acc": 0.8 + 0.01 * i}))
    return root


def drawn(path: Path, size: tuple[int, int] | None = None) -> None:
    img = mpimg.imread(path)
    assert img[..., :3].std() > 0.05, path  # not a blank canvas
    if size:
        assert (img.shape[1], img.shape[0]) == size, path


def test_figures_and_report(tmp_path):
    runs = seed_folder(tmp_path / "seed")
    proc = run_module(
        "vit_lab.figures",
        "--runs",
        str(runs),
        "--out",
        str(tmp_path / "docs"),
        "--deletion",
        "20",
        "--sweep",
        str(sweep_folder(tmp_path / "sweep")),
    )
    assert proc.returncode == 0, proc.stderr
    drawn(tmp_path / "docs" / "sweep.png", (1200, 360))
    docs = tmp_path / "docs"
    drawn(docs / "learning_curves.png", (1000, 400))
    drawn(docs / "confusion_vit_cnn.png", (920, 440))
    drawn(docs / "confusion_tutorial.png", (920, 440))
    for name in ("attention_rollout.png", "attention_misclassified.png", "attention_layers.png"):
        drawn(docs / name)
    assert "no --sweep given" not in proc.stdout and "6 completed trials" in proc.stdout

    evals = {
        (row, s): json.loads((runs / row / f"seed{s}" / "eval.json").read_text())
        for row in ("3-vit", "4-cnn")
        for s in (0, 1)
    }
    for s in (0, 1):
        vit, cnn = set(evals["3-vit", s]["misclassified"]), set(evals["4-cnn", s]["misclassified"])
        assert f"seed {s}: ViT wrong on {len(vit)}, CNN on {len(cnn)}, both on {len(vit & cnn)} " in proc.stdout
    both = len(set(evals["3-vit", 0]["misclassified"]) & set(evals["3-vit", 1]["misclassified"]))
    assert f"ViT against itself with another seed: both wrong on {both} of " in proc.stdout
    assert proc.stdout.count("deletion test of ") == 2 and "20 test images, 2 of 16 patches masked" in proc.stdout


def test_figures_error_is_one_line(tmp_path):
    proc = run_module("vit_lab.figures", "--runs", str(tmp_path), "--out", str(tmp_path / "docs"))
    assert proc.returncode == 2 and "needs completed 3-vit and 4-cnn runs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "docs").exists()
