"""The comparison table: selecting (--where, --sort, --top), columns, number formats and output formats."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import yaml
from tabulate import tabulate

from vit_lab.compare.runs import RunInfo


class UsageError(Exception):
    """Bad command-line input (a --where without an operator, an unknown key); one line, exit 2."""


# --------------------------------------------------------------------------- number formats


def _nan(x: Any) -> str:
    """A non-finite number reads as nan/inf (a diverged run), anything else missing as an empty cell."""
    return str(x) if isinstance(x, float) and not math.isfinite(x) else ""


def fmt_pct(x: Any) -> str:
    return f"{100 * x:.2f}%" if _is_number(x) else _nan(x)


def fmt_params(n: Any) -> str:
    if not _is_number(n):
        return ""
    n = float(n)
    if n < 1e3:
        return f"{n:.0f}"
    if n < 1e4:
        return f"{n / 1e3:.1f}k"
    if n < 1e6:
        return f"{n / 1e3:.0f}k"
    return f"{n / 1e6:.1f}M"


def fmt_seconds(s: Any) -> str:
    if not _is_number(s):
        return ""
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


def fmt_rate(r: Any) -> str:
    return f"{r:,.0f}" if _is_number(r) else _nan(r)


def fmt_float(x: Any) -> str:
    return f"{x:.3f}" if _is_number(x) else _nan(x)


def fmt_value(v: Any) -> str:
    """A config value as a short cell: null -> '-', lists as [a, b], floats as %g."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    key: str                    # the metrics.json key (or a derived one)
    header: str                 # terminal header; "\n" splits it over two lines
    fmt: Callable[[Any], str]
    higher_is_better: bool | None  # None: no "best" direction (sorted ascending)
    raw_keys: tuple[str, ...] = ()  # what csv/json carry for it (default: key)


METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("test_acc", "test\nacc", fmt_pct, True),
    Metric("best_val_acc", "best\nval acc", fmt_pct, True),
    Metric("val_acc", "last\nval acc", fmt_pct, True),
    Metric("test_loss", "test\nloss", fmt_float, False),
    Metric("n_params", "params", fmt_params, None),
    Metric("epochs", "epochs", str, None, ("epochs_completed", "epochs")),
    Metric("train_seconds", "train\ntime", fmt_seconds, None),
    Metric("train_images_per_second", "img/s", fmt_rate, True),
    Metric("device", "device", str, None),
)}
ALIASES = {"params": "n_params", "time": "train_seconds", "train_time": "train_seconds", "img/s": "train_images_per_second",
           "images_per_second": "train_images_per_second", "acc": "test_acc", "val_acc_best": "best_val_acc"}
DEFAULT_METRICS = ("test_acc", "best_val_acc", "n_params", "epochs", "train_seconds", "train_images_per_second")
DEFAULT_COLUMNS = ("path", "status", "choices", "diff", "metrics", "note")
# Per-run bookkeeping (e.g. a sweep's callbacks.optuna_trial.trial_number): never a "differing" column by itself;
# pick one with --columns when wanted.
BOOKKEEPING = ("callbacks.",)
GROUPS = ("path", "status", "choices", "diff", "metrics", "note")


def canonical(key: str) -> str:
    return ALIASES.get(key, key)


def metric_value(run: RunInfo, key: str) -> Any:
    if key == "epochs":
        return run.metrics.get("epochs_completed")
    return run.metrics.get(key)


def metric_cell(run: RunInfo, key: str) -> str:
    if key == "epochs":
        done, total = run.metrics.get("epochs_completed"), run.metrics.get("epochs")
        if done is None and total is None:
            return ""
        return f"{'?' if done is None else done}/{'?' if total is None else total}"
    value = run.metrics.get(key)
    try:
        return METRICS[key].fmt(value)
    except (TypeError, ValueError):
        return str(value)


def lookup(run: RunInfo, key: str) -> Any:
    key = canonical(key)
    return metric_value(run, key) if key in METRICS else run.value(key)


def known(runs: Sequence[RunInfo], key: str) -> bool:
    key = canonical(key)
    return key in METRICS or any(r.has(key) for r in runs)


