"""Logging overhead: what each logger (conf/logger/) costs, as a share of an epoch of the default main job.

    python -m benchmarks.logging_overhead                         # every logger, ~1 min
    python -m benchmarks.logging_overhead --loggers tensorboard --epochs 15 --rounds 5

For each logger, in rounds that alternate between the loggers (so a busy machine slows them alike), a fresh run
directory gets the logger's whole life as the trainer drives it: ``on_run_start`` (writer or MLflow run created,
params logged), ``--epochs`` calls of ``on_epoch_end`` with a real history record, and ``on_run_end`` (test
results, hyperparameters, artifacts, close). The per-epoch cost is the median ``on_epoch_end``; the one-off cost
is start + end, plus the import of the tracker library, measured once in a fresh interpreter that has torch
already. The epoch it is compared with is the default job's: 430 training steps (55,000 images, batch 128) of the
trainer's step on the default ViT, timed in the same process (validation, ~4% more, is left out, so the shares
are upper bounds). MLflow writes to a SQLite store in a temp folder; the store's one-time creation (schema
migrations, on the first run of a new store) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as C
from vit_lab.run_files import METRICS

LOGGERS = ("csv", "tensorboard", "mlflow")
IMPORTS = {"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow", "csv": "csv"}
STEPS_PER_EPOCH = math.ceil(55_000 / 128)
SWEEP_STEPS_PER_EPOCH = math.ceil(5_000 / 128)  # the sweep preset's per-trial budget


def import_seconds(modules: list[str]) -> dict[str, float]:
    """Seconds to import each module, in this order, in one fresh interpreter that has imported torch (as the
    trainer has); a library shared by two is charged to the first."""
    code = (
        "import json, sys, time, torch\nout = {}\nfor m in sys.argv[1:]:\n    t = time.perf_counter()\n"
        "    __import__(m)\n    out[m] = time.perf_counter() - t\nprint(json.dumps(out))"
    )
    proc = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def record(epoch: int) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 0.1 / epoch,
        "train_acc": 0.9,
        "val_loss": 0.05,
        "val_acc": 0.98,
        "lr": 1e-3,
        "images_per_second": 2500.0,
        "epoch_seconds": 22.0,
        "train_seconds": 22.0 * epoch,
    }


def one_life(name: str, folder: Path, store: str, epochs: int) -> dict:
    """Build the logger from its config and drive it through a run; seconds of each phase."""
    from vit_lab.callbacks import Callbacks

    cfg = C.compose(
        [f"logger={name}", f"logger.mlflow.tracking_uri={store}"] if name == "mlflow" else [f"logger={name}"]
    )
    run_dir = Path(tempfile.mkdtemp(dir=folder))
    (logger,) = list(Callbacks.from_config(cfg))
    t0 = time.perf_counter()
    logger.on_run_start(cfg, run_dir, False)
    t1 = time.perf_counter()
    per_epoch = []
    for epoch in range(1, epochs + 1):
        tic = time.perf_counter()
        logger.on_epoch_end(epoch, record(epoch))
        per_epoch.append(time.perf_counter() - tic)
    metrics = {
        "status": "completed",
        "epochs_completed": epochs,
        "test_acc": 0.98,
        "test_loss": 0.05,
        "best_val_acc": 0.98,
    }
    C.write_json(run_dir / METRICS, metrics)
    t2 = time.perf_counter()
    logger.on_run_end(metrics, "completed")
    return {"start": t1 - t0, "epoch": C.median(per_epoch), "end": time.perf_counter() - t2}


def epoch_seconds(rounds: int, steps: int) -> float:
    """Seconds of one epoch of the default job's training steps (median step x steps per epoch)."""
    model, _ = C.build_vit_lab(C.SIZES["default"])
    x, y = C.synthetic_batch(128)
    step = C.make_contender("vit_lab", model, x, y, compile=C.trainer_compile(C.default_cfg()))
    times = C.interleaved({"step": step.train_step}, steps=steps, rounds=rounds, warmup=2)
    return C.per_call(times["step"], "wall") * STEPS_PER_EPOCH


def measure(loggers: list[str], epochs: int, rounds: int, steps: int) -> dict:
    lives: dict[str, list[dict]] = {n: [] for n in loggers}
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        first_store = one_life("mlflow", Path(tmp), store, 1)["start"] if "mlflow" in loggers else None
        for r in range(rounds):
            for name in loggers[r % len(loggers) :] + loggers[: r % len(loggers)]:
                lives[name].append(one_life(name, Path(tmp), store, epochs))
    epoch = epoch_seconds(max(3, rounds), steps)
    out: dict[str, Any] = {
        "epochs": epochs,
        "rounds": rounds,
        "default_epoch_seconds": epoch,
        "sweep_epoch_seconds": epoch * SWEEP_STEPS_PER_EPOCH / STEPS_PER_EPOCH,
        "loggers": {},
    }
    imports = import_seconds([IMPORTS[name] for name in loggers])
    for name in loggers:
        per_epoch = C.median([life["epoch"] for life in lives[name]])
        once = C.median([life["start"] + life["end"] for life in lives[name]]) + imports[IMPORTS[name]]
        out["loggers"][name] = {
            "per_epoch_seconds": per_epoch,
            "one_off_seconds": once,
            "per_epoch_share": per_epoch / epoch,
            "default_job_share": (per_epoch * 15 + once) / (epoch * 15),  # the main job: 15 epochs
            "sweep_trial_share": (per_epoch * 3 + once) / (out["sweep_epoch_seconds"] * 3),  # 3 small epochs
        }
    if first_store is not None:
        out["mlflow_store_creation_seconds"] = first_store
    return out


def report(r: dict) -> str:
    lines = [
        f"default epoch {r['default_epoch_seconds']:.1f} s (sweep trial epoch {r['sweep_epoch_seconds']:.1f} s); "
        f"{r['epochs']} epochs x {r['rounds']} rounds; load {C.loadavg()}",
        f"{'logger':<12} {'per epoch':>10} {'share':>8} {'one-off':>9} {'main job':>9} {'sweep trial':>12}",
    ]
    for name, v in r["loggers"].items():
        lines.append(
            f"{name:<12} {1e3 * v['per_epoch_seconds']:>8.2f}ms {100 * v['per_epoch_share']:>7.3f}% "
            f"{v['one_off_seconds']:>8.2f}s {100 * v['default_job_share']:>8.3f}% "
            f"{100 * v['sweep_trial_share']:>11.2f}%"
        )
    if "mlflow_store_creation_seconds" in r:
        lines.append(f"(a new MLflow SQLite store: {r['mlflow_store_creation_seconds']:.2f} s once)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loggers", nargs="+", default=list(LOGGERS), choices=LOGGERS)
    p.add_argument("--epochs", type=int, default=15, help="on_epoch_end calls per run (default: the main job's 15)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="training steps per timed chunk of the epoch estimate")
    C.add_step_args(p)
    a = C.parse_step_args(p, argv)
    C.set_threads(a.threads)
    r = measure(a.loggers, a.epochs, a.rounds, a.steps)
    if not a.no_save:
        r["saved"] = str(C.save("logging_overhead", r))
    return C.print_result(r, report)


if __name__ == "__main__":
    main()
