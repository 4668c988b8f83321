"""`python -m vit_lab.compare`: see, rank, diff and plot runs.

python -m vit_lab.compare                                  # every run under outputs/
python -m vit_lab.compare outputs/multirun/2026-11-27/10-00-00 outputs/runs
python -m vit_lab.compare --sort test_acc --top 10 --where model.patch_size=4
python -m vit_lab.compare --format markdown|csv|json
python -m vit_lab.compare diff RUN_A RUN_B
python -m vit_lab.compare outputs/seed_comparison --group-by model --test test_acc
python -m vit_lab.compare diff outputs/seed_comparison/3-vit outputs/seed_comparison/4-cnn
python -m vit_lab.compare --plot curves.png
python -m vit_lab.compare RUN_A RUN_B --plot tta.png --time             # validation accuracy against time
python -m vit_lab.compare --plot sweep.png --x model.patch_size
python -m vit_lab.compare outputs/multirun/... --plot history.png --history
python -m vit_lab.compare outputs/multirun/... --plot pareto.png --pareto   # a multi-objective sweep
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from vit_lab.compare.columns import build_columns
from vit_lab.compare.errors import NoRunsError, UsageError
from vit_lab.compare.metrics import METRICS, canonical
from vit_lab.compare.query import best_run, select
from vit_lab.compare.render import render_csv, render_json, render_text
from vit_lab.compare.runs import RunInfo, display_path, find, is_run_dir, load_run, natural_key, walk
from vit_lab.errors import OutputError

PROG = "python -m vit_lab.compare"
FORMATS = ("table", "markdown", "csv", "json")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError(f"{message} (see {PROG} --help)")


def _table_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Compare run directories: a table of runs (sorted, filtered), Optuna sweep "
        "summaries and plots. `diff RUN_A RUN_B` compares two runs.",
        epilog=f"Two runs: {PROG} diff RUN_A RUN_B [--format table|markdown|json]. Keys are metrics "
        "(test_acc, best_val_acc, test_loss, params, epochs, time, img/s), group choices (model, "
        "experiment) or config keys (model.patch_size).",
    )
    p.add_argument("paths", nargs="*", default=["outputs"], help="run or sweep folders to search (default: outputs/)")
    p.add_argument("--sort", metavar="KEY", help="sort by a metric (accuracies high first) or config key")
    p.add_argument("--reverse", action="store_true", help="flip the sort order")
    p.add_argument("--top", type=int, metavar="N", help="show the first N runs after sorting")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs where KEY=VALUE (also !=, <, <=, >, >=); repeatable, all must hold",
    )
    p.add_argument(
        "--columns",
        metavar="LIST",
        help="comma-separated: path, status, choices, diff, metrics, note, "
        "or any metric, choice or config key (default: path,status,choices,diff,metrics,note)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default, fits the terminal), markdown, csv or json (full precision)",
    )
    p.add_argument("--width", type=int, metavar="N", help="terminal width to fit (default: the terminal's, else 80)")
    _add_plot_args(p)
    _add_group_args(p)
    return p


def _add_plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write a PNG: learning curves; with --x a metric against "
        "a parameter; with --history the Optuna optimisation history; with --pareto a study's Pareto front",
    )
    p.add_argument("--x", metavar="KEY", help="with --plot: the parameter for the x axis (e.g. model.patch_size)")
    p.add_argument(
        "--y", metavar="METRIC", help="with --plot --x: the metric (default: the sort metric, else test_acc)"
    )
    p.add_argument(
        "--time",
        action="store_true",
        help="with --plot: time to accuracy, validation accuracy against cumulative training time, one line per run",
    )
    p.add_argument("--history", action="store_true", help="with --plot: the Optuna studies' optimisation history")
    p.add_argument("--pareto", action="store_true", help="with --plot: the Pareto front of a multi-objective study")
    p.add_argument("--no-sweeps", action="store_true", help="skip the Optuna sweep summaries")


def _add_group_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--group-by",
        metavar="KEYS",
        help="statistics per group of runs instead of one row per run: "
        "comma-separated choices or config keys (e.g. model or model,trainer.epochs); mean ± 95%% CI, "
        "sd and n of each --stats metric over completed runs",
    )
    p.add_argument(
        "--stats", metavar="LIST", help="with --group-by: the metrics (default test_acc,best_val_acc,test_loss)"
    )
    p.add_argument(
        "--test",
        metavar="METRIC",
        nargs="?",
        const="test_acc",
        help="with --group-by: Welch's t-test of METRIC (default test_acc) for every pair of groups",
    )


def _diff_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} diff",
        description="Differing config keys side by side, and metric differences; for "
        "two folders of several runs each (e.g. seeds), each side's mean ± 95% CI and Welch's t-test.",
    )
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.add_argument(
        "--stats", metavar="LIST", help="for folders of runs: the metrics (default test_acc,best_val_acc,test_loss)"
    )
    return p


def _run_diff(argv: Sequence[str]) -> int:
    from vit_lab.compare.diff import render_diff

    args = _diff_parser().parse_args(argv)
    sides = []
    for given in (args.run_a, args.run_b):
        path = Path(given)
        if not path.is_dir():
            raise NoRunsError(f"{given}: no such directory")
        found = [path] if is_run_dir(path) else walk([path])[0]
        if not found:
            raise NoRunsError(f"{given}: neither a run directory (no .hydra/ inside) nor a folder of runs")
        sides.append(sorted((load_run(d) for d in found), key=lambda r: natural_key(r.path)))
    if all(len(s) == 1 for s in sides) and all(is_run_dir(Path(g)) for g in (args.run_a, args.run_b)):
        print(render_diff(sides[0][0], sides[1][0], fmt=args.format))
        return 0
    from vit_lab.compare.stats import Group, parse_stats, render_group_diff

    a, b = (Group(("path",), (given,), runs, name=given) for given, runs in zip((args.run_a, args.run_b), sides))
    print(render_group_diff(a, b, parse_stats(args.stats, [*a.runs, *b.runs]), args.format))
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    if (args.x or args.history or args.pareto or args.time) and not args.plot:
        raise UsageError("--x, --time, --history and --pareto go with --plot FILE.png")
    if sum(map(bool, (args.x, args.history, args.pareto, args.time))) > 1:
        raise UsageError("--plot takes one of --x KEY, --time, --history or --pareto")
    if (args.stats or args.test) and not args.group_by:
        raise UsageError("--stats and --test go with --group-by KEYS")


def _print_runs(args: argparse.Namespace, shown: list[RunInfo], sweeps: list[dict]) -> list[str]:
    """The table in the chosen format, then the sweep summaries; returns the differing keys."""
    from vit_lab.compare.sweeps import public, render_summary

    columns, diff_keys = build_columns(shown, args.columns.split(",") if args.columns else None)
    best, best_key = best_run(shown, args.sort)
    if args.format == "csv":
        sys.stdout.write(render_csv(shown, columns, best))
    elif args.format == "json":
        print(render_json(shown, diff_keys, best, best_key, [public(s) for s in sweeps]))
    else:
        width = args.width or shutil.get_terminal_size((80, 24)).columns
        print(render_text(shown, columns, best, best_key, width=width, markdown=args.format == "markdown"))
        for s in sweeps:
            print()
            print(render_summary(s, markdown=args.format == "markdown", width=width))
    return diff_keys


def _plot(args: argparse.Namespace, shown: list[RunInfo], sweeps: list[dict], diff_keys: list[str]) -> None:
    from vit_lab.compare import plots

    if args.pareto:
        out, n = plots.plot_pareto(sweeps, args.plot)
        what = f"Pareto front ({n} Pareto-optimal trials)"
    elif args.history:
        out, n = plots.plot_history(sweeps, args.plot)
        what = f"optimisation history of {n} trials"
    elif args.time:
        out, n = plots.plot_time_to_accuracy(shown, args.plot, label_keys=diff_keys)
        what = f"time to accuracy of {n} runs"
    elif args.x:
        y = args.y or (args.sort if args.sort and canonical(args.sort) in METRICS else "test_acc")
        out, n = plots.plot_param(shown, args.plot, args.x, y)
        what = f"{y} against {args.x} for {n} runs"
    else:
        out, n = plots.plot_curves(shown, args.plot, label_keys=diff_keys)
        what = f"learning curves of {n} runs"
    print(f"wrote {display_path(out.absolute())}: {what}", file=sys.stderr)


def _run_table(argv: Sequence[str]) -> int:
    args = _table_parser().parse_args(argv)
    _check_flags(args)
    runs, sweep_dirs = find(args.paths)
    if not runs:
        raise NoRunsError(f"no runs under {', '.join(args.paths)} (a run is a folder with .hydra/ inside)")
    shown = select(runs, args.where, args.sort, args.reverse, args.top)
    if not shown:
        raise NoRunsError(f"no run matches --where {' '.join(args.where)} ({len(runs)} runs found)")
    if args.group_by:
        from vit_lab.compare.stats import render_groups

        print(render_groups(shown, args.group_by, args.stats, args.test, args.format))
        return 0
    sweeps: list[dict] = []
    if not args.no_sweeps and sweep_dirs and (args.format != "csv" or args.history or args.pareto):
        from vit_lab.compare.sweeps import summaries

        sweeps = summaries(sweep_dirs, display_path)
    diff_keys = _print_runs(args, shown, sweeps)
    if args.plot:
        _plot(args, shown, sweeps, diff_keys)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "diff":
            return _run_diff(argv[1:])
        return _run_table(argv)
    except (UsageError, NoRunsError, OutputError) as e:
        print(f"vit_lab.compare: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
