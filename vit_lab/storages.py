"""Optuna storages for sweeps, named by one string (``hydra.sweeper.storage``), shared by the sweeper and its jobs.

* ``null``: in memory (one process; jobs cannot report to it).
* any SQLAlchemy URL: ``sqlite:///outputs/optuna.db`` (relative to the working directory), ``postgresql://user@host/db``
  (driver: ``pip install -e ".[postgres]"``), ``mysql+pymysql://...``: Optuna's ``RDBStorage``.
* ``journal:///outputs/optuna.log`` (relative) or ``journal:////abs/path.log``: Optuna's ``JournalStorage`` on a
  ``JournalFileBackend``, an append-only file for clusters with a shared file system and no database server.

``optuna-dashboard <dashboard_target(url)>`` reads each of them.
This module imports neither torch nor optuna at import time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vit_lab.errors import ConfigError

JOURNAL = "journal:///"
# extras that bring the drivers of URL schemes Optuna users meet most (SQLAlchemy names the module it misses)
_EXTRAS = {
    "postgresql": 'pip install -e ".[postgres]" (psycopg)',
    "mysql": "pip install pymysql and use mysql+pymysql://",
}


def journal_file(url: str | None) -> Path | None:
    """The log file of a ``journal:///`` URL (relative unless the path after ``journal:///`` starts with /)."""
    if not url or not url.startswith(JOURNAL):
        return None
    path = url[len(JOURNAL) :]
    if not path:
        raise ConfigError(f"hydra.sweeper.storage={url!r} names no file; use journal:///outputs/optuna.log")
    return Path(path)


def sqlite_file(url: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory SQLite)."""
    if not url or not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def resolve_url(url: str | None, cwd: str | os.PathLike | None = None) -> str | None:
    """The storage string every process can use: a relative SQLite or journal file pinned to ``cwd`` (its folder
    created), ``postgresql://`` given the installed psycopg driver. Raises ConfigError for a missing driver."""
    if url is None:
        return None
    url = str(url)
    for scheme, file in (("journal:///", journal_file(url)), ("sqlite:///", sqlite_file(url))):
        if file is not None:
            file = file if file.is_absolute() else Path(cwd or os.getcwd()) / file
            file.parent.mkdir(parents=True, exist_ok=True)
            return f"{scheme}{file}"
    if url.startswith("journal:"):
        raise ConfigError(
            f"hydra.sweeper.storage={url!r}: write a journal file as journal:///relative/path.log "
            "or journal:////absolute/path.log"
        )
    return _with_driver(url)


def _with_driver(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"hydra.sweeper.storage={url!r} is neither a SQLAlchemy URL (sqlite:///outputs/optuna.db, "
            "postgresql://user@host/db) nor a journal file (journal:///outputs/optuna.log)"
        ) from None
    backend = parsed.get_backend_name()
    if parsed.drivername == "postgresql" and _importable("psycopg") and not _importable("psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver the postgres extra installs
    try:
        dialect = parsed.get_dialect()
        import_dbapi: Any = getattr(dialect, "import_dbapi", None) or dialect.dbapi  # SQLAlchemy 2 / 1.4
        import_dbapi()  # imports the driver
    except (ImportError, NoSuchModuleError) as e:
        ours = parsed.drivername in ("postgresql", "postgresql+psycopg", "mysql", "mysql+pymysql")
        fix = _EXTRAS[backend] if ours else f"install the Python driver of {parsed.drivername}"
        raise ConfigError(
            f"hydra.sweeper.storage={safe(url)}: the {backend} driver is not installed ({e}); {fix}"
        ) from None
    return parsed.render_as_string(hide_password=False)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules
        return False


def safe(url: str | None) -> str:
    """The URL with its password masked, for logs and messages."""
    if not url or url.startswith(JOURNAL):  # a file path holds no password (and may still be invalid here)
        return str(url)
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a string that is not a URL is shown as it is
        return url


def dashboard_target(url: str) -> str:
    """What to pass to ``optuna-dashboard`` for this storage (it takes a journal as a plain file path)."""
    file = journal_file(url)
    return str(file) if file is not None else url


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLite: wait up to a minute for a lock instead of failing with 'database is locked' (parallel jobs)."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}


def open_storage(url: str | None, heartbeat_interval: int | None = None, grace_period: int | None = None) -> Any:
    """This process's own Optuna storage for a resolved storage string (see :func:`resolve_url`). The heartbeat
    arguments enable Optuna's native heartbeat of an RDBStorage (a journal has none; the sweeper keeps its own)."""
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    file = journal_file(url)
    if file is not None:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(file)))
    with warnings.catch_warnings():  # heartbeat arguments are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs(url),
            heartbeat_interval=heartbeat_interval or None,
            grace_period=grace_period if heartbeat_interval else None,
        )


# --------------------------------------------------------------------------- a lock across worker processes


@contextlib.contextmanager
def storage_lock(url: str | None, name: str) -> Iterator[None]:
    """Serialise a short critical section (create the study, count and ask trials) between the sweep processes
    of study ``name``: a file lock beside a SQLite file, Optuna's NFS-safe symlink lock beside a journal, an
    advisory lock on PostgreSQL and MySQL (released by the server if the holder dies). Other storages: no lock."""
    sqlite, journal = sqlite_file(url), journal_file(url)
    if sqlite is not None:
        with open(f"{sqlite}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif journal is not None:
        from optuna.storages.journal import JournalFileSymlinkLock

        lock = JournalFileSymlinkLock(f"{journal}.vit_lab")  # not the journal's own .lock, which Optuna holds
        lock.acquire()
        try:
            yield
        finally:
            lock.release()
    elif url and url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "mysql"):
        with _server_lock(url, name):
            yield
    else:
        yield


@contextlib.contextmanager
def _server_lock(url: str, name: str) -> Iterator[None]:
    import sqlalchemy

    key = int.from_bytes(hashlib.sha1(f"vit_lab:{name}".encode()).digest()[:8], "big", signed=True)
    engine = _lock_engine(url)
    postgres = engine.dialect.name == "postgresql"
    take = "SELECT pg_advisory_lock(:key)" if postgres else "SELECT GET_LOCK(:name, 600)"
    give = "SELECT pg_advisory_unlock(:key)" if postgres else "SELECT RELEASE_LOCK(:name)"
    args = {"key": key, "name": f"vit_lab_{key:x}"}
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(take), args)
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text(give), args)
            conn.commit()


_ENGINES: dict[str, Any] = {}


def _lock_engine(url: str) -> Any:
    import sqlalchemy

    if url not in _ENGINES:
        _ENGINES[url] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    return _ENGINES[url]
