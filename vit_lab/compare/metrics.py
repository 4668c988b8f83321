"""The metric registry: the metrics.json keys compare knows, their headers, formats and best direction, and
how a key (a metric, an alias, a choice or a config leaf) is looked up in a run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vit_lab.compare.formats import fmt_float, fmt_params, fmt_pct, fmt_rate, fmt_seconds
from vit_lab.compare.runs import RunInfo


@dataclass(frozen=True)
class Metric:
    key: str  # the metrics.json key (or a derived one)
    header: str  # terminal header; "\n" splits it over two lines
    fmt: Callable[[Any], str]
    higher_is_better: bool | None  # None: no "best" direction (sorted ascending)
    raw_keys: tuple[str, ...] = ()  # what csv/json carry for it (default: key)

    @property
    def label(self) -> str:
        """The header on one line (markdown tables, plot axes)."""
        return self.header.replace("\n", " ")


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("test_acc", "test\nacc", fmt_pct, True),
        Metric("best_val_acc", "best\nval acc", fmt_pct, True),
        Metric("val_acc", "last\nval acc", fmt_pct, True),
        Metric("test_loss", "test\nloss", fmt_float, False),
        Metric("n_params", "params", fmt_params, None),
        Metric("epochs", "epochs", str, None, ("epochs_completed", "epochs")),
        Metric("train_seconds", "train\ntime", fmt_seconds, None),
        Metric("train_images_per_second", "img/s", fmt_rate, True),
        Metric("device", "device", str, None),
    )
}
ALIASES = {
    "params": "n_params",
    "time": "train_seconds",
    "train_time": "train_seconds",
    "img/s": "train_images_per_second",
    "images_per_second": "train_images_per_second",
    "acc": "test_acc",
    "val_acc_best": "best_val_acc",
}
DEFAULT_METRICS = ("test_acc", "best_val_acc", "n_params", "epochs", "train_seconds", "train_images_per_second")


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


def example_keys(runs: Sequence[RunInfo]) -> str:
    """A few keys these runs have, for the "try e.g. ..." of an error message."""
    sample = [k for k in ("model.patch_size", "model.n_heads") if any(k in r.config for r in runs)]
    return ", ".join(["test_acc", "best_val_acc", "model", *sample, "status"])