def _suggest(runs: Sequence[RunInfo]) -> str:
    sample = [k for k in ("model.patch_size", "model.n_heads") if any(k in r.config for r in runs)]
    return ", ".join(["test_acc", "best_val_acc", "model", *sample, "status"])


# --------------------------------------------------------------------------- selecting


_WHERE = re.compile(r"^\s*([^=!<>\s]+)\s*(==|=|!=|>=|<=|>|<)(.*)$")


def parse_where(expr: str) -> tuple[str, str, str]:
    m = _WHERE.match(expr)
    if not m:
        raise UsageError(f"--where {expr!r}: expected KEY=VALUE (or KEY!=, >, >=, <, <= VALUE), e.g. model.patch_size=4")
    key, op, value = m.groups()
    return canonical(key), "=" if op == "==" else op, value.strip()


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def _matches(actual: Any, op: str, raw: str) -> bool:
    wanted = _parse_value(raw)
    if op in ("=", "!="):
        same = actual == wanted or fmt_value(actual) == raw or str(actual) == raw
        if isinstance(actual, bool) or isinstance(wanted, bool):
            same = actual is wanted or str(actual).lower() == raw.lower()
        return same if op == "=" else not same
    if not (_is_number(actual) and _is_number(wanted)):
        return False
    return {"<": actual < wanted, "<=": actual <= wanted, ">": actual > wanted, ">=": actual >= wanted}[op]


def select(runs: Sequence[RunInfo], where: Sequence[str] = (), sort: str | None = None, reverse: bool = False,
           top: int | None = None) -> list[RunInfo]:
    """Filter with --where (all must hold), sort (missing values last), then keep the top N."""
    out = list(runs)
    for expr in where:
        key, op, raw = parse_where(expr)
        if not known(runs, key):
            raise UsageError(f"--where {expr!r}: no run has the key {key!r} (try e.g. {_suggest(runs)})")
        out = [r for r in out if (r.has(key) or key in METRICS) and _matches(lookup(r, key), op, raw)]
    if sort:
        key = canonical(sort)
        if not known(runs, key):
            raise UsageError(f"--sort {sort!r}: unknown key (try e.g. {_suggest(runs)})")
        descending = bool(METRICS[key].higher_is_better) if key in METRICS else False
        descending ^= reverse
        present = [r for r in out if lookup(r, key) is not None]
        missing = [r for r in out if lookup(r, key) is None]
        present.sort(key=lambda r: _sort_key(lookup(r, key)), reverse=descending)
        out = present + missing
    elif reverse:
        out.reverse()
    if top is not None:
        if top < 1:
            raise UsageError(f"--top {top}: must be at least 1")
        out = out[:top]
    return out


def _sort_key(v: Any) -> tuple:
    if _is_number(v):
        return (0, float(v), "")
    if isinstance(v, float):  # NaN / inf sort after the numbers
        return (1, 0.0, str(v))
    return (2, 0.0, json.dumps(v, sort_keys=True, default=str))


def best_run(runs: Sequence[RunInfo], sort: str | None = None) -> tuple[RunInfo | None, str]:
    """The best completed run: by the sort key when it is an accuracy/loss metric, else by best_val_acc."""
    key = canonical(sort) if sort else None
    if key not in METRICS or METRICS[key].higher_is_better is None or key == "train_images_per_second":
        key = "best_val_acc"
    higher = METRICS[key].higher_is_better
    scored = [(metric_value(r, key), r) for r in runs if r.status == "completed" and _is_number(metric_value(r, key))]
    if not scored:
        return None, key
    pick = max if higher else min
    return pick(scored, key=lambda p: p[0])[1], key


