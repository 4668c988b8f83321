"""Optuna sweep summaries: the study behind a sweep folder, its best trial (or, for a multi-objective study,
its Pareto-optimal trials), trial counts and importances."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vit_lab import storages
from vit_lab.compare.runs import read_yaml
from vit_lab.errors import ConfigError

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


def sweeper_settings(sweep_dir: Path) -> dict | None:
    """The Optuna sweeper settings recorded for a sweep folder (from a job's hydra.yaml or multirun.yaml)."""
    candidates = [sweep_dir / "multirun.yaml"]
    candidates += sorted(sweep_dir.glob("*/.hydra/hydra.yaml"), key=lambda p: (len(p.parts), str(p)))[:3]
    for path in candidates:
        try:
            cfg = read_yaml(path)
            sweeper = cfg["hydra"]["sweeper"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
        if isinstance(sweeper, dict) and "optuna" in str(sweeper.get("_target_", "")).lower():
            settings: dict[str, Any] = {
                "storage": sweeper.get("storage"),
                "study_name": sweeper.get("study_name"),
                "direction": sweeper.get("direction"),
                "config": path,
            }
            for key in ("storage", "study_name"):
                if isinstance(settings[key], str) and "${" in settings[key]:
                    settings[key] = _resolve(path, cfg, key)
            return settings
    return None


def _resolve(path: Path, hydra_cfg: dict, key: str) -> Any:
    """hydra.yaml is saved unresolved (e.g. study_name: vit_optuna-${data.name}): resolve it against the job's
    config.yaml (or multirun.yaml, which holds both)."""
    from omegaconf import OmegaConf

    raw = hydra_cfg["hydra"]["sweeper"][key]
    try:
        job = read_yaml(path.parent / "config.yaml") if path.name == "hydra.yaml" else {}
        merged = OmegaConf.merge(OmegaConf.create(job or {}), OmegaConf.create(hydra_cfg))
        value = OmegaConf.select(merged, f"hydra.sweeper.{key}", throw_on_resolution_failure=True)
        return value if value is not None else raw
    except Exception:  # noqa: BLE001 - an unknown resolver (e.g. ${now:...}): keep the text
        return raw


def resolve_storage(storage: str, sweep_dir: Path) -> tuple[str | None, str]:
    """A storage string :func:`vit_lab.storages.open_storage` takes, or (None, why). A relative SQLite or journal
    file is looked for from the current directory, then from the sweep folder's parents (it was relative to the
    launch directory). A missing file is never opened: Optuna would create an empty one."""
    try:
        file = storages.sqlite_file(storage) or storages.journal_file(storage)
        if file is None:
            return storages.resolve_url(storage), ""  # a database server, with its installed driver
    except ConfigError as e:
        return None, str(e)
    scheme = storage[: storage.index(":///") + 4]
    if file.is_absolute():
        return (storage, "") if file.is_file() else (None, f"storage file {file} not found")
    for base in [Path.cwd(), *sweep_dir.resolve().parents]:
        if (base / file).is_file():
            return f"{scheme}{(base / file).resolve()}", ""
    return None, f"storage {storages.safe(storage)} not found from here or above {sweep_dir}"


def _results_file(sweep_dir: Path) -> dict:
    try:
        data = read_yaml(sweep_dir / "optimization_results.yaml")
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def summarize(sweep_dir: Path, display: str) -> dict | None:
    """A summary dict for an Optuna sweep folder, or None when the folder is not an Optuna sweep."""
    settings = sweeper_settings(sweep_dir)
    results = _results_file(sweep_dir)
    if settings is None and not results:
        return None
    summary: dict[str, Any] = {
        "sweep": display,
        "study": None,
        "storage": None,
        "direction": None,
        "trials": {},
        "best": None,
        "importances": None,
        "note": "",
    }
    if results.get("best_params") is not None:
        summary["best"] = {"trial": None, "value": results.get("best_value"), "params": results.get("best_params")}
    if isinstance(results.get("solutions"), list):  # a multi-objective sweep writes its Pareto front
        summary["pareto"] = [
            {
                "trial": None,
                "values": {f"objective {i}": v for i, v in enumerate(x.get("values") or [])},
                "params": x.get("params"),
            }
            for x in results["solutions"]
            if isinstance(x, dict)
        ]
    if settings is None:
        summary["note"] = "sweeper settings not found; best from optimization_results.yaml"
        return summary
    d = settings["direction"]
    summary["direction"] = ", ".join(map(str, d)) if isinstance(d, list) else d
    storage = settings["storage"]
    if not storage:
        summary["note"] = "in-memory study (no hydra.sweeper.storage): only optimization_results.yaml is left"
        return summary
    summary["storage"] = storages.safe(str(storage))
    url, why = resolve_storage(str(storage), sweep_dir)
    if url is None:
        summary["note"] = why
        return summary
    study, note = _load_study(url, settings["study_name"])
    summary["study"] = settings["study_name"] if study is None else study.study_name
    if study is None:
        summary["note"] = note
        return summary
    summary.update(study_summary(study))
    summary["_study"] = study
    return summary


def _load_study(url: str, name: str | None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = storages.open_storage(url)
        if name is None:
            names = optuna.study.get_all_study_names(storage=storage)
            if len(names) != 1:
                return None, f"study name not recorded and the storage holds {len(names)} studies"
            name = names[0]
        return optuna.load_study(study_name=name, storage=storage), ""
    except Exception as e:  # noqa: BLE001 - a missing study or a broken storage is one note, not a crash
        return None, f"cannot load study {name!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def objective_names(study) -> list[str]:
    """The study's metric names (``study.set_metric_names``), else ``objective 0``, ``objective 1``, ..."""
    names = study.metric_names
    return list(names) if names else [f"objective {i}" for i in range(len(study.directions))]


def _finite_values(t) -> bool:
    return t.values is not None and all(v is not None and math.isfinite(v) for v in t.values)


def study_summary(study) -> dict:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {
        s.name.lower(): sum(t.state == s for t in trials)
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    }
    directions = [d.name.lower() for d in study.directions]
    out: dict[str, Any] = {"trials": counts, "direction": ", ".join(directions), "importances": None}
    complete = [t for t in trials if t.state == TrialState.COMPLETE and _finite_values(t)]
    if len(directions) > 1:
        names = objective_names(study)
        out["objectives"] = [{"name": n, "direction": d} for n, d in zip(names, directions)]
        out["pareto"] = sorted(
            (
                {"trial": t.number, "values": dict(zip(names, t.values)), "params": dict(t.params)}
                for t in study.best_trials
                if _finite_values(t)
            ),
            key=lambda p: [p["values"][n] * (-1 if d == "maximize" else 1) for n, d in zip(names, directions)],
        )
    elif complete:
        best = study.best_trial
        out["best"] = {"trial": best.number, "value": best.value, "params": dict(best.params)}
    if len(complete) >= 2:
        out.update(_importances(study, objective_names(study) if len(directions) > 1 else []))
    else:
        out["importance_note"] = "importances need at least 2 complete trials"
    return out


def _importances(study, names: list[str]) -> dict:
    """Optuna's parameter importances: of the objective, or of each objective (``names``) of a multi-objective
    study (whose importances need a target)."""
    import optuna

    targets: dict[str, Callable[[FrozenTrial], float] | None] = {
        n: functools.partial(_objective_value, index=i) for i, n in enumerate(names)
    } or {"": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = {
                n: {k: float(v) for k, v in optuna.importance.get_param_importances(study, target=f).items()}
                for n, f in targets.items()
            }
    except Exception as e:  # noqa: BLE001 - e.g. no parameter varied yet
        return {"importance_note": f"importances unavailable ({type(e).__name__})"}
    return {"importances": found[""]} if not names else {"importances_by_objective": found}


def _objective_value(trial: FrozenTrial, index: int) -> float:
    return trial.values[index]


def summaries(sweep_dirs: Sequence[Path], display) -> list[dict]:
    """One summary per distinct study (sweeps sharing a storage and study are reported once)."""
    out, seen = [], set()
    for d in sweep_dirs:
        s = summarize(d, display(d))
        if s is None:
            continue
        ident = (s.get("storage"), s.get("study")) if s.get("study") else ("dir", s["sweep"])
        if ident in seen:
            continue
        seen.add(ident)
        out.append(s)
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_summary(s: dict, markdown: bool = False, width: int | None = None) -> str:
    text = _render_summary(s, markdown)
    if markdown or not width:
        return text
    import textwrap

    return "\n".join(
        textwrap.fill(line, width=width, subsequent_indent="    ", break_on_hyphens=False) for line in text.split("\n")
    )


def _render_summary(s: dict, markdown: bool = False) -> str:
    name = f"study {s['study']!r}" if s.get("study") else "Optuna sweep"
    head = f"{name} of {s['sweep']}" + (f" ({s['storage']})" if s.get("storage") else "")
    if s.get("objectives"):
        head += ", " + ", ".join(f"{o['direction']} {o['name']}" for o in s["objectives"])
    elif s.get("direction"):
        head += f", {s['direction']}"
    lines = [f"### {head}" if markdown else head]
    bullet = "- " if markdown else "  "
    t = s.get("trials") or {}
    if t:
        lines.append(
            f"{bullet}trials: {t.get('complete', 0)} complete, {t.get('pruned', 0)} pruned, "
            f"{t.get('fail', 0)} failed" + (f", {t['running']} running" if t.get("running") else "")
        )
    if s.get("best"):
        b = s["best"]
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in (b.get("params") or {}).items())
        trial = f"trial {b['trial']}, " if b.get("trial") is not None else ""
        lines.append(f"{bullet}best: {trial}value {_fmt(b.get('value'))}" + (f", {params}" if params else ""))
    if s.get("pareto") is not None:
        lines += _render_pareto(s, bullet)
    if s.get("importances"):
        lines.append(f"{bullet}importance: " + ", ".join(f"{k} {v:.2f}" for k, v in s["importances"].items()))
    elif s.get("importances_by_objective"):
        for name, imp in s["importances_by_objective"].items():
            lines.append(f"{bullet}importance for {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
    elif s.get("importance_note"):
        lines.append(f"{bullet}{s['importance_note']}")
    if s.get("note"):
        lines.append(f"{bullet}note: {s['note']}")
    return "\n".join(lines)


def _render_pareto(s: dict, bullet: str) -> list[str]:
    """The Pareto-optimal trials, one line each (values, then parameters)."""
    front = s["pareto"]
    lines = [f"{bullet}Pareto front (trials no other trial beats in every objective): {len(front)}"]
    for p in front:
        trial = f"trial {p['trial']}: " if p.get("trial") is not None else ""
        values = ", ".join(f"{k} {_fmt(v)}" for k, v in p["values"].items())
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in (p.get("params") or {}).items())
        lines.append(f"{bullet}  {trial}{values}" + (f"; {params}" if params else ""))
    return lines


def public(s: dict) -> dict:
    return {k: v for k, v in s.items() if not k.startswith("_")}
