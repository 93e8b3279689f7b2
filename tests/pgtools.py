"""PostgreSQL for the tests: databases of their own on the shared server, and a
private server a test starts, stops and restarts itself.

Databases: the suite's, one per run (``tests/conftest.py``), and those of tests
that need a database to themselves (migrations, multi-process runs). Each is
created and dropped through the server's ``postgres`` maintenance database, and
named after this process, so several runs on one server never touch each
other's. The server is the one SOPBOT_TEST_DATABASE_URL points at, else the
machine's ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``; tests that
need it skip when it does not answer.

A private server (:class:`PrivateServer`) is for faults that would disturb
everyone else on the shared one: a restart mid-drain. It is ``initdb`` +
``pg_ctl`` from the machine's PostgreSQL binaries, on a free port and a data
directory of its own; tests that need it skip where the binaries are missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/local/pgsql/bin")


def server_url() -> str:
    url = os.environ.get("SOPBOT_TEST_DATABASE_URL", "")
    return url if url.startswith("postgresql") else DEFAULT_SERVER


@cache
def reachable() -> bool:
    """Whether the server answers, through the ``postgres`` maintenance database
    every helper here works from (the URL's own database need not exist)."""
    try:
        engine = create_engine(
            make_url(server_url()).set(drivername="postgresql+psycopg", database="postgres"),
            connect_args={"connect_timeout": 3},
        )
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure means: skip
        return False


def require_postgres() -> None:
    if not reachable():
        pytest.skip(f"PostgreSQL not reachable at {server_url()}")


def _admin(server: str) -> tuple[URL, Engine]:
    base = make_url(server).set(drivername="postgresql+psycopg")
    return base, create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")


def drop_database_on(server: str, name: str) -> None:
    """Drop database ``name`` on ``server``'s server (its sessions terminated)."""
    _, admin = _admin(server)
    try:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


def create_database(server: str, name: str) -> str:
    """Drop and create database ``name`` on ``server``'s server; return its URL."""
    drop_database_on(server, name)
    base, admin = _admin(server)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def fresh_database(name: str) -> str:
    """Drop and create database ``name`` on the test server; return its URL."""
    require_postgres()
    return create_database(server_url(), name)


def drop_database(name: str) -> None:
    drop_database_on(server_url(), name)


def private_name(prefix: str) -> str:
    """A database name of this test process's own: several runs of the suite
    on one machine (several engineers, CI) must not drop each other's."""
    return f"{prefix}_{os.getpid()}"


# -- a private server -------------------------------------------------------------------------


def pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, if the machine has one."""
    for candidate in (os.environ.get("SOPBOT_TEST_PG_BIN", ""), *PG_BIN_DIRS):
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateServer:
    """A PostgreSQL server of one test's own: ``initdb`` into a temporary data
    directory, ``pg_ctl`` on a free port, trust authentication for ``postgres``.

    PostgreSQL refuses to run as root; as root the binaries run as the
    ``postgres`` OS user (``runuser``), which must own the data directory."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sopbot-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root, and no runuser to run PostgreSQL as postgres")
            self._as = [runuser, "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop``: ``fast`` disconnects every session (a restart, a
        failover); ``immediate`` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def private_server() -> PrivateServer:
    """A started :class:`PrivateServer`, or skip where PostgreSQL's binaries are missing."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    server = PrivateServer(bin_dir)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server
