"""Time to accuracy: run an experiment as `python -m vit_lab.train ...` in a subprocess; record its per-epoch
curve, wall time, the first epoch that reaches a target accuracy, the final test accuracy and the peak RSS.

    python -m benchmarks.time_to_accuracy                                   # the default main job (~10 min)
    python -m benchmarks.time_to_accuracy --target 0.995 experiment=best_cpu   # ~20 min
    python -m benchmarks.time_to_accuracy --target 0.93 experiment=fashion_cpu   # Fashion-MNIST, ~31 min
    python -m benchmarks.time_to_accuracy --target 0.9965 experiment=best device=cuda   # on a GPU
    python -m benchmarks.time_to_accuracy --target 0.923 data=fashion_mnist experiment=best
    python -m benchmarks.time_to_accuracy --smoke                           # a few seconds: checks the plumbing

Everything after the options is passed to the trainer as Hydra overrides. The run directory is
``benchmarks/results/tta-<time>/`` (git-ignored); the summary JSON lands beside it. Peak RSS is the child's
``ru_maxrss`` (exact peak resident memory of the main job, Linux), also polled with psutil when installed.
The target is checked on validation accuracy per epoch (the test set is read once, at the end).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import _common as C
from vit_lab.io import read_json
from vit_lab.run_files import HISTORY, METRICS

SMOKE = [
    "trainer.epochs=1",
    "data.train_limit=512",
    "data.val_size=256",
    "data.test_limit=256",
    "trainer.batch_size=64",
    "model.depth=1",
    "model.hidden_d=16",
    "model.patch_size=7",
    "trainer.progress=false",
    "trainer.checkpoint=false",
]


def _poll_rss(pid: int, out: dict, stop: threading.Event) -> None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with the bench extra
        return
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            out["psutil_peak_rss_bytes"] = max(out.get("psutil_peak_rss_bytes", 0), rss)
            stop.wait(0.5)
    except psutil.Error:
        pass


CURVE_KEYS = ("epoch", "train_seconds", "train_loss", "val_loss", "val_acc", "lr", "images_per_second")


def first_reaching(history: list[dict], target: float | None) -> dict | None:
    """The first epoch whose validation accuracy reaches ``target`` (its epoch, training seconds and accuracy)."""
    if target is None:
        return None
    hits = (r for r in history if r.get("val_acc", 0) >= target)
    return next(({k: r[k] for k in ("epoch", "train_seconds", "val_acc")} for r in hits), None)


def run(
    overrides: list[str], target: float | None = None, run_dir: Path | None = None, save: bool = True, echo: bool = True
) -> dict:
    run_dir = Path(run_dir or C.RESULTS / f"tta-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vit_lab.train", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    load0 = C.loadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=C.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    polled: dict = {}
    stop = threading.Event()
    poller = threading.Thread(target=_poll_rss, args=(proc.pid, polled, stop), daemon=True)
    poller.start()
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if echo:
            print(line, end="", flush=True)
    rc = proc.wait()  # stdout is closed: the trainer has exited
    wall = time.perf_counter() - t0
    stop.set()
    maxrss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    history = read_json(run_dir / HISTORY) if (run_dir / HISTORY).exists() else []
    metrics = read_json(run_dir / METRICS) if (run_dir / METRICS).exists() else {}
    reached = first_reaching(history, target)
    result = {
        "command": " ".join(["python -m vit_lab.train", *overrides]),
        "returncode": rc,
        "run_dir": str(run_dir),
        "wall_seconds": wall,
        "train_seconds": metrics.get("train_seconds"),
        "test_acc": metrics.get("test_acc"),
        "best_val_acc": metrics.get("best_val_acc"),
        "n_params": metrics.get("n_params"),
        "train_images_per_second": metrics.get("train_images_per_second"),
        "status": metrics.get("status"),
        "target": target,
        "target_reached_at": reached,
        # ru_maxrss of waited-for children: the largest so far, exact when this is the process's only big child
        "peak_rss_bytes": maxrss_kib * 1024,
        "peak_rss_may_include_earlier_children": before > 0,
        "psutil_peak_rss_bytes": polled.get("psutil_peak_rss_bytes"),
        "curve": [{k: r.get(k) for k in CURVE_KEYS} for r in history],
        "loadavg_start": load0,
        "loadavg_end": C.loadavg(),
        "log_tail": "".join(lines[-20:]),
    }
    if save:
        result["saved"] = str(C.save("time_to_accuracy", result))
    return result


def report(r: dict) -> str:
    out = [
        f"$ {r['command']}",
        f"  status {r['status']} (rc {r['returncode']}), wall {r['wall_seconds']:.0f}s, "
        f"train {r['train_seconds'] or 0:.0f}s, params {r['n_params']}, "
        f"load {r['loadavg_start']} -> {r['loadavg_end']}",
    ]
    for p in r["curve"]:
        out.append(
            f"  epoch {p['epoch']:3d}  t={p['train_seconds']:7.1f}s  val_acc {100 * (p['val_acc'] or 0):6.2f}%  "
            f"train_loss {p['train_loss']:.4f}  {p['images_per_second']:.0f} img/s"
        )
    test = r["test_acc"]
    out.append(f"  test_acc {100 * test:.2f}%" if test is not None else "  test_acc n/a")
    if r["target"] is not None:
        hit = r["target_reached_at"]
        out.append(
            f"  target val_acc {100 * r['target']:.2f}%: "
            + (
                f"reached at epoch {hit['epoch']} after {hit['train_seconds']:.0f}s of training"
                if hit
                else "not reached"
            )
        )
    out.append(
        f"  peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB"
        + (f" (psutil poll {r['psutil_peak_rss_bytes'] / 2**20:.0f} MiB)" if r.get("psutil_peak_rss_bytes") else "")
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, default=None, help="validation accuracy to time (fraction, e.g. 0.985)")
    p.add_argument("--smoke", action="store_true", help="a few-second run on a tiny budget (checks the plumbing)")
    p.add_argument("--run-dir", type=Path, default=None)
    p.add_argument("--quiet", action="store_true", help="do not echo the trainer's output")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for vit_lab.train, e.g. experiment=best_cpu")
    a = p.parse_args(argv)
    overrides = (SMOKE if a.smoke else []) + a.overrides
    target = a.target if a.target is not None else (None if a.smoke else 0.985)
    r = run(overrides, target, a.run_dir, save=not a.no_save, echo=not a.quiet)
    return C.print_result(r, report)


if __name__ == "__main__":
    main()