# --------------------------------------------------------------------------- columns


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def differing(runs: Sequence[RunInfo]) -> tuple[list[str], list[str]]:
    """Group choices and config leaves whose values differ among runs (runs without a readable, current-schema
    config are left out, so one odd run does not make every key "differ")."""
    with_choices = [r for r in runs if r.choices and not r.old_config]
    with_config = [r for r in runs if r.config and not r.old_config]
    choice_keys = _ordered_keys(r.choices for r in with_choices)
    config_keys = _ordered_keys(r.config for r in with_config)
    missing = object()
    choices = [k for k in choice_keys if len({_canon(r.choices.get(k, missing)) if k in r.choices else "<missing>"
                                              for r in with_choices}) > 1]
    config_keys = [k for k in config_keys if not k.startswith(BOOKKEEPING)]
    leaves = [k for k in config_keys if len({_canon(r.config[k]) if k in r.config else "<missing>"
                                             for r in with_config}) > 1]
    return choices, leaves


def _ordered_keys(dicts) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        for k in d:
            seen.setdefault(k, None)
    return list(seen)


def short_names(keys: Sequence[str], taken: Sequence[str] = ()) -> dict[str, str]:
    """The shortest dotted suffix that is unique among keys: model.n_heads -> n_heads."""
    names: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts) - 1, -1, -1):
            cand = ".".join(parts[i:])
            clash = [k for k in keys if k != key and (k == cand or k.endswith("." + cand))]
            if not clash and cand not in taken:
                names[key] = cand
                break
        else:
            names[key] = key
    return names


@dataclass
class Column:
    key: str
    header: str
    kind: str  # path | status | choice | config | metric | note
    cells: list[str]
    raw: list[Any]
    align: str = "left"

    def width(self) -> int:
        return max([len(x) for x in self.header.split("\n")] + [len(c) for c in self.cells] + [1])


def build_columns(runs: Sequence[RunInfo], spec: Sequence[str] | None = None) -> tuple[list[Column], list[str]]:
    """Columns for the runs from a --columns spec (group names, metric names, choices or config keys)."""
    spec = list(spec or DEFAULT_COLUMNS)
    diff_choices, diff_leaves = differing(runs)
    keys: list[tuple[str, str]] = []  # (kind, key)
    for item in spec:
        name = canonical(item.strip())
        if not name:
            continue
        if name == "path":
            keys.append(("path", "path"))
        elif name == "status":
            keys.append(("status", "status"))
        elif name == "note":
            if any(r.notes for r in runs):
                keys.append(("note", "note"))
        elif name == "choices":
            keys += [("choice", k) for k in diff_choices]
        elif name == "diff":
            keys += [("config", k) for k in diff_leaves]
        elif name == "metrics":
            keys += [("metric", k) for k in DEFAULT_METRICS]
        elif name in METRICS:
            keys.append(("metric", name))
        elif any(name in r.choices for r in runs):
            keys.append(("choice", name))
        elif any(name in r.config for r in runs):
            keys.append(("config", name))
        else:
            raise UsageError(f"--columns: unknown column {item!r} (groups: {', '.join(GROUPS)}; "
                             f"or a metric, a choice or a config key such as {_suggest(runs)})")
    seen: set = set()
    keys = [k for k in keys if not (k in seen or seen.add(k))]
    config_keys = [k for kind, k in keys if kind == "config"]
    choice_keys = [k for kind, k in keys if kind == "choice"]
    names = short_names(config_keys, taken=choice_keys)
    columns = []
    for kind, key in keys:
        if kind == "path":
            columns.append(Column("path", "run", kind, [r.path for r in runs], [r.path for r in runs]))
        elif kind == "status":
            columns.append(Column("status", "status", kind, [r.status for r in runs], [r.status for r in runs]))
        elif kind == "note":
            columns.append(Column("note", "note", kind, [r.note for r in runs], [r.note for r in runs]))
        elif kind == "choice":
            raw = [r.choices.get(key) for r in runs]
            cells = [fmt_value(v) if r.choices else "" for v, r in zip(raw, runs)]
            columns.append(Column(key, key, kind, cells, raw))
        elif kind == "config":
            raw = [r.config.get(key) for r in runs]
            cells = [fmt_value(r.config[key]) if key in r.config else "" for r in runs]
            numeric = all(_is_number(v) for v, r in zip(raw, runs) if key in r.config)
            columns.append(Column(key, names[key], kind, cells, raw, "right" if numeric else "left"))
        else:
            m = METRICS[key]
            columns.append(Column(key, m.header, kind, [metric_cell(r, key) for r in runs],
                                  [metric_value(r, key) for r in runs], "left" if key == "device" else "right"))
    return columns, diff_choices + diff_leaves


