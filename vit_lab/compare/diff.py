"""`diff RUN_A RUN_B`: the config keys that differ, side by side, and the metric differences."""

from __future__ import annotations

import json
from typing import Any

from tabulate import tabulate

from vit_lab.compare.formats import fmt_params, fmt_seconds, fmt_value, is_number, jsonable
from vit_lab.compare.metrics import METRICS, metric_cell
from vit_lab.compare.runs import RunInfo

DIFF_METRICS = (
    "test_acc",
    "best_val_acc",
    "val_acc",
    "test_loss",
    "n_params",
    "epochs",
    "train_seconds",
    "train_images_per_second",
)
_MISSING = object()


def config_diff(a: RunInfo, b: RunInfo) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for group choices, then config leaves, that differ; missing is _MISSING."""
    rows = []
    for mine, theirs in ((a.choices, b.choices), (a.config, b.config)):
        for key in list(dict.fromkeys([*mine, *theirs])):
            va, vb = mine.get(key, _MISSING), theirs.get(key, _MISSING)
            if json.dumps(va, default=str, sort_keys=True) != json.dumps(vb, default=str, sort_keys=True):
                rows.append((key, va, vb))
    return rows


def _delta(key: str, va: Any, vb: Any) -> str:
    if not (is_number(va) and is_number(vb)):
        return ""
    d = vb - va
    sign = "+" if d >= 0 else "-"
    if key.endswith("acc"):
        return f"{100 * d:+.2f} pp"
    if key == "n_params":
        return sign + fmt_params(abs(d))
    if key == "train_seconds":
        return sign + fmt_seconds(abs(d))
    if key == "train_images_per_second":
        return f"{d:+,.0f}"
    return f"{d:+.4g}"


def _raw(run: RunInfo, key: str) -> Any:
    return run.metrics.get("epochs_completed" if key == "epochs" else key)


def render_diff(a: RunInfo, b: RunInfo, fmt: str = "table") -> str:
    cfg = config_diff(a, b)
    if fmt == "json":
        doc = {
            "a": a.path,
            "b": b.path,
            "status": [a.status, b.status],
            "config": {k: [None if va is _MISSING else va, None if vb is _MISSING else vb] for k, va, vb in cfg},
            "metrics": {
                k: {
                    "a": _raw(a, k),
                    "b": _raw(b, k),
                    "delta": (_raw(b, k) - _raw(a, k)) if is_number(_raw(a, k)) and is_number(_raw(b, k)) else None,
                }
                for k in DIFF_METRICS
            },
        }
        return json.dumps(jsonable(doc), indent=2, default=str)
    tablefmt = "github" if fmt == "markdown" else "simple"

    def show(v):
        return "(absent)" if v is _MISSING else fmt_value(v)

    lines = [f"A: {a.path} ({a.status})", f"B: {b.path} ({b.status})", ""]
    if cfg:
        lines.append(
            tabulate(
                [[k, show(va), show(vb)] for k, va, vb in cfg],
                headers=["config", "A", "B"],
                tablefmt=tablefmt,
                disable_numparse=True,
            )
        )
    else:
        lines.append("The configs are identical (choices and every value).")
    lines.append("")
    rows = [
        [METRICS[k].label, metric_cell(a, k), metric_cell(b, k), _delta(k, _raw(a, k), _raw(b, k))]
        for k in DIFF_METRICS
    ]
    lines.append(
        tabulate(
            rows,
            headers=["metric", "A", "B", "B - A"],
            tablefmt=tablefmt,
            colalign=("left", "right", "right", "right"),
            disable_numparse=True,
        )
    )
    for run, name in ((a, "A"), (b, "B")):
        if run.notes:
            lines.append(f"{name} note: {run.note}")
    return "\n".join(lines)
