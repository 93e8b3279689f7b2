"""`sopbot serve` runs its scheduler in a child process (pages never wait for
the dispatcher's interpreter): the child sends what is due, exactly once; serve
starts it again when it dies; serve's SIGTERM stops it gracefully; and a
`kill -9` of serve takes the child with it, so a restart is never raced by a
leftover scheduler. On SQLite, the embedded default serve runs on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from harness import (
    cli_env,
    db_upgrade,
    live_workers,
    pending,
    release,
    seed_parked,
    sopbot_command,
    start_worker,
    wait_until,
    witness,
)
from pgtools import free_port

from sopbot.db import make_engine

pytestmark = pytest.mark.faults


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@contextmanager
def _serve(url: str, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    env = cli_env(
        url,
        tick_seconds=0.1,
        heartbeat_seconds=0.5,
        worker_stale_seconds=10,
        log_format="json",
        secret_key="serve-test-secret-key-serve-test-secret-key",
    )
    with _server(["serve"], env, workdir) as started:
        yield started


@contextmanager
def _server(
    command: list[str], env: dict[str, str], workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``sopbot COMMAND`` on a free port, its output in ``serve.log``, once it
    answers ``/healthz``; killed at the end if still running."""
    port = free_port()
    log = (workdir / "serve.log").open("ab")
    process = subprocess.Popen(
        sopbot_command(*command, "--host", "127.0.0.1", "--port", str(port)),
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, interval=0.2, what=f"sopbot {command[0]} answering /healthz")
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        log.close()


def _output(workdir: Path) -> str:
    return (workdir / "serve.log").read_text(errors="replace")[-4000:]


def _live_child(engine, pid: int) -> bool:
    return any(worker_id.endswith(f":{pid}") for worker_id in live_workers(engine))


def _dispatched_batches(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(r"^sopbot_dispatch_batch_seconds_count (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sopbot.db'}"
    db_upgrade(url, tmp_path)
    return url


def test_serve_sends_through_its_scheduler_process_restarts_and_stops_it(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    try:
        seed_parked(engine, 300, "mock")
        with _serve(sqlite_url, tmp_path) as (serve, base):
            wait_until(lambda: _children(serve.pid), 30, what="the scheduler process")
            (child,) = _children(serve.pid)
            assert httpx.get(f"{base}/healthz").json()["scheduler_in_process"] is True

            release(engine)
            wait_until(lambda: pending(engine) == 0, 60, what="the deliveries sent")
            seen = witness(engine)
            assert seen.statuses == {"sent": 300}, _output(tmp_path)
            assert seen.duplicates == seen.sent_without_record == seen.recorded_not_sent == 0
            # serve's /metrics carries the child's dispatch histograms
            assert _dispatched_batches(base) > 0

            os.kill(child, signal.SIGKILL)
            wait_until(
                lambda: [p for p in _children(serve.pid) if p != child and not _gone(p)],
                30,
                what="a new scheduler process",
            )
            (successor,) = [p for p in _children(serve.pid) if not _gone(p)]
            assert "starting it again" in _output(tmp_path)

            wait_until(
                lambda: _live_child(engine, successor),
                30,
                what="the new scheduler process running",
            )
            serve.send_signal(signal.SIGTERM)
            # uvicorn ends by raising the signal it stopped on again
            assert serve.wait(timeout=45) in (0, -signal.SIGTERM), _output(tmp_path)
            wait_until(lambda: _gone(successor), 10, what="the scheduler process stopped")
            assert "stopping" in _output(tmp_path)
    finally:
        engine.dispose()


def test_kill_9_of_serve_takes_its_scheduler_process_along(sqlite_url, tmp_path):
    with _serve(sqlite_url, tmp_path) as (serve, _):
        wait_until(lambda: _children(serve.pid), 30, what="the scheduler process")
        (child,) = _children(serve.pid)
        serve.kill()
        serve.wait(timeout=30)
        wait_until(lambda: _gone(child), 10, what="the scheduler process gone with serve")
    # ... and the SQLite one-scheduler lock with it: a successor starts at once.
    successor = start_worker(sqlite_url, "successor", tmp_path)
    try:
        engine = make_engine(sqlite_url)
        try:
            wait_until(lambda: "successor" in live_workers(engine), 30, what="the successor")
        finally:
            engine.dispose()
        assert successor.terminate() == 0, successor.output()[-3000:]
    finally:
        successor.close()


def test_sopbot_api_with_two_server_processes_answers_pages_and_stops(sqlite_url, tmp_path):
    """``sopbot api --workers 2`` (compose's api service): each server process
    builds the app from its factory, warms up in the background, answers the
    health check and a page, and all stop on SIGTERM."""
    env = cli_env(sqlite_url, secret_key="api-test-secret-key-api-test-secret-key")
    with _server(["api", "--workers", "2"], env, tmp_path) as (process, base):
        login = httpx.get(f"{base}/login", timeout=10)
        assert login.status_code == 200 and "登录" in login.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    output = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Traceback" not in output, output[-4000:]
