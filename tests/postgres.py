"""A throwaway PostgreSQL server for the storage and worker tests (fixtures ``postgres`` and ``postgres_url``).

``initdb`` into a fresh temp folder, ``pg_ctl start`` on 127.0.0.1 and a free port (its Unix socket in the same
folder), one new database per test, ``pg_ctl stop`` and the folder removed at the end; every step bounded in time.
PostgreSQL refuses to run as root, so under root (CI) the server runs as the ``postgres`` user (else ``nobody``).
The server binaries come from the system (Debian: ``apt-get install postgresql``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

TIMEOUT = 60  # seconds for each of initdb, start, stop


def server_bin() -> Path:
    """The folder holding initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if folders:
        return Path(folders[-1])
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (Debian: apt-get install "
        "postgresql), the storage tests start a throwaway server"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One throwaway server; ``url(db)`` is a SQLAlchemy URL for a database on it."""

    def __init__(self) -> None:
        self.bin = server_bin()
        self.user = None
        if os.geteuid() == 0:
            names = [u.pw_name for u in pwd.getpwall()]
            self.user = pwd.getpwnam("postgres" if "postgres" in names else "nobody")
        self.root = Path(tempfile.mkdtemp(prefix="vit_lab_pg_"))
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data, self.port = self.root / "data", free_port()

    def _run(self, *args: str) -> None:
        kw = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[]) if self.user else {}
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "HOME": str(self.root)}
        proc = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            **kw,
        )
        if proc.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{args[0]} failed: {proc.stdout}{proc.stderr}{log[-2000:]}")

    def start(self) -> Cluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            str(TIMEOUT),
            "-o",
            options,
            "start",
        )
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", str(TIMEOUT), "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True, connect_timeout=10
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name


@pytest.fixture(scope="session")
def postgres():
    cluster = Cluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres) -> str:
    """A SQLAlchemy URL of a new, empty database on the session's throwaway server."""
    return postgres.url(postgres.create_database())