# --------------------------------------------------------------------------- rendering


def _shorten_path(path: str, width: int) -> str:
    """Drop leading components: outputs/multirun/2026-11-27/10-00-00/3 -> .../10-00-00/3."""
    if len(path) <= width:
        return path
    parts = path.split(os.sep)
    for i in range(1, len(parts)):
        cand = "..." + os.sep + os.sep.join(parts[i:])
        if len(cand) <= width:
            return cand
    return "..." + path[-max(width - 3, 1):]


def _split_header(header: str) -> str:
    """Break a header after the '_' or '.' nearest its middle, so its column can be narrower."""
    cuts = [i + 1 for i, ch in enumerate(header[:-1]) if ch in "_."]
    if not cuts or len(header) < 7:
        return header
    cut = min(cuts, key=lambda i: max(i, len(header) - i))
    return header[:cut] + "\n" + header[cut:]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 1)] + "..."


def _common_dir(paths: Sequence[str]) -> str:
    if len(paths) < 2:
        return ""
    try:
        common = os.path.commonpath(paths)
    except ValueError:
        return ""
    return common if common and common not in paths and common not in (".", os.sep) else ""


def _simple(rows: list[list[str]], headers: list[str], aligns: list[str]) -> str:
    """tabulate's "simple" table without its extra header padding (two spaces between columns)."""
    import tabulate as tabulate_module

    saved = tabulate_module.MIN_PADDING
    tabulate_module.MIN_PADDING = 0
    try:
        return tabulate(rows, headers=headers, tablefmt="simple", colalign=aligns, disable_numparse=True)
    finally:
        tabulate_module.MIN_PADDING = saved


def _terminal_table(runs: Sequence[RunInfo], columns: Sequence[Column], best: RunInfo | None) -> str:
    lead = [["*" if r is best else ""] for r in runs] if best is not None else [[] for _ in runs]
    rows = [lead[i] + [c.cells[i] for c in columns] for i in range(len(runs))]
    headers = ([""] if best is not None else []) + [c.header for c in columns]
    aligns = (["left"] if best is not None else []) + [c.align for c in columns]
    return _simple(rows, headers, aligns)


def fit(runs: Sequence[RunInfo], columns: list[Column], best: RunInfo | None,
        width: int) -> tuple[list[Column], list[str], str, list[str]]:
    """Make the table fit `width` columns: strip the shared folder, move notes below the table, shorten paths,
    then drop config columns from the right. Returns (columns, dropped keys, stripped folder, notes)."""
    dropped: list[str] = []
    notes: list[str] = []
    stripped = ""
    path_col = next((c for c in columns if c.kind == "path"), None)
    note_col = next((c for c in columns if c.kind == "note"), None)

    def over() -> int:
        table = _terminal_table(runs, columns, best)
        return max(len(line) for line in table.split("\n")) - width

    if over() > 0 and path_col is not None:
        stripped = _common_dir(path_col.cells)
        if stripped:
            path_col.cells = [os.path.relpath(p, stripped) for p in path_col.cells]
    if over() > 0 and note_col is not None:  # notes go below the table, one per run that has one
        columns.remove(note_col)
        for i, cell in enumerate(note_col.cells):
            if cell:
                notes.append(f"{path_col.cells[i] if path_col else runs[i].path}: {cell}")
    if over() > 0 and path_col is not None:  # keep at least the last folder name (up to 24 characters)
        tail = max(len(os.path.basename(p)) for p in path_col.cells) + 4
        target = max(min(tail, 24), 12, path_col.width() - over())
        path_col.cells = [_shorten_path(p, target) for p in path_col.cells]
    if over() > 0:  # long config headers over two lines: patch_size -> patch_/size
        for c in columns:
            if c.kind in ("config", "choice") and "\n" not in c.header:
                c.header = _split_header(c.header)
    while over() > 0:
        removable = [c for c in columns if c.kind in ("config", "choice")]
        if not removable:
            break
        victim = removable[-1]
        columns.remove(victim)
        dropped.insert(0, victim.key)
    if over() > 0 and path_col is not None:
        target = max(8, path_col.width() - over())
        path_col.cells = [_shorten_path(p, target) for p in path_col.cells]
    return columns, dropped, stripped, notes


