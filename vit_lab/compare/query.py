"""Selecting runs: ``--where`` filters, ``--sort`` and ``--top``, and the best completed run."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import yaml

from vit_lab.compare.errors import UsageError
from vit_lab.compare.formats import fmt_value, is_number
from vit_lab.compare.metrics import METRICS, canonical, example_keys, known, lookup, metric_value
from vit_lab.compare.runs import RunInfo

_WHERE = re.compile(r"^\s*([^=!<>\s]+)\s*(==|=|!=|>=|<=|>|<)(.*)$")


def parse_where(expr: str) -> tuple[str, str, str]:
    """``KEY OP VALUE`` -> (canonical key, operator with == spelled =, value text)."""
    m = _WHERE.match(expr)
    if not m:
        raise UsageError(
            f"--where {expr!r}: expected KEY=VALUE (or KEY!=, >, >=, <, <= VALUE), e.g. model.patch_size=4"
        )
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
    if not (is_number(actual) and is_number(wanted)):
        return False
    return {"<": actual < wanted, "<=": actual <= wanted, ">": actual > wanted, ">=": actual >= wanted}[op]


def select(
    runs: Sequence[RunInfo],
    where: Sequence[str] = (),
    sort: str | None = None,
    reverse: bool = False,
    top: int | None = None,
) -> list[RunInfo]:
    """Filter with --where (all must hold), sort (missing values last), then keep the top N."""
    out = list(runs)
    for expr in where:
        key, op, raw = parse_where(expr)
        if not known(runs, key):
            raise UsageError(f"--where {expr!r}: no run has the key {key!r} (try e.g. {example_keys(runs)})")
        out = [r for r in out if (r.has(key) or key in METRICS) and _matches(lookup(r, key), op, raw)]
    if sort:
        out = _sorted(runs, out, sort, reverse)
    elif reverse:
        out.reverse()
    if top is not None:
        if top < 1:
            raise UsageError(f"--top {top}: must be at least 1")
        out = out[:top]
    return out


def _sorted(runs: Sequence[RunInfo], out: list[RunInfo], sort: str, reverse: bool) -> list[RunInfo]:
    """``out`` by the sort key, metrics best first (accuracies high, losses low), runs without a value last."""
    key = canonical(sort)
    if not known(runs, key):
        raise UsageError(f"--sort {sort!r}: unknown key (try e.g. {example_keys(runs)})")
    descending = bool(METRICS[key].higher_is_better) if key in METRICS else False
    descending ^= reverse
    present = [r for r in out if lookup(r, key) is not None]
    missing = [r for r in out if lookup(r, key) is None]
    present.sort(key=lambda r: _sort_key(lookup(r, key)), reverse=descending)
    return present + missing


def _sort_key(v: Any) -> tuple:
    if is_number(v):
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
    scored = [(metric_value(r, key), r) for r in runs if r.status == "completed" and is_number(metric_value(r, key))]
    if not scored:
        return None, key
    pick = max if higher else min
    return pick(scored, key=lambda p: p[0])[1], key
