"""Find run directories and read what they hold, never failing on a bad file.

A run is a directory with a ``.hydra/`` folder (single runs and multirun jobs alike). Every problem
(a corrupt, half-written or unreadable file, an older schema) becomes the run's ``status`` and ``notes``,
so one bad run never hides the others.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vit_lab.compare.errors import NoRunsError
from vit_lab.run_files import HISTORY, METRICS

try:  # the C loader, where PyYAML has it: a sweep has a big hydra.yaml per job
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

SWEEP_MARKERS = ("multirun.yaml", "optimization_results.yaml")
# Statuses vit_lab.train writes; anything else is shown as found.
KNOWN_STATUSES = ("running", "completed", "failed", "interrupted", "pruned")
# Sections every current config has; a config without them comes from an older schema.
CONFIG_SECTIONS = ("model", "data", "trainer", "optimizer")
# Keys that only name the Python class behind a group; the group choice already says it.
HIDDEN_LEAVES = ("_target_", "_partial_")


@dataclass
class RunInfo:
    """One run directory: its status, config, choices, metrics and history, read defensively."""

    dir: Path
    status: str = "incomplete"
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # flattened: {"model.n_heads": 4, ...}
    choices: dict[str, Any] = field(default_factory=dict)  # {"model": "vit", "experiment": None, ...}
    overrides: list[str] = field(default_factory=list)
    old_config: bool = False  # a config from an older schema: left out of the "differing" columns
    history_file: Path | None = None

    @property
    def path(self) -> str:
        """The run path relative to the current directory (absolute when it lies outside it)."""
        return display_path(self.dir)

    @property
    def note(self) -> str:
        return "; ".join(self.notes)

    def history(self) -> list[dict]:
        """Per-epoch records, or [] when history.json is missing or unreadable."""
        if self.history_file is None:
            return []
        try:
            data = json.loads(self.history_file.read_text())
        except (OSError, ValueError):
            return []
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    def value(self, key: str) -> Any:
        """A metric, a group choice, ``status``/``path``/``note`` or a config leaf; None when absent."""
        if key == "status":
            return self.status
        if key == "path":
            return self.path
        if key == "note":
            return self.note
        if key in self.choices:  # before metrics: metrics.json's "model" is a class name, the choice is "model"
            return self.choices[key]
        if key in self.metrics:
            return self.metrics[key]
        return self.config.get(key)

    def has(self, key: str) -> bool:
        return key in ("status", "path", "note") or key in self.metrics or key in self.choices or key in self.config


def display_path(path: Path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"depth": 2}} -> {"model.depth": 2}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def read_yaml(path: Path) -> Any:
    with open(path) as f:
        return yaml.load(f, Loader=_Loader)  # noqa: S506 - a safe loader


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def _load_metrics(run: RunInfo) -> None:
    path = run.dir / METRICS
    if not path.exists():
        run.status, run.notes = "incomplete", run.notes + [f"no {METRICS}"]
        return
    try:
        text = path.read_text()
    except OSError as e:
        run.status = "unreadable"
        run.notes.append(f"{METRICS} unreadable ({e.strerror or type(e).__name__})")
        return
    try:
        metrics = json.loads(text)
    except ValueError as e:
        run.status = "corrupt"
        where = f": {e.msg}, line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        run.notes.append(f"{METRICS} corrupt or half-written{where}")
        return
    if not isinstance(metrics, dict):
        run.status = "corrupt"
        run.notes.append(f"{METRICS} holds a {type(metrics).__name__}, not an object")
        return
    run.metrics = metrics
    status = metrics.get("status")
    if status is None:
        run.status = "old schema"
        run.notes.append(f"{METRICS} from an older schema (no status)")
        return
    run.status = str(status)
    if status == "running" and metrics.get("host") == socket.gethostname() and not _pid_alive(metrics.get("pid")):
        run.status = "incomplete"
        run.notes.append(f"the run was killed: its process {metrics.get('pid')} is gone")
    if metrics.get("reason"):
        run.notes.append(str(metrics["reason"]))


def _load_config(run: RunInfo) -> None:
    hydra_dir = run.dir / ".hydra"
    try:
        config = read_yaml(hydra_dir / "config.yaml")
    except FileNotFoundError:
        run.notes.append("no .hydra/config.yaml")
        config = None
    except (OSError, yaml.YAMLError) as e:
        run.notes.append(f"config.yaml unreadable ({type(e).__name__})")
        config = None
    if config is not None and not isinstance(config, dict):
        run.notes.append("config.yaml is not a mapping")
        config = None
    if config is not None:
        missing = [s for s in CONFIG_SECTIONS if s not in config]
        if missing:
            run.notes.append(f"config from an older schema (no {', '.join(missing)})")
            run.old_config = True
        run.config = {k: v for k, v in flatten(config).items() if k.rsplit(".", 1)[-1] not in HIDDEN_LEAVES}
    try:
        hydra_cfg = read_yaml(hydra_dir / "hydra.yaml")
        choices = hydra_cfg["hydra"]["runtime"]["choices"]
        run.choices = {k: v for k, v in choices.items() if not k.startswith("hydra")}
        run.overrides = list(hydra_cfg["hydra"]["overrides"]["task"] or [])
    except FileNotFoundError:
        pass  # older runs or hand-made directories: choices are optional
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        run.notes.append("hydra.yaml unreadable")


def load_run(run_dir: str | os.PathLike) -> RunInfo:
    """Read one run directory. Never raises for bad content: problems land in status and notes."""
    run = RunInfo(dir=Path(run_dir).absolute())
    _load_metrics(run)
    _load_config(run)
    history = run.dir / HISTORY
    run.history_file = history if history.is_file() else None
    return run


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra").is_dir()


def walk(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Run directories and sweep directories (with multirun.yaml or optimization_results.yaml) under paths."""
    runs: dict[Path, None] = {}
    sweeps: dict[Path, None] = {}
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise NoRunsError(f"{given}: no such file or directory")
        if not root.is_dir():
            raise NoRunsError(f"{given}: not a directory")
        for current, dirs, files in os.walk(root):
            here = Path(current)
            if any(m in files for m in SWEEP_MARKERS):
                sweeps[here.resolve()] = None
            if ".hydra" in dirs:
                runs[here.resolve()] = None
                dirs[:] = []  # a run holds no further runs
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return list(runs), list(sweeps)


def natural_key(path: str) -> list:
    """Sort key that orders numbered folders by number (a sweep's jobs 0, 1, 2, ..., 10), dates chronologically."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def find(paths: Iterable[str | os.PathLike]) -> tuple[list[RunInfo], list[Path]]:
    """Every run under the paths (in ``discover``'s order) and every sweep folder, both spelled as the user did."""
    run_dirs, sweep_dirs = walk(paths)
    runs = sorted((load_run(_relative_if_inside(d)) for d in run_dirs), key=lambda r: natural_key(r.path))
    return runs, [_relative_if_inside(d) for d in sweep_dirs]


def discover(paths: Iterable[str | os.PathLike]) -> list[RunInfo]:
    """Every run under the paths, in path order with numbers compared as numbers (``natural_key``)."""
    return find(paths)[0]


def _relative_if_inside(path: Path) -> Path:
    """Keep the user's spelling of paths below the current directory (symlinks included)."""
    try:
        return Path.cwd() / path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path
