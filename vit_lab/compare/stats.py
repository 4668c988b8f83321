"""Statistics over groups of runs (``--group-by``): mean, standard deviation, n and a 95% confidence interval per
group, and Welch's t-test between groups (``--test``, ``diff DIR_A DIR_B``), all from SciPy.

Only completed runs with a finite value count. The interval is Student's t interval of the mean
(``scipy.stats.t.interval`` with the standard error ``scipy.stats.sem``); the test is
``scipy.stats.ttest_ind(equal_var=False)``, whose interval for the difference of means is given too.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from vit_lab.compare.errors import UsageError
from vit_lab.compare.formats import fmt_value, is_number, jsonable
from vit_lab.compare.metrics import METRICS, canonical, known, lookup, metric_value
from vit_lab.compare.runs import RunInfo

DEFAULT_STATS = ("test_acc", "best_val_acc", "test_loss")
CONFIDENCE = 0.95


@dataclass
class Group:
    keys: tuple[str, ...]
    values: tuple[Any, ...]  # the runs' values of ``keys``
    runs: list[RunInfo] = field(default_factory=list)
    name: str | None = None  # shown instead of the key values (e.g. a folder given to diff)

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in zip(self.keys, self.values))

    def sample(self, metric: str) -> list[float]:
        """The metric over the group's completed runs (finite values only), in run order."""
        return [float(v) for r in self.runs if r.status == "completed" and is_number(v := metric_value(r, metric))]


def parse_stats(text: str | None, runs: Sequence[RunInfo]) -> list[str]:
    names = [canonical(s.strip()) for s in text.split(",") if s.strip()] if text else list(DEFAULT_STATS)
    for name in names:
        if name not in METRICS or name == "device":
            raise UsageError(
                f"--stats {name!r}: pick numeric metrics such as test_acc, best_val_acc, test_loss, params, time"
            )
    return names


def group_runs(runs: Sequence[RunInfo], spec: str) -> list[Group]:
    """Runs grouped by the values of comma-separated keys (choices, config keys or metrics), in order of first
    appearance."""
    keys = tuple(canonical(k.strip()) for k in spec.split(",") if k.strip())
    if not keys:
        raise UsageError("--group-by: give comma-separated keys, e.g. model or model,model.patch_size")
    for k in keys:
        if not known(runs, k):
            raise UsageError(
                f"--group-by {k!r}: no run has this key (try a choice such as model or experiment, "
                "or a config key such as model.patch_size)"
            )
    groups: dict[str, Group] = {}
    for run in runs:
        values = tuple(lookup(run, k) for k in keys)
        groups.setdefault(json.dumps(values, sort_keys=True, default=str), Group(keys, values)).runs.append(run)
    return list(groups.values())


