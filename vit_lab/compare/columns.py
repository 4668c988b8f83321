"""The table's columns: which config keys differ among runs, short names for them, and the columns a
``--columns`` spec asks for (cells as text plus the raw values)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vit_lab.compare.errors import UsageError
from vit_lab.compare.formats import fmt_value, is_number
from vit_lab.compare.metrics import DEFAULT_METRICS, METRICS, canonical, example_keys, metric_cell, metric_value
from vit_lab.compare.runs import RunInfo

GROUPS = ("path", "status", "choices", "diff", "metrics", "note")
DEFAULT_COLUMNS = GROUPS
# Per-run bookkeeping (a sweep's callbacks.optuna_trial.trial_number) never differs "by itself"; --columns picks it.
BOOKKEEPING = ("callbacks.",)


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


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _ordered_keys(dicts: Iterable[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        for k in d:
            seen.setdefault(k, None)
    return list(seen)


def differing(runs: Sequence[RunInfo]) -> tuple[list[str], list[str]]:
    """Group choices and config leaves whose values differ among runs (runs without a readable, current-schema
    config are left out, so one odd run does not make every key "differ")."""
    with_choices = [r for r in runs if r.choices and not r.old_config]
    with_config = [r for r in runs if r.config and not r.old_config]
    choice_keys = _ordered_keys(r.choices for r in with_choices)
    config_keys = [k for k in _ordered_keys(r.config for r in with_config) if not k.startswith(BOOKKEEPING)]
    choices = [
        k
        for k in choice_keys
        if len({_canon(r.choices[k]) if k in r.choices else "<missing>" for r in with_choices}) > 1
    ]
    leaves = [
        k for k in config_keys if len({_canon(r.config[k]) if k in r.config else "<missing>" for r in with_config}) > 1
    ]
    return choices, leaves


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


def _spec_keys(
    runs: Sequence[RunInfo], item: str, diff_choices: list[str], diff_leaves: list[str]
) -> list[tuple[str, str]]:
    """The (kind, key) pairs one --columns item stands for."""
    name = canonical(item.strip())
    groups = {
        "path": [("path", "path")],
        "status": [("status", "status")],
        "note": [("note", "note")] if any(r.notes for r in runs) else [],
        "choices": [("choice", k) for k in diff_choices],
        "diff": [("config", k) for k in diff_leaves],
        "metrics": [("metric", k) for k in DEFAULT_METRICS],
    }
    if not name:
        return []
    if name in groups:
        return groups[name]
    if name in METRICS:
        return [("metric", name)]
    if any(name in r.choices for r in runs):
        return [("choice", name)]
    if any(name in r.config for r in runs):
        return [("config", name)]
    raise UsageError(
        f"--columns: unknown column {item!r} (groups: {', '.join(GROUPS)}; "
        f"or a metric, a choice or a config key such as {example_keys(runs)})"
    )


def _column(runs: Sequence[RunInfo], kind: str, key: str, header: str) -> Column:
    if kind in ("path", "status", "note"):
        values = [getattr(r, kind) for r in runs]
        return Column(kind, "run" if kind == "path" else kind, kind, values, values)
    if kind == "choice":
        raw = [r.choices.get(key) for r in runs]
        return Column(key, key, kind, [fmt_value(v) if r.choices else "" for v, r in zip(raw, runs)], raw)
    if kind == "config":
        raw = [r.config.get(key) for r in runs]
        cells = [fmt_value(r.config[key]) if key in r.config else "" for r in runs]
        numeric = all(is_number(v) for v, r in zip(raw, runs) if key in r.config)
        return Column(key, header, kind, cells, raw, "right" if numeric else "left")
    return Column(
        key,
        METRICS[key].header,
        kind,
        [metric_cell(r, key) for r in runs],
        [metric_value(r, key) for r in runs],
        "left" if key == "device" else "right",
    )


def build_columns(runs: Sequence[RunInfo], spec: Sequence[str] | None = None) -> tuple[list[Column], list[str]]:
    """Columns for the runs from a --columns spec (group names, metric names, choices or config keys), and the
    differing keys (choices, then config leaves)."""
    diff_choices, diff_leaves = differing(runs)
    keys = list(
        dict.fromkeys(
            k for item in (spec or DEFAULT_COLUMNS) for k in _spec_keys(runs, item, diff_choices, diff_leaves)
        )
    )
    names = short_names([k for kind, k in keys if kind == "config"], taken=[k for kind, k in keys if kind == "choice"])
    columns = [_column(runs, kind, key, names.get(key, key)) for kind, key in keys]
    return columns, diff_choices + diff_leaves
