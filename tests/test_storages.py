"""Sweep storages (vit_lab/storages.py): URLs and drivers, the lock between workers, heartbeats on RDB and journal
storages, and optuna-dashboard reading what the sweeper wrote, on SQLite, a journal file and a real PostgreSQL
server (tests/postgres.py starts one on loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO, run_module
from tests.postgres import free_port
from vit_lab import storages
from vit_lab.errors import ConfigError


def test_urls_pin_files_to_the_working_directory_and_pick_the_installed_postgres_driver(tmp_path):
    assert storages.resolve_url("sqlite:///sub/o.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/sub/o.db"
    assert storages.resolve_url("journal:///j/o.log", cwd=tmp_path) == f"journal:///{tmp_path}/j/o.log"
    assert (tmp_path / "sub").is_dir() and (tmp_path / "j").is_dir()
    assert storages.resolve_url(f"journal:///{tmp_path}/abs.log") == f"journal:///{tmp_path}/abs.log"
    assert storages.journal_file(f"journal:///{tmp_path}/abs.log") == tmp_path / "abs.log"
    assert storages.dashboard_target(f"journal:///{tmp_path}/abs.log") == str(tmp_path / "abs.log")
    assert storages.resolve_url(None) is None
    # psycopg (3) is what the postgres extra installs; SQLAlchemy's plain postgresql:// means psycopg2
    assert storages.resolve_url("postgresql://u:pw@db:5432/optuna") == "postgresql+psycopg://u:pw@db:5432/optuna"
    assert storages.safe("postgresql+psycopg://u:pw@db/optuna") == "postgresql+psycopg://u:***@db/optuna"
    for bad, words in (
        ("journal:/x.log", "journal:///relative/path.log"),
        ("journal:///", "names no file"),
        ("not a url", "neither a SQLAlchemy URL"),
    ):
        with pytest.raises(ConfigError, match=words):
            storages.resolve_url(bad, cwd=tmp_path)


def test_a_postgres_url_without_its_driver_names_the_extra(monkeypatch):
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # as if neither driver were installed
    with pytest.raises(ConfigError, match=r"postgresql driver is not installed .*pip install -e \"\.\[postgres\]\""):
        storages.resolve_url("postgresql://u@db/optuna")


@pytest.mark.slow
def test_a_missing_driver_is_one_line_and_exit_2(tmp_path):
    proc = run_module(
        "vit_lab.train", "-m", "hparams_search=vit_optuna", "hydra.sweeper.storage=mysql://u:pw@db/x", cwd=tmp_path
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("vit_lab: error: hydra.sweeper.storage=mysql://u:***@db/x") and "pymysql" in lines[0]


def url_of(kind: str, tmp_path: Path, request) -> str:
    """A fresh storage of this kind (PostgreSQL: a new database on the session's throwaway server)."""
    if kind == "postgres":
        return request.getfixturevalue("postgres_url")
    return {"sqlite": f"sqlite:///{tmp_path}/o.db", "journal": f"journal:///{tmp_path}/o.log"}[kind]


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_the_storage_lock_excludes_other_holders(kind, tmp_path, request):
    url = storages.resolve_url(url_of(kind, tmp_path, request))
    order: list[str] = []

    def other() -> None:
        with storages.storage_lock(url, "study"):
            order.append("other")

    with storages.storage_lock(url, "study"):
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.5)
        order.append("first")
    thread.join(timeout=30)
    assert order == ["first", "other"]
    with storages.storage_lock(url, "another study"):  # a lock per study
        pass


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the sweeper asks and tells: the heartbeat is its own
@pytest.mark.parametrize("kind", ["journal", "postgres"])  # SQLite takes PostgreSQL's path (RDBStorage)
def test_stale_running_trials_fail_but_live_ones_stay(kind, tmp_path, request):
    """A killed worker leaves RUNNING trials; another worker fails those whose heartbeat is stale, not live ones
    (RDB: Optuna's own heartbeat; journal: the sweeper's)."""
    from hydra_plugins.vit_lab_sweeper.heartbeat import Heartbeat

    url = storages.resolve_url(url_of(kind, tmp_path, request))
    dead_storage, live_storage = (storages.open_storage(url, heartbeat_interval=1, grace_period=1) for _ in "ab")
    dead_study = optuna.create_study(study_name="s", storage=dead_storage)
    live_study = optuna.load_study(study_name="s", storage=live_storage)
    dead, live = Heartbeat(dead_storage, dead_study, 1, 1), Heartbeat(live_storage, live_study, 1, 1)
    stale = dead_study.ask()
    dead.add(stale.number)
    dead.close()  # the killed worker: no more beats
    running = live_study.ask()
    live.add(running.number)
    time.sleep(2.5)
    try:
        assert live.fail_stale() == [stale.number]
        states = {
            t.number: t.state for t in optuna.load_study(study_name="s", storage=storages.open_storage(url)).trials
        }
        assert states == {stale.number: optuna.trial.TrialState.FAIL, running.number: optuna.trial.TrialState.RUNNING}
    finally:
        live.close()


def _toy_sweep(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return run_module(
        "tests.toy_task",
        "-m",
        "hydra/sweeper=vit_optuna",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "hydra.sweeper.n_trials=2",
        *extra,
        cwd=REPO,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_optuna_dashboard_reads_the_sweeps_study(kind, tmp_path, request):
    url = url_of(kind, tmp_path, request)
    proc = _toy_sweep(tmp_path, url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    target = storages.dashboard_target(url)
    assert f"optuna-dashboard {target}" in proc.stdout  # the sweep says how to watch it
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "optuna-dashboard"),
            target,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.loads(response.read())["study_summaries"]
            except OSError:
                time.sleep(0.2)
        assert studies is not None, server.communicate(timeout=10)
        (study,) = studies
        assert study["study_name"] == "sphere" and study["directions"] == ["minimize"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=10) as r:
            trials = json.loads(r.read())["trials"]
        assert [t["state"] for t in trials] == ["Complete", "Complete"]
    finally:
        server.kill()
        server.communicate(timeout=10)