def render_text(runs: Sequence[RunInfo], columns: list[Column], best: RunInfo | None, best_key: str,
                width: int | None = None, markdown: bool = False) -> str:
    """The aligned terminal table (fitted to `width`) or a GitHub markdown table (never clipped)."""
    dropped: list[str] = []
    notes: list[str] = []
    stripped = ""
    if markdown:
        rows = [[_md(c.cells[i]) for c in columns] for i in range(len(runs))]
        for i, r in enumerate(runs):
            if r is best and rows[i]:
                rows[i][0] = f"**{rows[i][0]}**" if rows[i][0] else "**best**"
        headers = [c.header.replace("\n", " ") for c in columns]
        body = tabulate(rows, headers=headers, tablefmt="github", colalign=[c.align for c in columns],
                        disable_numparse=True)
    else:
        columns, dropped, stripped, notes = fit(runs, columns, best, width or 80)
        body = _terminal_table(runs, columns, best)
    lines = []
    if stripped:
        lines.append(f"runs under {stripped}{os.sep}")
    lines.append(body)
    label = best_key.replace("_", " ")
    if best is not None:
        lines.append(("Bold" if markdown else "*") + f": best completed run by {label}.")
    if notes:
        lines.append("Notes:")
        lines += [_wrap(note, width or 80, indent="  ") for note in notes]
    if dropped:
        names = ", ".join(dropped[:4]) + (", ..." if len(dropped) > 4 else "")
        lines.append(_wrap(f"Not shown for width: {len(dropped)} differing column{'s' * (len(dropped) > 1)} "
                           f"({names}); use --columns, --width or --format csv.", width or 80))
    return "\n".join(lines)


def _wrap(text: str, width: int, indent: str = "") -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                                    break_on_hyphens=False, break_long_words=True))


def _md(cell: str) -> str:
    return cell.replace("|", "\\|")


def raw_metric_keys() -> list[str]:
    out: list[str] = []
    for m in METRICS.values():
        out += list(m.raw_keys or (m.key,))
    return out


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


def render_csv(runs: Sequence[RunInfo], columns: Sequence[Column], best: RunInfo | None) -> str:
    """Full precision: raw metric values (fractions, seconds, counts), full config keys, one row per run."""
    keys: list[tuple[str, str]] = [("meta", "path"), ("meta", "status"), ("meta", "best")]
    for c in columns:
        if c.kind in ("choice", "config"):
            keys.append((c.kind, c.key))
        elif c.kind == "metric":
            keys += [("metric", k) for k in (METRICS[c.key].raw_keys or (c.key,))]
    keys.append(("meta", "note"))
    seen: set = set()
    keys = [k for k in keys if not (k in seen or seen.add(k))]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([k for _, k in keys])
    for r in runs:
        row = []
        for kind, key in keys:
            if kind == "meta":
                v = {"path": r.path, "status": r.status, "best": r is best, "note": r.note}[key]
            elif kind == "choice":
                v = r.choices.get(key)
            elif kind == "config":
                v = r.config.get(key)
            else:
                v = r.metrics.get(key)
            row.append(_csv_value(v))
        writer.writerow(row)
    return buf.getvalue()


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def render_json(runs: Sequence[RunInfo], differing_keys: Sequence[str], best: RunInfo | None, best_key: str,
                sweeps: Sequence[dict] = ()) -> str:
    """Everything, at full precision: each run's metrics.json as read, choices, config and differing keys."""
    doc = {
        "best_by": best_key,
        "differing": list(differing_keys),
        "runs": [{"path": r.path, "dir": str(r.dir), "status": r.status, "best": r is best, "note": r.note,
                  "choices": r.choices, "overrides": r.overrides, "config": r.config, "metrics": r.metrics}
                 for r in runs],
        "sweeps": list(sweeps),
    }
    return json.dumps(_jsonable(doc), indent=2, default=str)
