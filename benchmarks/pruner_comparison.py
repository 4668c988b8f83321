"""What the pruners buy: the same seeded `vit_optuna` sweep with the median, hyperband and nop pruners.

For each pruner, runs `python -m vit_lab.train -m hparams_search=vit_optuna hydra/sweeper/pruner=<p>` with its
own SQLite study and sweep folder under --out, then reports the trials complete and pruned, the epochs
trained (sum over trials), the training seconds (sum of the trials' `train_seconds`), the sweep's wall time
and the best configuration. With --retrain, each distinct best configuration is trained at the full budget
(the default recipe: 15 epochs, all data) to see whether pruning changed the answer.

    python -m benchmarks.pruner_comparison                           # 20 trials per pruner, the preset's budget
    python -m benchmarks.pruner_comparison --retrain                 # + the best configurations at full budget
    python -m benchmarks.pruner_comparison --report                  # only the table, from what is there
    python -m benchmarks.pruner_comparison --trials 4 -- trainer.epochs=2 data.train_limit=512   # a smoke run

Resumable: a sweep that was killed is continued up to --trials finished trials (the study is persistent), a
finished one is not rerun, nor a finished retrain. Wall times are only meaningful on a quiet machine.
Results: `<out>/pruners.json` and `<out>/pruners.md`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import _common as C
from vit_lab.io import atomic_write, read_json, write_json
from vit_lab.run_files import CHECKPOINT, METRICS

PRUNERS = ("median", "hyperband", "nop")
STUDY = "vit_optuna-mnist"


def _load(out: Path, pruner: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = out / f"{pruner}.db"
    if not db.is_file():
        return None
    try:
        return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    except KeyError:  # the storage exists but the study was never created
        return None


def _finished(study) -> int:
    from optuna.trial import TrialState

    return (
        0 if study is None else len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    )


def sweep(pruner: str, trials: int, out: Path, extra: list[str]) -> None:
    """Run (or continue) one pruner's sweep until it has `trials` complete or pruned trials."""
    todo = trials - _finished(_load(out, pruner))
    if todo <= 0:
        return
    cmd = [
        sys.executable,
        "-m",
        "vit_lab.train",
        "-m",
        "hparams_search=vit_optuna",
        f"hydra/sweeper/pruner={pruner}",
        f"hydra.sweeper.n_trials={todo}",
        f"hydra.sweeper.storage=sqlite:///{out / f'{pruner}.db'}",
        f"hydra.sweep.dir={out / pruner}",
        "device=cpu",
        *extra,
    ]
    print(f"[{time.strftime('%H:%M:%S')}] {pruner}: {todo} trials", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, check=False, cwd=C.REPO, env={**os.environ, "MPLBACKEND": "Agg"}, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{pruner} sweep failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    walls = _read(out / f"{pruner}.wall.json", {"seconds": 0.0, "sessions": 0, "loadavg": []})
    walls["seconds"] += wall
    walls["sessions"] += 1
    walls["loadavg"].append(C.loadavg())
    write_json(out / f"{pruner}.wall.json", walls)


def _read(path: Path, default):
    try:
        return read_json(path)
    except (OSError, ValueError):
        return default


def describe(out: Path, pruner: str) -> dict | None:
    """Trial counts, epochs and seconds trained, wall time and the best trial of one pruner's study."""
    from optuna.trial import TrialState

    study = _load(out, pruner)
    if study is None:
        return None
    trials = study.get_trials(deepcopy=False)
    epochs, seconds = 0, 0.0
    for t in trials:
        m = _read(Path(t.user_attrs.get("run_dir", "")) / METRICS, {})
        epochs += m.get("epochs_completed", len(t.intermediate_values))
        seconds += m.get("train_seconds") or 0.0
    row = {
        "pruner": pruner,
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "epochs": epochs,
        "train_seconds": seconds,
        "wall_seconds": _read(out / f"{pruner}.wall.json", {}).get("seconds"),
        "best": None,
    }
    try:
        best = study.best_trial
        row["best"] = {"trial": best.number, "val_acc": best.value, "params": dict(best.params)}
    except ValueError:
        pass
    return row


def _retrain_dir(params: dict, out: Path) -> Path:
    return (
        out
        / "retrain"
        / "-".join(
            f"{k.rsplit('.', 1)[-1]}{v:.4g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}{v}"
            for k, v in sorted(params.items())
        )
    )


def retrain(params: dict, out: Path, run: bool = True, extra: list[str] | None = None) -> dict | None:
    """The best configuration at the full budget (the default recipe); trained unless already done (or `run`
    is false)."""
    run_dir = _retrain_dir(params, out)
    name = run_dir.name
    if _read(run_dir / METRICS, {}).get("status") != "completed":
        if not run:
            return None
        args = [f"{k}={v}" for k, v in params.items()] + ["trainer.progress=false", "device=cpu", *(extra or [])]
        if (run_dir / CHECKPOINT).is_file():
            args.append(f"resume={run_dir}")
        print(f"[{time.strftime('%H:%M:%S')}] retrain {name}", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "vit_lab.train", *args, f"hydra.run.dir={run_dir}"],
            check=False,
            cwd=C.REPO,
            env={**os.environ, "MPLBACKEND": "Agg"},
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"  failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            return None
    m = read_json(run_dir / METRICS)
    return {"run_dir": str(run_dir), "best_val_acc": m["best_val_acc"], "test_acc": m["test_acc"]}


def markdown(rows: list[dict]) -> str:
    head = (
        "| pruner | complete | pruned | epochs trained | training s | wall s | best val (screening) "
        "| best configuration | full budget: val / test |"
    )
    lines = [head, "| --- |" + " --- |" * 8]
    for r in rows:
        b = r["best"] or {}
        params = ", ".join(
            f"{k.rsplit('.', 1)[-1]} {v:.2g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]} {v}"
            for k, v in (b.get("params") or {}).items()
        )
        full = r.get("full")
        full_text = f"{100 * full['best_val_acc']:.2f}% / {100 * full['test_acc']:.2f}%" if full else "-"
        wall = f"{r['wall_seconds']:.0f}" if r.get("wall_seconds") else "-"
        best = f"{100 * b['val_acc']:.2f}% (trial {b['trial']})" if b else "-"
        lines.append(
            f"| {r['pruner']} | {r['complete']} | {r['pruned']} | {r['epochs']} | {r['train_seconds']:.0f} | "
            f"{wall} | {best} | {params or '-'} | {full_text} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=C.RESULTS / "pruners")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--pruners", nargs="*", default=list(PRUNERS), choices=list(PRUNERS))
    p.add_argument("--retrain", action="store_true", help="train each distinct best configuration at full budget")
    p.add_argument("--report", action="store_true", help="only the table, from the sweeps already there")
    p.add_argument(
        "--full-overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for the retrains (default: none, i.e. the default recipe)",
    )
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every trial (after --)")
    a = p.parse_args(argv)
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.report:
        for pruner in a.pruners:
            sweep(pruner, a.trials, a.out, a.overrides)
    rows = [r for r in (describe(a.out, pr) for pr in a.pruners) if r is not None]
    for r in rows:  # without --retrain, a retrain done earlier is still reported
        if r["best"]:
            r["full"] = retrain(r["best"]["params"], a.out, run=a.retrain, extra=a.full_overrides)
    text = markdown(rows)
    write_json(
        a.out / "pruners.json",
        {
            "trials": a.trials,
            "overrides": a.overrides,
            "rows": rows,
            "same_best": len({str(sorted(r["best"]["params"].items())) for r in rows if r["best"]}) == 1,
        },
    )
    atomic_write(a.out / "pruners.md", lambda f: f.write(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
