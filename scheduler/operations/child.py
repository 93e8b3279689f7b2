"""``sopbot serve``'s scheduler in a process of its own.

Pages and the dispatcher used to share one interpreter: while a burst was being
sent, a page's request thread waited for the interpreter the dispatcher held,
and ``/healthz`` answered in 150-200 ms at p99 instead of 15 ms
(``benchmarks/pages.py``). ``serve`` now keeps the API and the pages in its own
process and runs the scheduler as a child: the same jobs, dispatcher and
heartbeat as ``sopbot worker``, under serve's worker id and role.

- serve holds the SQLite one-scheduler lock for its child, which never takes it;
- the child dies with serve: on Linux by ``PR_SET_PDEATHSIG`` (SIGKILL, as if
  it had been inside serve), elsewhere by a check of its parent every second.
  A ``kill -9`` of serve leaves no scheduler behind to race a restarted one;
- serve restarts a child that exits on its own, after a pause that grows from
  1 s to 30 s while it keeps failing, and logs why;
- serve's stop stops the child first (SIGTERM: the worker's graceful stop
  within ``SOPBOT_SHUTDOWN_SECONDS``), and kills it only past that bound;
- the child serves its dispatch histograms on a loopback port only serve knows,
  and serve's ``/metrics`` appends them to the database-wide figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

log = logging.getLogger("sopbot.serve")

PARENT_PID_ENV = "SOPBOT_INTERNAL_SERVE_PID"
METRICS_PORT_ENV = "SOPBOT_INTERNAL_SERVE_METRICS_PORT"
_COMMAND = "from api.cli import main; main()"
_PR_SET_PDEATHSIG = 1
RESTART_PAUSES_S = (1.0, 2.0, 5.0, 10.0, 30.0)
# A child that ran this long before it exited starts again after the first pause.
_HEALTHY_RUN_S = 60.0


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SchedulerProcess:
    """serve's side: starts, watches, restarts and stops the scheduler child."""

    def __init__(self, *, shutdown_seconds: float, python: str = sys.executable) -> None:
        self._shutdown_seconds = shutdown_seconds
        self._python = python
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._failures = 0
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self.metrics_port = _free_loopback_port()

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the child and the watch that restarts it. Call from the event
        loop's thread: on Linux the child dies with the thread that started it."""
        self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._watch_child())

    def _spawn(self) -> None:
        env = dict(os.environ)
        env[PARENT_PID_ENV] = str(os.getpid())
        env[METRICS_PORT_ENV] = str(self.metrics_port)
        # stdout and stderr are serve's: the child's log lines go where serve's go.
        self._process = subprocess.Popen(
            [self._python, "-c", _COMMAND, "scheduler-process"], env=env, close_fds=True
        )
        self._started_at = time.monotonic()
        log.info("scheduler process %d started", self._process.pid)

    async def _watch_child(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            process = self._process
            if self._stopping or process is None or process.poll() is None:
                continue
            ran = time.monotonic() - self._started_at
            self._failures = 1 if ran >= _HEALTHY_RUN_S else self._failures + 1
            pause = RESTART_PAUSES_S[min(self._failures, len(RESTART_PAUSES_S)) - 1]
            log.error(
                "scheduler process %d exited with %s after %.0f s; starting it again in %.0f s",
                process.pid,
                process.returncode,
                ran,
                pause,
            )
            await asyncio.sleep(pause)
            if not self._stopping:
                self._spawn()

    async def stop(self) -> int | None:
        """The child's graceful stop (SIGTERM), bounded: killed a little past
        ``shutdown_seconds``. Returns its exit code."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        process = self._process
        if process is None or process.poll() is not None:
            return process.returncode if process is not None else None
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._shutdown_seconds + 5.0
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            log.warning("scheduler process %d did not stop in time: killed", process.pid)
            process.kill()
            await asyncio.to_thread(process.wait)
        return process.returncode

    def metrics_text(self, timeout: float = 2.0) -> bytes:
        """The child's dispatch histograms (Prometheus text); nothing while it is
        starting or gone, so ``/metrics`` still answers with the database figures."""
        if not self.alive():
            return b""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (loopback)
                return bytes(reply.read())
        except OSError:
            return b""


# -- the child's side -----------------------------------------------------------------


def die_with_parent(parent_pid: int) -> None:
    """End this process when serve ends, however serve ends."""
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if os.getppid() != parent_pid:  # serve ended before the line above
        os._exit(1)
    if armed:
        return

    def check() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=check, name="parent-watch", daemon=True).start()


def child_settings() -> tuple[int, int] | None:
    """(serve's pid, the metrics port) when this process is serve's scheduler."""
    pid, port = os.environ.get(PARENT_PID_ENV), os.environ.get(METRICS_PORT_ENV)
    if not pid or not port:
        return None
    return int(pid), int(port)
