"""Sweep throughput: trials per hour of the same pruned `hparams_search=vit_optuna` study, run three ways on the same
cores, and the share of worker time lost waiting for a batch.

    python -m benchmarks.sweep_throughput                      # 12 trials per mode, the preset's budget (~20-30 min)
    python -m benchmarks.sweep_throughput --rounds 2           # each mode twice, alternating; medians reported
    python -m benchmarks.sweep_throughput --micro              # a few seconds per mode: checks the plumbing

Modes (T = --threads, 2 by default):
  single   1 worker x T threads:     one sweep process, hydra.sweeper.n_jobs=1, device.threads=T
  workers  2 workers x T/2 threads:  two sweep processes on one storage (total_trials), n_jobs=1 each
  joblib   joblib n_jobs=2:          one sweep process, batches of 2 trials run by joblib, T/2 threads each

Each mode gets a fresh SQLite study (same search space, sampler seed and median pruner). Per trial, the job's busy
time is its folder's metrics.json mtime minus its .hydra/config.yaml mtime (written as the job starts). A slot's
time lost to a batch (joblib) is the time between a job's end and its batch's end; `idle` is the rest of the
slots' time not spent in jobs (process start, ask and tell). Everything after the options goes to every worker as
Hydra overrides. Results: benchmarks/results/sweep_throughput-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common as C
from vit_lab.run_files import METRICS

MODES = ("single", "workers", "joblib")
MICRO = [
    "data.train_limit=256",
    "data.val_size=128",
    "data.test_limit=128",
    "trainer.batch_size=64",
    "model.depth=1",
    "model.hidden_d=16",
    "model.patch_size=7",
    "trainer.epochs=2",
    "hydra.sweeper.pruner.n_startup_trials=1",
]


def commands(mode: str, trials: int, threads: int, overrides: list[str]) -> list[list[str]]:
    """The sweep command of each worker process of a mode."""
    base = [
        sys.executable,
        "-m",
        "vit_lab.train",
        "-m",
        "hparams_search=vit_optuna",
        "trainer.progress=false",
        f"hydra.sweeper.n_trials={trials}",
    ]
    half = max(1, threads // 2)
    if mode == "single":
        return [base + ["hydra.sweeper.n_jobs=1", f"device.threads={threads}", *overrides]]
    if mode == "workers":
        return [
            base
            + ["hydra.sweeper.n_jobs=1", f"hydra.sweeper.total_trials={trials}", f"device.threads={half}", *overrides]
        ] * 2
    return [
        base
        + [
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.n_jobs=2",
            f"device.threads={half}",
            *overrides,
        ]
    ]


def run_mode(mode: str, trials: int, threads: int, overrides: list[str], keep: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"sweep-{mode}-"))
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmds = commands(mode, trials, threads, overrides)
    load0, t0 = C.loadavg(), time.time()
    procs = [
        subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in cmds
    ]
    logs = [p.communicate()[0] for p in procs]
    wall = time.time() - t0
    result = {
        "mode": mode,
        "workers": len(cmds),
        "command": " ".join(cmds[0][1:]),
        "wall_seconds": wall,
        "returncodes": [p.returncode for p in procs],
        "loadavg_start": load0,
        "loadavg_end": C.loadavg(),
        **study_figures(folder, mode, wall, slots=2 if mode != "single" else 1),
    }
    if any(p.returncode for p in procs):
        result["log_tail"] = "".join(log[-2000:] for log in logs)
    if keep:
        result["folder"] = str(folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def study_figures(folder: Path, mode: str, wall: float, slots: int) -> dict:
    """Trials/hour, states, epochs, and how the slots' time was spent, from the study and the trials' folders."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="vit_optuna-mnist", storage=f"sqlite:///{folder}/outputs/optuna.db")
    trials = sorted(study.trials, key=lambda t: t.number)
    jobs = {t.number: job_span(Path(t.user_attrs["run_dir"])) for t in trials if "run_dir" in t.user_attrs}
    busy = sum(end - start for start, end in jobs.values())
    batch_wait = 0.0
    if mode == "joblib":  # one sweep process asks its batches of 2 in trial-number order
        numbers = [t.number for t in trials if t.number in jobs]
        for batch in (numbers[i : i + 2] for i in range(0, len(numbers), 2)):
            last = max(jobs[n][1] for n in batch)
            batch_wait += sum(last - jobs[n][1] for n in batch)
    finished = [t for t in trials if t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED")]
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    return {
        "trials": states,
        "trials_per_hour": 3600 * len(finished) / wall,
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
        "best_val_acc": max((t.value for t in complete if t.value is not None), default=None),
        "slot_seconds": slots * wall,
        "busy_share": busy / (slots * wall),
        "batch_wait_share": batch_wait / (slots * wall),
        "idle_share": 1 - (busy + batch_wait) / (slots * wall),
        "mean_job_seconds": statistics.fmean(e - s for s, e in jobs.values()) if jobs else None,
    }


def job_span(run_dir: Path) -> tuple[float, float]:
    start = (run_dir / ".hydra" / "config.yaml").stat().st_mtime
    end = run_dir / METRICS  # absent only for a job that crashed before it trained
    return start, end.stat().st_mtime if end.exists() else start


def summarise(runs: list[dict]) -> dict:
    """Medians per mode over the rounds."""
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        mine = [r for r in runs if r["mode"] == mode]
        out[mode] = {
            key: statistics.median(r[key] for r in mine)
            for key in (
                "trials_per_hour",
                "wall_seconds",
                "batch_wait_share",
                "idle_share",
                "busy_share",
                "epochs_trained",
            )
        }
    return out


def report(result: dict) -> str:
    lines = [
        f"{result['trials']} trials per mode, {result['threads']} threads in all, rounds {result['rounds']}",
        "| mode | trials/hour | wall s | epochs | busy | waiting for a batch | idle |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, s in result["summary"].items():
        lines.append(
            f"| {mode} | {s['trials_per_hour']:.0f} | {s['wall_seconds']:.0f} | {s['epochs_trained']:.0f} | "
            f"{100 * s['busy_share']:.0f}% | {100 * s['batch_wait_share']:.0f}% | "
            f"{100 * s['idle_share']:.0f}% |"
        )
    for r in result["runs"]:
        if any(r["returncodes"]):
            lines.append(f"{r['mode']}: a worker failed (rc {r['returncodes']}):\n{r.get('log_tail', '')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--threads", type=int, default=2, help="torch threads in all (single: T; workers, joblib: T/2 each)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of single,workers,joblib")
    p.add_argument("--rounds", type=int, default=1, help="run the modes this many times, alternating")
    p.add_argument("--micro", action="store_true", help="tiny trials (a few seconds each): checks the plumbing")
    p.add_argument("--keep", action="store_true", help="keep each mode's folder (outputs/ and the study)")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every worker, e.g. trainer.epochs=5")
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    overrides = (MICRO if a.micro else []) + a.overrides
    runs = [run_mode(m, a.trials, a.threads, overrides, a.keep) for _ in range(a.rounds) for m in modes]
    result = {
        "trials": a.trials,
        "threads": a.threads,
        "rounds": a.rounds,
        "overrides": overrides,
        "runs": runs,
        "summary": summarise(runs),
    }
    if not a.no_save:
        result["saved"] = str(C.save("sweep_throughput", result))
    return C.print_result(result, report)


if __name__ == "__main__":
    main()
