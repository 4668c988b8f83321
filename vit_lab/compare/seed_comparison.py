"""The seed's step 3 from real runs: the tutorial setup, the tutorial with the double-softmax fix, the default
ViT and the CNN baseline on MNIST, each trained with several seeds, then one table of means with 95% confidence
intervals and Welch's t-tests between the rows.

    python -m vit_lab.compare.seed_comparison                          # 4 rows x 3 seeds, into outputs/seed_comparison/
    python -m vit_lab.compare.seed_comparison --seeds 0                # one seed per row
    python -m vit_lab.compare.seed_comparison device=cpu --out outputs/seed_cpu
    python -m vit_lab.compare.seed_comparison --dry-run                # print the commands only

Runs go to ``<out>/<row>/seed<k>/``, seed by seed (every row's seed 0 first), so the first complete
comparison exists early. Extra ``key=value`` arguments are passed to every run (so keep them to trainer.*,
data.*, device.*). A run whose folder already holds a completed ``metrics.json`` is kept, not retrained
(``--force`` retrains), so an interrupted comparison continues where it stopped. Training logs go to stderr;
stdout gets only the tables, as markdown by default (``--format``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from vit_lab.compare.runs import load_run
from vit_lab.run_files import METRICS

# (folder, overrides): the folder names sort in the table's order.
RUNS: tuple[tuple[str, list[str]], ...] = (
    ("1-tutorial", ["experiment=tutorial"]),
    ("2-tutorial_fixed", ["experiment=tutorial_fixed"]),
    ("3-vit", []),
    ("4-cnn", ["model=cnn"]),
)
GROUP_BY = "experiment,model"  # tells the four rows apart
STATS = "test_acc,best_val_acc,test_loss,params,time"
DEFAULT_SEEDS = "0,1,2"


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give distinct integers >= 0, e.g. 0,1,2")
    return seeds


def commands(out: Path, extra: list[str], seeds: list[int]) -> list[tuple[Path, list[str]]]:
    """Every run's folder and command, seed by seed (every row's first seed, then the next seed, ...)."""
    return [
        (
            out / name / f"seed{seed}",
            [
                sys.executable,
                "-m",
                "vit_lab.train",
                *preset,
                *extra,
                f"trainer.seed={seed}",
                f"hydra.run.dir={out / name / f'seed{seed}'}",
            ],
        )
        for seed in seeds
        for name, preset in RUNS
    ]


def _log_stream():
    """Training logs go to stderr, so stdout carries only the table (`... > table.md`)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr without a file descriptor
        return None


def _train(todo: list[tuple[Path, list[str], str]], jobs: int) -> list[str]:
    """Run the commands, ``jobs`` at a time; returns the runs that failed."""
    failed: list[str] = []
    running: list[tuple[Path, subprocess.Popen]] = []
    for run_dir, cmd, shown in todo:
        while len(running) >= max(jobs, 1):
            done, proc = running.pop(0)
            if proc.wait() != 0:
                failed.append(f"{done.parent.name}/{done.name}")
        print(f"seed_comparison: {shown}", file=sys.stderr, flush=True)
        running.append((run_dir, subprocess.Popen(cmd, stdout=_log_stream())))
    for done, proc in running:
        if proc.wait() != 0:
            failed.append(f"{done.parent.name}/{done.name}")
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vit_lab.compare.seed_comparison",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. device=cpu")
    p.add_argument("--out", default="outputs/seed_comparison", help="folder for the runs")
    p.add_argument(
        "--seeds",
        type=parse_seeds,
        default=parse_seeds(DEFAULT_SEEDS),
        help=f"comma-separated trainer.seed values, one run per row each (default {DEFAULT_SEEDS})",
    )
    p.add_argument("--force", action="store_true", help="retrain runs that already completed")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once (default 1; keep 1 when the times and img/s are to be compared)",
    )
    p.add_argument("--format", choices=("markdown", "table", "csv", "json"), default="markdown")
    args = p.parse_args(argv)
    out = Path(args.out)
    todo = []
    for run_dir, cmd in commands(out, args.overrides, args.seeds):
        shown = " ".join(shlex.quote(c) for c in ["python", *cmd[1:]])
        if args.dry_run:
            print(shown)
        elif not args.force and (run_dir / METRICS).exists() and load_run(run_dir).status == "completed":
            print(f"seed_comparison: keeping completed {run_dir}", file=sys.stderr)
        else:
            todo.append((run_dir, cmd, shown))
    if args.dry_run:
        return 0
    failed = _train(todo, args.jobs)
    from vit_lab.compare.__main__ import main as compare

    rc = compare(
        [
            str(out),
            "--group-by",
            GROUP_BY,
            "--stats",
            STATS,
            "--test",
            "test_acc",
            "--format",
            args.format,
            "--no-sweeps",
        ]
    )
    if failed:
        print(f"seed_comparison: failed runs: {', '.join(failed)} (see their train.log)", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
