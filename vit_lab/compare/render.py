"""The table's output formats: the terminal table (fitted to a width), GitHub markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import os
import textwrap
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from vit_lab.compare.columns import Column
from vit_lab.compare.formats import jsonable
from vit_lab.compare.metrics import METRICS
from vit_lab.compare.runs import RunInfo
from vit_lab.compare.terminal import fit, terminal_table


def _markdown_table(runs: Sequence[RunInfo], columns: Sequence[Column], best: RunInfo | None) -> str:
    """A GitHub table, never clipped; the best run's first cell in bold."""
    rows = [[c.cells[i].replace("|", "\\|") for c in columns] for i in range(len(runs))]
    for i, r in enumerate(runs):
        if r is best and rows[i]:
            rows[i][0] = f"**{rows[i][0]}**" if rows[i][0] else "**best**"
    headers = [c.header.replace("\n", " ") for c in columns]
    return tabulate(
        rows, headers=headers, tablefmt="github", colalign=[c.align for c in columns], disable_numparse=True
    )


def render_text(
    runs: Sequence[RunInfo],
    columns: list[Column],
    best: RunInfo | None,
    best_key: str,
    width: int | None = None,
    markdown: bool = False,
) -> str:
    """The aligned terminal table (fitted to `width`) or a GitHub markdown table (never clipped)."""
    dropped: list[str] = []
    notes: list[str] = []
    stripped = ""
    width = width or 80
    if markdown:
        body = _markdown_table(runs, columns, best)
    else:
        columns, dropped, stripped, notes = fit(runs, columns, best, width)
        body = terminal_table(runs, columns, best)
    lines = [f"runs under {stripped}{os.sep}"] if stripped else []
    lines.append(body)
    if best is not None:
        lines.append(("Bold" if markdown else "*") + f": best completed run by {best_key.replace('_', ' ')}.")
    if notes:
        lines.append("Notes:")
        lines += [_wrap(note, width, indent="  ") for note in notes]
    if dropped:
        names = ", ".join(dropped[:4]) + (", ..." if len(dropped) > 4 else "")
        lines.append(
            _wrap(
                f"Not shown for width: {len(dropped)} differing column{'s' * (len(dropped) > 1)} "
                f"({names}); use --columns, --width or --format csv.",
                width,
            )
        )
    return "\n".join(lines)


def _wrap(text: str, width: int, indent: str = "") -> str:
    return "\n".join(
        textwrap.wrap(
            text,
            width=width,
            initial_indent=indent,
            subsequent_indent=indent + "  ",
            break_on_hyphens=False,
            break_long_words=True,
        )
    )


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _csv_cell(r: RunInfo, best: RunInfo | None, kind: str, key: str) -> Any:
    if kind == "meta":
        return {"path": r.path, "status": r.status, "best": r is best, "note": r.note}[key]
    if kind == "choice":
        return r.choices.get(key)
    if kind == "config":
        return r.config.get(key)
    return r.metrics.get(key)


def render_csv(runs: Sequence[RunInfo], columns: Sequence[Column], best: RunInfo | None) -> str:
    """Full precision: raw metric values (fractions, seconds, counts), full config keys, one row per run."""
    keys: list[tuple[str, str]] = [("meta", "path"), ("meta", "status"), ("meta", "best")]
    for c in columns:
        if c.kind in ("choice", "config"):
            keys.append((c.kind, c.key))
        elif c.kind == "metric":
            keys += [("metric", k) for k in (METRICS[c.key].raw_keys or (c.key,))]
    keys = list(dict.fromkeys([*keys, ("meta", "note")]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([k for _, k in keys])
    for r in runs:
        writer.writerow([_csv_value(_csv_cell(r, best, kind, key)) for kind, key in keys])
    return buf.getvalue()


def render_json(
    runs: Sequence[RunInfo],
    differing_keys: Sequence[str],
    best: RunInfo | None,
    best_key: str,
    sweeps: Sequence[dict] = (),
) -> str:
    """Everything, at full precision: each run's metrics.json as read, choices, config and differing keys."""
    doc = {
        "best_by": best_key,
        "differing": list(differing_keys),
        "runs": [
            {
                "path": r.path,
                "dir": str(r.dir),
                "status": r.status,
                "best": r is best,
                "note": r.note,
                "choices": r.choices,
                "overrides": r.overrides,
                "config": r.config,
                "metrics": r.metrics,
            }
            for r in runs
        ],
        "sweeps": list(sweeps),
    }
    return json.dumps(jsonable(doc), indent=2, default=str)
