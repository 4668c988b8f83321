"""PNG plots on matplotlib's non-interactive Agg backend: learning curves, time to accuracy, a metric against a
parameter, and the optimisation history and Pareto front of Optuna studies."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit_lab.compare.errors import UsageError
from vit_lab.compare.formats import fmt_value
from vit_lab.compare.metrics import METRICS, canonical, lookup, metric_value
from vit_lab.compare.runs import RunInfo
from vit_lab.compare.sweeps import objective_names

CURVES_SIZE = (12.0, 6.0)  # inches; at DPI this is 1200 x 600 pixels (the legend sits below the axes)
PARAM_SIZE = (8.0, 5.0)  # 800 x 500
HISTORY_SIZE = (9.0, 5.0)  # 900 x 500
PARETO_SIZE = (8.0, 6.0)  # 800 x 600
TIME_SIZE = (9.0, 6.0)  # 900 x 600
TIME_TICKS = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.996, 0.997, 0.998, 0.999]
DPI = 100
MAX_LEGEND = 12


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def run_labels(runs: Sequence[RunInfo], keys: Sequence[str], width: int = 52) -> list[str]:
    """Each run's path below the runs' shared folder, plus the differing values when there are at most
    two of them, e.g. '1 (n_heads=4)' for a grid of n_heads."""
    paths = [r.path for r in runs]
    common = os.path.commonpath(paths) if len(paths) > 1 else ""
    labels = []
    for run, path in zip(runs, paths):
        short = os.path.relpath(path, common) if common and common not in paths else path
        values = (
            [f"{k.rsplit('.', 1)[-1]}={fmt_value(run.value(k))}" for k in keys if run.has(k)] if len(keys) <= 2 else []
        )
        extra = f" ({', '.join(values)})" if values else ""
        room = max(width - len(extra), 12)
        if len(short) > room:
            short = "..." + short[-(room - 3) :]
        labels.append(short + extra)
    return labels


def _save(fig, out: str | Path) -> Path:
    from vit_lab.io import save_png

    return save_png(fig, out, DPI)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def plot_curves(runs: Sequence[RunInfo], out: str | Path, label_keys: Sequence[str] = ()) -> tuple[Path, int]:
    """Loss (train solid, val dashed) and validation accuracy per epoch, one colour per run."""
    with_history = [(r, r.history()) for r in runs]
    with_history = [(r, h) for r, h in with_history if h]
    if not with_history:
        raise UsageError("--plot: none of the shown runs has a readable history.json")
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=CURVES_SIZE)
    colors = plt.get_cmap("tab10" if len(with_history) <= 10 else "tab20")
    labels = run_labels([r for r, _ in with_history], label_keys)
    for i, (_run, hist) in enumerate(with_history):
        color = colors(i % colors.N)
        label = labels[i] if i < MAX_LEGEND else None
        ep = [h.get("epoch", j + 1) for j, h in enumerate(hist)]
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            pts = [(e, h.get(key)) for e, h in zip(ep, hist) if _finite(h.get(key))]
            if pts:
                ax_loss.plot(*zip(*pts), style, color=color, marker="o", markersize=3)
        pts = [(e, 100 * h["val_acc"]) for e, h in zip(ep, hist) if _finite(h.get("val_acc"))]
        if pts:
            ax_acc.plot(*zip(*pts), "-", color=color, marker="o", markersize=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss (solid: train, dashed: validation)")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    extra = len(with_history) - MAX_LEGEND
    handles, names = ax_acc.get_legend_handles_labels()
    ncol = min(3, max(len(names), 1))
    fig.legend(
        handles,
        names,
        loc="lower center",
        ncol=ncol,
        fontsize="small",
        frameon=False,
        title=f"+{extra} more runs not in the legend" if extra > 0 else None,
    )
    rows = math.ceil(len(names) / ncol) + (1 if extra > 0 else 0)
    fig.tight_layout(rect=(0, min(0.03 + 0.04 * rows, 0.4), 1, 1))
    return _save(fig, out), len(with_history)


def time_curve(hist: Sequence[dict]) -> list[tuple[float, float]]:
    """(minutes of training so far, validation accuracy) per epoch: history's cumulative ``train_seconds``, else
    the sum of ``epoch_seconds``; epochs without a finite time or accuracy are left out."""
    pts, total = [], 0.0
    for h in hist:
        total = (
            h["train_seconds"]
            if _finite(h.get("train_seconds"))
            else total + (h["epoch_seconds"] if _finite(h.get("epoch_seconds")) else math.nan)
        )
        if math.isfinite(total) and _finite(h.get("val_acc")) and 0 < h["val_acc"] < 1:
            pts.append((total / 60, h["val_acc"]))
    return pts


def plot_time_to_accuracy(runs: Sequence[RunInfo], out: str | Path, label_keys: Sequence[str] = ()) -> tuple[Path, int]:
    """Validation accuracy against cumulative training time, one line per run, on a logit axis (so 99% and 99.5%
    are as far apart as 90% and 95%): the run whose line is highest at a given time is the one to pick."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    curves = [(r, time_curve(r.history())) for r in runs]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        raise UsageError("--plot --time: none of the shown runs has a history.json with epoch times and val_acc")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=TIME_SIZE)
    colors = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    labels = run_labels([r for r, _ in curves], label_keys)
    for i, (_run, pts) in enumerate(curves):
        ax.plot(
            *zip(*pts),
            "-",
            color=colors(i % colors.N),
            marker="o",
            markersize=3,
            label=labels[i] if i < MAX_LEGEND else None,
        )
    ax.set_yscale("logit")
    accs = [a for _, c in curves for _, a in c]
    below = [t for t in TIME_TICKS if t <= min(accs)]  # the axis starts under the lowest point: label that too
    ticks = [t for t in TIME_TICKS if (below[-1] if below else 0) <= t <= max(accs) / 0.999] or TIME_TICKS
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:g}%"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(
        xlabel="training time (minutes, cumulative; validation and start-up not counted)",
        ylabel="validation accuracy (logit scale)",
        title="Time to accuracy",
    )
    ax.set_xlim(left=0)
    if below:
        ax.set_ylim(bottom=below[-1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    return _save(fig, out), len(curves)


def plot_param(runs: Sequence[RunInfo], out: str | Path, x: str, y: str = "test_acc") -> tuple[Path, int]:
    """A metric against a config value or choice: one point per run, the mean per value joined by a line."""
    y = canonical(y)
    if y not in METRICS or y in ("epochs", "device"):
        raise UsageError(f"--y {y!r}: pick a numeric metric such as test_acc, best_val_acc, test_loss, train_seconds")
    pts = [(lookup(r, x), metric_value(r, y)) for r in runs if r.has(x) and _finite(metric_value(r, y))]
    if not pts:
        raise UsageError(f"--x {x!r}: no shown run has both {x} and {y}")
    scale = 100.0 if y.endswith("acc") else 1.0
    numeric = all(_finite(px) for px, _ in pts)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=PARAM_SIZE)
    if numeric:
        xs = [float(px) for px, _ in pts]
        ticks = sorted(set(xs))
        pos = xs
    else:
        names = sorted({fmt_value(px) for px, _ in pts})
        index = {n: i for i, n in enumerate(names)}
        pos = [float(index[fmt_value(px)]) for px, _ in pts]
        ticks = list(range(len(names)))
        ax.set_xticks(ticks, names)
    ys = [scale * py for _, py in pts]
    ax.scatter(pos, ys, s=36, alpha=0.75, label="runs", zorder=3)
    means = [(t, sum(v for p, v in zip(pos, ys) if p == t) / sum(1 for p in pos if p == t)) for t in sorted(set(pos))]
    if numeric:
        ax.plot(*zip(*means), "-", color="tab:orange", label="mean per value", zorder=2)
    else:  # categories: a bar per mean, no line that would suggest an order
        ax.scatter(*zip(*means), marker="_", s=900, linewidths=2, color="tab:orange", label="mean per value", zorder=2)
        ax.set_xlim(-0.5, len(ticks) - 0.5)
    if numeric and len(ticks) <= 12:
        ax.set_xticks(ticks, [fmt_value(int(t) if float(t).is_integer() else t) for t in ticks])
    ylabel = METRICS[y].label + (" (%)" if scale == 100 else "")
    ax.set(xlabel=x, ylabel=ylabel, title=f"{ylabel} against {x} ({len(pts)} runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, out), len(pts)


def plot_history(summaries: Sequence[dict], out: str | Path) -> tuple[Path, int]:
    """Each Optuna study's trial values by trial number and the best value so far."""
    from optuna.trial import TrialState

    studies = [s for s in summaries if s.get("_study") is not None]
    if not studies:
        raise UsageError("--history: no Optuna study with a readable storage under the given paths")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=HISTORY_SIZE)
    colors = plt.get_cmap("tab10")
    n = 0
    for i, s in enumerate(studies):
        study, color = s["_study"], colors(i % 10)
        done = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and t.values and math.isfinite(t.values[0])
        ]
        if not done:
            continue
        maximize = study.directions[0].name.lower() == "maximize"  # a multi-objective study: its first objective
        xs = [t.number for t in done]
        vs = [t.values[0] for t in done]
        best, running = [], None
        for v in vs:
            running = v if running is None else (max(running, v) if maximize else min(running, v))
            best.append(running)
        what = f" ({objective_names(study)[0]})" if len(study.directions) > 1 else ""
        ax.scatter(xs, vs, color=color, s=30, alpha=0.7, label=f"{study.study_name}{what}: trials")
        ax.step(xs, best, where="post", color=color, label=f"{study.study_name}: best so far")
        n += len(done)
    if n == 0:
        raise UsageError("--history: the studies have no complete trial yet")
    ax.set(xlabel="trial number", ylabel="objective value", title="Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _save(fig, out), n


def plot_pareto(summaries: Sequence[dict], out: str | Path) -> tuple[Path, int]:
    """The Pareto front of the first multi-objective study (Optuna's own matplotlib plot): every complete trial,
    the non-dominated ones highlighted. Two or three objectives."""
    import warnings

    from matplotlib.figure import Figure
    from optuna.trial import TrialState
    from optuna.visualization.matplotlib import plot_pareto_front

    studies = [s["_study"] for s in summaries if s.get("_study") is not None and len(s["_study"].directions) > 1]
    if not studies:
        raise UsageError(
            "--pareto: no multi-objective Optuna study under the given paths "
            "(a single-objective sweep has no Pareto front; use --history)"
        )
    study = studies[0]
    if not 2 <= len(study.directions) <= 3:
        raise UsageError(
            f"--pareto: study {study.study_name!r} has {len(study.directions)} objectives; the plot shows 2 or 3"
        )
    if not study.best_trials:
        raise UsageError(f"--pareto: study {study.study_name!r} has no complete trial yet")
    plt = _pyplot()
    names = objective_names(study)
    with warnings.catch_warnings(), plt.rc_context():  # optuna's plot sets the ggplot style: keep it local
        warnings.simplefilter("ignore")  # optuna's matplotlib plots are marked experimental
        ax = plot_pareto_front(study, target_names=names)
        fig = ax.figure
        assert isinstance(fig, Figure), "optuna's plot_pareto_front draws on a new top-level figure"
        fig.set_size_inches(*PARETO_SIZE)
        if len(names) == 2:  # trial numbers beside the Pareto-optimal points, as the summary lists them
            x_log, y_log = log_axes(study)
            ax.set_xscale("log" if x_log else "linear")
            ax.set_yscale("log" if y_log else "linear")
            for t in study.best_trials:
                ax.annotate(str(t.number), t.values, textcoords="offset points", xytext=(5, 5), fontsize="small")
        n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        ax.set_title(f"Pareto front of {study.study_name}: {len(study.best_trials)} of {n_complete} complete trials")
        fig.tight_layout()
        return _save(fig, out), len(study.best_trials)


def log_axes(study) -> list[bool]:
    """Per objective: draw it on a log axis? Yes when its complete trials' values are positive and span at least
    a decade (a parameter count from 10k to 1M), where a linear axis would crowd the small ones into a corner."""
    from optuna.trial import TrialState

    values = [t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    columns = [[v[i] for v in values if _finite(v[i])] for i in range(len(study.directions))]
    return [bool(c) and min(c) > 0 and max(c) >= 10 * min(c) for c in columns]