def summary(sample: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """n, mean, sample standard deviation and the t interval of the mean (None where n is too small)."""
    import numpy as np
    from scipy import stats

    n = len(sample)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    if n == 0:
        return out
    x = np.asarray(sample, dtype=float)
    out["mean"] = float(x[0]) if _constant(x) else float(x.mean())  # identical values: no rounding noise
    if n >= 2:
        if _constant(x):
            out.update(std=0.0, ci_low=out["mean"], ci_high=out["mean"])
            return out
        out["std"] = float(x.std(ddof=1))
        lo, hi = stats.t.interval(confidence, n - 1, loc=out["mean"], scale=float(stats.sem(x)))
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
    return out


def _constant(x: Any) -> bool:
    return len(x) > 0 and min(x) == max(x)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Welch's t-test of mean(b) - mean(a): t, degrees of freedom, two-sided p and the interval of the difference."""
    from scipy import stats

    out: dict[str, Any] = {
        "n_a": len(a),
        "n_b": len(b),
        "diff": None,
        "t": None,
        "df": None,
        "p": None,
        "ci_low": None,
        "ci_high": None,
    }
    if len(a) and len(b):
        out["diff"] = sum(b) / len(b) - sum(a) / len(a)
    if len(a) < 2 or len(b) < 2 or (_constant(a) and _constant(b)):  # the t statistic is undefined
        return out
    res = stats.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(confidence)
    finite = math.isfinite(res.statistic)
    out.update(
        t=float(res.statistic) if finite else None,
        df=float(res.df) if finite else None,
        p=float(res.pvalue) if finite else None,
        ci_low=float(ci.low) if finite else None,
        ci_high=float(ci.high) if finite else None,
    )
    return out


# --------------------------------------------------------------------------- rendering


def fmt_stat(metric: str, s: dict[str, Any], spread: bool = True) -> str:
    """'99.12% ± 0.08' (mean ± the 95% interval's half-width; percentage points for accuracies), or the mean."""
    if s["mean"] is None:
        return ""
    mean = METRICS[metric].fmt(s["mean"])
    if not spread or s["ci_high"] is None:
        return mean
    return f"{mean} ± {_spread(metric, s['ci_high'] - s['mean'])}"


def fmt_std(metric: str, s: dict[str, Any]) -> str:
    return "" if s["std"] is None else _spread(metric, s["std"])


def _spread(metric: str, x: float) -> str:
    return (
        f"{100 * x:.2f}" if metric.endswith("acc") else METRICS[metric].fmt(x) if metric != "test_loss" else f"{x:.2g}"
    )


def group_table(groups: Sequence[Group], metrics: Sequence[str], markdown: bool) -> str:
    """One row per group: its key values, n (completed / runs), then mean ± 95% CI and the std of each metric."""
    varying = {m for m in metrics if any(len(g.sample(m)) > 1 and not _constant(g.sample(m)) for g in groups)}
    headers = [*groups[0].keys, "n"]
    for m in metrics:
        name = METRICS[m].label
        headers += [f"{name} (mean ± 95% CI)", f"{name} sd"] if m in varying else [name]
    rows = []
    for g in groups:
        row = [fmt_value(v) for v in g.values]
        done = sum(r.status == "completed" for r in g.runs)
        row.append(f"{done}" if done == len(g.runs) else f"{done} of {len(g.runs)}")
        for m in metrics:
            s = summary(g.sample(m))
            row += [fmt_stat(m, s), fmt_std(m, s)] if m in varying else [fmt_stat(m, s, spread=False)]
        rows.append(row)
    aligns = ["left"] * len(groups[0].keys) + ["right"] * (len(headers) - len(groups[0].keys))
    return tabulate(
        rows, headers=headers, tablefmt="github" if markdown else "simple", colalign=aligns, disable_numparse=True
    )


def test_rows(pairs: Sequence[tuple[Group, Group]], metric: str) -> list[dict[str, Any]]:
    return [
        {"a": a.label, "b": b.label, "metric": metric, **welch(a.sample(metric), b.sample(metric))} for a, b in pairs
    ]


def test_table(rows: Sequence[dict[str, Any]], markdown: bool, by_metric: bool = False) -> str:
    """Welch's t-test per pair (or per metric of one pair): B - A, its 95% interval, t, df and the two-sided p."""

    def num(x: Any, f: str) -> str:
        return "" if x is None else format(x, f)

    out = []
    for r in rows:
        f = (lambda x: f"{100 * x:+.2f}") if r["metric"].endswith("acc") else (lambda x: f"{x:+.3g}")
        unit = " pp" if r["metric"].endswith("acc") else ""
        diff = "" if r["diff"] is None else f(r["diff"]) + unit
        ci = "" if r["ci_low"] is None else f"[{f(r['ci_low'])}, {f(r['ci_high'])}]"
        p = "" if r["p"] is None else f"{r['p']:.2g}" if r["p"] >= 1e-4 else f"{r['p']:.1e}"
        lead = [METRICS[r["metric"]].label] if by_metric else [r["a"], r["b"]]
        out.append([*lead, f"{r['n_a']}/{r['n_b']}", diff, ci, num(r["t"], ".2f"), num(r["df"], ".1f"), p])
    metric = METRICS[rows[0]["metric"]].label if rows and not by_metric else ""
    lead = ["metric"] if by_metric else ["A", "B"]
    headers = [*lead, "n A/B", f"{metric}: B - A" if metric else "B - A", "95% CI", "t", "df", "p (two-sided)"]
    return tabulate(
        out,
        headers=headers,
        tablefmt="github" if markdown else "simple",
        disable_numparse=True,
        colalign=("left",) * len(lead) + ("right",) * 6,
    )


def render_groups(runs: Sequence[RunInfo], group_by: str, stats_spec: str | None, test: str | None, fmt: str) -> str:
    """The --group-by output: the group table, then (with --test) Welch's t-test for every pair of groups."""
    groups = group_runs(runs, group_by)
    metrics = parse_stats(stats_spec, runs)
    tests = []
    if test:
        metric = canonical(test)
        if metric not in METRICS or metric == "device":
            raise UsageError(f"--test {test!r}: pick a numeric metric such as test_acc")
        tests = test_rows(list(itertools.combinations(groups, 2)), metric)
    if fmt == "json":
        doc = {
            "group_by": list(groups[0].keys),
            "confidence": CONFIDENCE,
            "groups": [
                {
                    "values": dict(zip(g.keys, g.values)),
                    "runs": [r.path for r in g.runs],
                    "statuses": [r.status for r in g.runs],
                    "stats": {m: {**summary(g.sample(m)), "values": g.sample(m)} for m in metrics},
                }
                for g in groups
            ],
            "tests": tests,
        }
        return json.dumps(jsonable(doc), indent=2, default=str)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        fields = ("n", "mean", "std", "ci_low", "ci_high")  # summary()'s keys, in order
        w.writerow([*groups[0].keys, "runs", *[f"{m}_{f}" for m in metrics for f in fields]])
        for g in groups:
            w.writerow(
                [fmt_value(v) for v in g.values]
                + [len(g.runs)]
                + ["" if v is None else repr(v) for m in metrics for v in summary(g.sample(m)).values()]
            )
        return buf.getvalue().rstrip("\n")
    md = fmt == "markdown"
    note = (
        f"Completed runs only; ± is the half-width of the {CONFIDENCE:.0%} t confidence interval of the mean, "
        "sd the sample standard deviation (percentage points for accuracies)."
    )
    lines = [group_table(groups, metrics, md), "", note]
    if tests:
        lines += ["", f"Welch's t-test ({test}), every pair of groups:", "", test_table(tests, md)]
    return "\n".join(lines)


def render_group_diff(a: Group, b: Group, metrics: Sequence[str], fmt: str) -> str:
    """``diff DIR_A DIR_B`` for folders of several runs (e.g. seeds): each side's mean ± 95% CI and Welch's
    t-test of B - A, per metric."""
    sides = {m: (summary(a.sample(m)), summary(b.sample(m))) for m in metrics}
    tests = [test_rows([(a, b)], m)[0] for m in metrics]
    if fmt == "json":
        doc = {
            "a": a.label,
            "b": b.label,
            "runs_a": [r.path for r in a.runs],
            "runs_b": [r.path for r in b.runs],
            "confidence": CONFIDENCE,
            "metrics": {
                t["metric"]: {
                    "a": sides[t["metric"]][0],
                    "b": sides[t["metric"]][1],
                    "welch": {k: v for k, v in t.items() if k not in ("a", "b", "metric")},
                }
                for t in tests
            },
        }
        return json.dumps(jsonable(doc), indent=2, default=str)
    md = fmt == "markdown"
    table = [
        [METRICS[m].label, *(f"{fmt_stat(m, side)} (n={side['n']})" for side in pair)] for m, pair in sides.items()
    ]
    return "\n".join(
        [
            f"A: {a.label} ({len(a.runs)} runs)",
            f"B: {b.label} ({len(b.runs)} runs)",
            "",
            tabulate(
                table,
                headers=["metric", "A (mean ± 95% CI)", "B (mean ± 95% CI)"],
                tablefmt="github" if md else "simple",
                colalign=("left", "right", "right"),
                disable_numparse=True,
            ),
            "",
            "Welch's t-test, B - A:",
            "",
            test_table(tests, md, by_metric=True),
        ]
    )
