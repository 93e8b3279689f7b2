"""SQLite takes one scheduler process per file: a second `sopbot worker` or
`sopbot serve` on the same file is refused with a message naming PostgreSQL,
while the first one keeps running; the lock goes with its process, even after
`kill -9`, so a restart is never blocked by a stale lock file."""

from __future__ import annotations

import subprocess

import pytest
from harness import cli_env, db_upgrade, sopbot_command, start_worker, wait_until
from pgtools import free_port
from sqlalchemy import select

from scheduler.operations.models import Worker
from sopbot.db import make_engine

pytestmark = pytest.mark.faults


def _heartbeats(url: str, worker_id: str) -> bool:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(Worker.id).where(Worker.id == worker_id)).first() is not None
    finally:
        engine.dispose()


def _second(url: str, workdir, command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sopbot_command(*command),
        env=cli_env(url, worker_id="second", heartbeat_seconds=0.5, tick_seconds=0.1),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", [["worker"], ["serve", "--port", "0"]], ids=["worker", "serve"])
def test_a_second_scheduler_on_one_sqlite_file_is_refused(tmp_path, command):
    url = f"sqlite:///{tmp_path / 'sopbot.db'}"
    db_upgrade(url, tmp_path)
    first = start_worker(url, "first", tmp_path)
    try:
        wait_until(lambda: _heartbeats(url, "first"), 30, what="the first worker running")
        if command[0] == "serve":
            command = ["serve", "--port", str(free_port())]
        second = _second(url, tmp_path, command)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "another sopbot scheduler" in second.stderr
        assert "PostgreSQL" in second.stderr and "sopbot.db" in second.stderr
        assert first.alive(), first.output()[-3000:]  # the first one is untouched
        assert first.terminate() == 0
    finally:
        first.close()


def test_the_lock_goes_with_its_process_even_after_kill_9(tmp_path):
    url = f"sqlite:///{tmp_path / 'sopbot.db'}"
    db_upgrade(url, tmp_path)
    first = start_worker(url, "first", tmp_path)
    try:
        wait_until(lambda: _heartbeats(url, "first"), 30, what="the first worker running")
        first.kill()
    finally:
        first.close()
    assert (tmp_path / "sopbot.db.scheduler.lock").exists()  # left behind, yet no obstacle
    successor = start_worker(url, "successor", tmp_path)
    try:
        wait_until(lambda: _heartbeats(url, "successor"), 30, what="the successor running")
        assert successor.alive(), successor.output()[-3000:]
        assert successor.terminate() == 0
    finally:
        successor.close()
