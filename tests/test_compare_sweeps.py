"""compare's sweep summaries open every storage the sweeper writes (SQLite is covered in test_compare.py):
a journal file, relative or absolute, and a PostgreSQL database, through vit_lab.storages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vit_lab import storages
from vit_lab.compare.__main__ import main


def _study(url: str, name: str):
    """A study of four trials, value 0.1 * x, in the storage ``url``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=storages.open_storage(storages.resolve_url(url)),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(
        lambda t: 0.1 * t.suggest_int("model.depth", 1, 6) + t.suggest_float("optimizer.lr", 0, 1e-3), n_trials=4
    )
    return study


def _sweep(folder: Path, storage: str, name: str) -> Path:
    """A sweep folder as Hydra leaves it: one job and multirun.yaml naming the sweeper's storage."""
    job = folder / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"model": {}, "data": {}, "trainer": {}, "optimizer": {}})
    )
    (job / "metrics.json").write_text(json.dumps({"status": "completed", "best_val_acc": 0.5}))
    (folder / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {
                        "_target_": "hydra_plugins.vit_lab_sweeper.vit_optuna_sweeper.VitOptunaSweeper",
                        "storage": storage,
                        "study_name": name,
                        "direction": "maximize",
                    }
                }
            }
        )
    )
    return folder


def _summary(capsys, sweep: Path) -> dict:
    rc = main([str(sweep), "--format", "json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (summary,) = json.loads(out.out)["sweeps"]
    return summary


def _check(summary: dict, study) -> None:
    assert summary["study"] == study.study_name and summary["note"] == ""
    assert summary["trials"]["complete"] == 4
    assert summary["best"] == {"trial": study.best_trial.number, "value": study.best_value, "params": study.best_params}


def test_a_journal_study_is_summarised_from_a_relative_or_absolute_path(tmp_path, capsys, monkeypatch):
    study = _study(f"journal:///{tmp_path}/optuna.log", "j")
    _check(_summary(capsys, _sweep(tmp_path / "abs", f"journal:///{tmp_path}/optuna.log", "j")), study)
    # relative to the launch folder (tmp_path), read from elsewhere: found above the sweep folder
    monkeypatch.chdir(tmp_path / "abs")
    summary = _summary(capsys, _sweep(tmp_path / "runs" / "rel", "journal:///optuna.log", "j"))
    _check(summary, study)
    assert summary["storage"] == "journal:///optuna.log"


def test_a_missing_journal_file_is_a_note_and_creates_nothing(tmp_path, capsys):
    summary = _summary(capsys, _sweep(tmp_path / "sweep", f"journal:///{tmp_path}/gone.log", "j"))
    assert summary["study"] is None and "not found" in summary["note"]
    assert not (tmp_path / "gone.log").exists()


def test_a_postgres_study_is_summarised_with_the_password_masked(postgres_url, tmp_path, capsys):
    study = _study(postgres_url, "pg")
    plain = postgres_url.replace("postgresql+psycopg://postgres@", "postgresql://postgres:secret@")  # as users write it
    summary = _summary(capsys, _sweep(tmp_path / "sweep", plain, "pg"))
    _check(summary, study)
    assert "secret" not in summary["storage"] and summary["storage"].startswith("postgresql://postgres:***@")


@pytest.mark.parametrize("storage", ["journal:///", "bogus://x"])
def test_an_unusable_storage_string_is_a_note(tmp_path, capsys, storage):
    summary = _summary(capsys, _sweep(tmp_path / "sweep", storage, "j"))
    assert summary["study"] is None and summary["note"]
