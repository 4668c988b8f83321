"""`python -m vit_lab.compare RUNS --plot tta.png --time`: validation accuracy against cumulative training time,
read back from the PNG (its size and one colour per run's line)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml
from matplotlib import colormaps

from vit_lab.compare.__main__ import main
from vit_lab.compare.plots import time_curve

# (seconds per epoch, validation accuracy per epoch): a fast run, a slow accurate one, one with a missing epoch time
RUNS = {
    "fast": (20.0, [0.90, 0.97, 0.985, 0.990]),
    "slow": (60.0, [0.95, 0.985, 0.992, 0.995, 0.996]),
    "old": (None, [0.85, 0.95, 0.98]),
}


def make_run(path: Path, seconds: float | None, accs: list[float]) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"model": {"_target_": "vit_lab.models.MyViT"}, "trainer": {"epochs": len(accs)}})
    )
    (path / "metrics.json").write_text(
        json.dumps(
            {"status": "completed", "epochs": len(accs), "epochs_completed": len(accs), "best_val_acc": max(accs)}
        )
    )
    history = [
        {
            "epoch": i + 1,
            "val_acc": a,
            "epoch_seconds": seconds if seconds else 30.0,
            **({"train_seconds": seconds * (i + 1)} if seconds else {}),
        }
        for i, a in enumerate(accs)
    ]
    (path / "history.json").write_text(json.dumps(history))
    return path


def colours_drawn(png: Path, n: int) -> list[bool]:
    """Whether each of the first n tab10 colours appears (exactly, as lines and markers draw it) in the image."""
    img = mpimg.imread(png)[..., :3]
    tab10 = colormaps["tab10"]
    return [bool((np.abs(img - np.array(tab10(i)[:3])).max(axis=-1) < 1.5 / 255).sum() > 50) for i in range(n)]


def test_time_curve_is_cumulative_minutes():
    assert time_curve([{"train_seconds": 30, "val_acc": 0.9}, {"train_seconds": 90, "val_acc": 0.95}]) == [
        (0.5, 0.9),
        (1.5, 0.95),
    ]
    assert time_curve([{"epoch_seconds": 60, "val_acc": 0.9}, {"epoch_seconds": 120, "val_acc": 0.97}]) == [
        (1.0, 0.9),
        (3.0, 0.97),
    ]  # an older history without train_seconds: the epochs' times add up
    assert time_curve([{"epoch_seconds": 60, "val_acc": float("nan")}, {"epoch_seconds": 60}]) == []


def test_time_to_accuracy_png_has_one_line_per_run(tmp_path, capsys):
    for name, (seconds, accs) in RUNS.items():
        make_run(tmp_path / "runs" / name, seconds, accs)
    out = tmp_path / "tta.png"
    assert main([str(tmp_path / "runs"), "--plot", str(out), "--time"]) == 0
    assert "time to accuracy of 3 runs" in capsys.readouterr().err
    img = mpimg.imread(out)
    assert img.shape[:2] == (600, 900) and out.stat().st_size > 10_000
    assert colours_drawn(out, 5) == [True, True, True, False, False]  # three lines, no fourth

    out2 = tmp_path / "two.png"
    assert main([str(tmp_path / "runs" / "fast"), str(tmp_path / "runs" / "slow"), "--plot", str(out2), "--time"]) == 0
    assert colours_drawn(out2, 4) == [True, True, False, False]


@pytest.mark.parametrize(
    "args, message", [(["--time"], "go with --plot"), (["--plot", "x.png", "--time", "--history"], "takes one of")]
)
def test_time_flag_errors_are_one_line(tmp_path, capsys, args, message):
    make_run(tmp_path / "runs" / "a", 10.0, [0.9])
    assert main([str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_runs_without_history_are_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "a", 10.0, [0.9])
    (run / "history.json").unlink()
    assert main([str(tmp_path / "runs"), "--plot", str(tmp_path / "x.png"), "--time"]) == 2
    assert "none of the shown runs has a history.json" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
