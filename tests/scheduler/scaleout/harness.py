"""The harness of the multi-process proofs: real ``sopbot worker`` processes
against one database, the deliveries they drain, and the witnesses that say
what reached a channel.

* seeding: ``seed_parked`` enrolls N contacts through the real services, their
  deliveries parked a day ahead; ``release`` makes them all due at once;
* processes: ``start_worker`` / ``workers`` run ``sopbot worker`` as an operator
  does (``SOPBOT_*`` variables, its own log file), ``db_upgrade`` runs
  ``sopbot db upgrade``;
* witnesses: the mock channel's own table (``witness``), and a local HTTP
  server behind the webhook channel (``SlowWebhook``) that answers each POST
  after a delay and counts every ``Idempotency-Key`` it receives.

``benchmarks/scaleout.py`` drives its runs with the same helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Engine

from audiences.models import Account, Contact
from channels.models import MockMessage
from channels.registry import ensure_instance
from scheduler.operations.models import Worker
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import Delivery, DeliveryStatus
from sop_templates import service as templates_service
from sopbot.db import session_scope

CONTACT_CHUNK = 10_000
ENROLL_CHUNK = 10_000
# Not due until released: far enough ahead that no worker touches them early.
PARKED = timedelta(days=1)


def now() -> datetime:
    return datetime.now(UTC)


# -- databases ------------------------------------------------------------------------------


def cli_env(database_url: str, **settings: Any) -> dict[str, str]:
    """Environment for a ``sopbot`` subprocess: ``SOPBOT_*`` from ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPBOT_")}
    env["SOPBOT_DATABASE_URL"] = database_url
    for key, value in settings.items():
        env[f"SOPBOT_{key.upper()}"] = str(value)
    return env


def sopbot_command(*args: str) -> list[str]:
    """``sopbot ARGS`` run by this interpreter (the console script's own code)."""
    return [sys.executable, "-m", "api.cli", *args]


def db_upgrade(database_url: str, cwd: Path) -> None:
    """``sopbot db upgrade`` as an operator runs it."""
    subprocess.run(
        sopbot_command("db", "upgrade"),
        env=cli_env(database_url),
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=120,
    )


# -- data ------------------------------------------------------------------------------------


def add_mock_channel(engine: Engine, name: str, **config: Any) -> None:
    with session_scope(engine) as session:
        ensure_instance(session, name, "mock", config)


def seed_parked(engine: Engine, n: int, channel: str, *, prefix: str = "wm_scale") -> int:
    """Enroll ``n`` contacts into a one-touchpoint (``+0m``) template on
    ``channel`` through the real service; their deliveries are not due for a
    day (``release`` makes them due). Returns the template id."""
    anchor = now() + PARKED
    with session_scope(engine) as session:
        ensure_instance(session, "mock", "mock")
        spec = {
            "name": f"scale-out {prefix}",
            "target": "contact",
            "timezone": "Asia/Shanghai",
            "anchor": "join",
            "channel": channel,
            "touchpoints": [
                {"name": "hello", "timing": "+0m", "content": ["{{ contact.name }}，你好"]}
            ],
        }
        template = templates_service.create_template(session, spec, now())
        templates_service.freeze_draft(session, template.id, now())  # type: ignore[arg-type]
        template_id = template.id
    with engine.begin() as conn:
        account_id = conn.execute(
            insert(Account).values(external_id=f"{prefix}_staff", name="客服", channel=channel)
        ).inserted_primary_key[0]
    contacts = Contact.__table__  # type: ignore[attr-defined]
    for start in range(0, n, CONTACT_CHUNK):
        with engine.begin() as conn:
            conn.execute(
                insert(contacts),
                [
                    {
                        "external_id": f"{prefix}_{i:07d}",
                        "account_id": account_id,
                        "name": f"客户{i}",
                        "joined_at": anchor,
                        "status": "active",
                        "timezone": None,
                        "attributes": {},
                    }
                    for i in range(start, min(n, start + CONTACT_CHUNK))
                ],
            )
    with engine.connect() as conn:
        ids = list(
            conn.execute(
                select(contacts.c.id)
                .where(contacts.c.external_id.like(f"{prefix}\\_%", escape="\\"))
                .order_by(contacts.c.id)
            ).scalars()
        )
    for start in range(0, len(ids), ENROLL_CHUNK):
        with session_scope(engine) as session:
            template = templates_service.get_template(session, template_id)  # type: ignore[arg-type]
            scheduler_service.enroll(
                session, template, [(i, anchor) for i in ids[start : start + ENROLL_CHUNK]], now()
            )
    return template_id  # type: ignore[return-value]


def release(engine: Engine) -> datetime:
    """Make every parked delivery due now (due_at too, so lateness is measured
    from here); returns that instant."""
    at = now()
    with engine.begin() as conn:
        conn.execute(
            update(Delivery)
            .where(Delivery.status == DeliveryStatus.SCHEDULED)  # type: ignore[arg-type]
            .values(due_at=at, run_at=at)
        )
    return at


@dataclass
class Witness:
    """What the database and the mock channel's record say after a run."""

    statuses: dict[str, int]
    mock_messages: int
    mock_distinct: int
    duplicates: int  # deliveries the mock received more than once
    sent_without_record: int  # status sent, but the mock never got it
    recorded_not_sent: int  # the mock got it, but the status is not sent
    why_not_sent: dict[str, int] = field(default_factory=dict)  # "status: reason" -> rows

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def pending(self) -> int:
        return sum(self.statuses.get(s, 0) for s in DeliveryStatus.PENDING)


def witness(engine: Engine) -> Witness:
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
            ).all()
        )
        total, distinct = conn.execute(
            select(func.count(), func.count(MockMessage.delivery_id.distinct()))  # type: ignore[attr-defined]
        ).one()
        sent_ids = select(Delivery.id).where(Delivery.status == DeliveryStatus.SENT)  # type: ignore[arg-type]
        recorded = select(MockMessage.delivery_id)
        sent_without = conn.execute(
            select(func.count()).select_from(sent_ids.except_(recorded).subquery())
        ).scalar_one()
        recorded_not_sent = conn.execute(
            select(func.count()).select_from(recorded.except_(sent_ids).subquery())
        ).scalar_one()
        why = conn.execute(
            select(Delivery.status, Delivery.reason, func.count())  # type: ignore[call-overload]
            .where(Delivery.status != DeliveryStatus.SENT)
            .group_by(Delivery.status, Delivery.reason)
        ).all()
    return Witness(
        statuses=statuses,
        mock_messages=int(total),
        mock_distinct=int(distinct),
        duplicates=int(total) - int(distinct),
        sent_without_record=int(sent_without),
        recorded_not_sent=int(recorded_not_sent),
        why_not_sent={f"{status}: {reason}": int(count) for status, reason, count in why},
    )


def pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(
                    Delivery.status.in_(DeliveryStatus.PENDING)  # type: ignore[attr-defined]
                )
            ).scalar_one()
        )


def live_workers(engine: Engine, stale_s: float = 30.0) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Worker.id, Worker.claimed_total, Worker.sent_total).where(  # type: ignore[call-overload]
                Worker.stopped_at.is_(None),  # type: ignore[union-attr]
                Worker.last_seen_at >= now() - timedelta(seconds=stale_s),
            )
        ).all()
    return {r.id: {"claimed": r.claimed_total, "sent": r.sent_total} for r in rows}


def worker_totals(engine: Engine) -> dict[str, dict[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Worker.id, Worker.claimed_total, Worker.sent_total)).all()  # type: ignore[call-overload]
    return {r.id: {"claimed": r.claimed_total, "sent": r.sent_total} for r in rows}


def release_template(engine: Engine, template_id: int) -> None:
    """Make one template's parked deliveries due now."""
    at = func.now()
    with engine.begin() as conn:
        conn.execute(
            update(Delivery)
            .where(Delivery.template_id == template_id)  # type: ignore[arg-type]
            .values(due_at=at, run_at=at)
        )


def template_outcomes(engine: Engine, template_id: int) -> dict[tuple[str, str | None], int]:
    """(status, reason) -> count for one template's deliveries."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.status, Delivery.reason, func.count())  # type: ignore[call-overload]
            .where(Delivery.template_id == template_id)
            .group_by(Delivery.status, Delivery.reason)
        ).all()
    return {(r[0], r[1]): r[2] for r in rows}


def backends_gone(engine: Engine, worker_id: str, timeout: float = 10.0) -> None:
    """Wait until no PostgreSQL backend of ``worker_id`` is left. A worker killed
    with -9 may have sent a COMMIT its backend is still carrying out: read the
    rows it held only once that has landed."""
    if engine.dialect.name != "postgresql":
        return

    def gone() -> bool:
        with engine.connect() as conn:
            return not conn.execute(
                text("SELECT 1 FROM pg_stat_activity WHERE application_name = :name"),
                {"name": worker_id},
            ).first()

    wait_until(gone, timeout, interval=0.02, what=f"the backends of {worker_id} gone")


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "") -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not {what or predicate} within {timeout:.0f} s")
        time.sleep(interval)


# -- worker processes --------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    worker_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the graceful exit; returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None


def start_worker(
    database_url: str, worker_id: str, workdir: Path, **settings: Any
) -> WorkerProcess:
    """``sopbot worker`` in its own process. ``settings`` become ``SOPBOT_*``
    variables (defaults: tick 0.1 s, heartbeat 0.5 s). Its backends carry
    ``application_name = worker_id`` (PGAPPNAME)."""
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "tick_seconds": 0.1,
        "heartbeat_seconds": 0.5,
        "worker_stale_seconds": 10,
        "plan_interval_seconds": 3600,
        "task_poll_seconds": 3600,
        "log_format": "json",
    }
    values.update(settings)
    env = cli_env(database_url, **values)
    env["PGAPPNAME"] = worker_id
    log_path = workdir / f"{worker_id.replace(':', '_')}.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        sopbot_command("worker"),
        env=env,
        cwd=workdir,  # no stray .env file from the repository
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return WorkerProcess(worker_id, process, log_path, log_file)


@contextlib.contextmanager
def workers(
    database_url: str, engine: Engine, count: int, workdir: Path, prefix: str = "w", **settings: Any
) -> Iterator[list[WorkerProcess]]:
    """``count`` workers, returned once each has sent its first heartbeat;
    stopped with SIGTERM (then killed, if need be) on the way out."""
    procs = [
        start_worker(database_url, f"{prefix}{i + 1}", workdir, **settings) for i in range(count)
    ]
    try:
        ids = {p.worker_id for p in procs}

        def all_live() -> bool:
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"worker {p.worker_id} exited:\n{p.output()[-3000:]}")
            return ids <= live_workers(engine).keys()

        wait_until(all_live, 60, what="every worker live")
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate(timeout=30)
            p.close()


# -- deliveries by status ------------------------------------------------------------------------


def ids_by_status(engine: Engine, *statuses: str) -> set[int]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(Delivery.id).where(Delivery.status.in_(statuses))  # type: ignore[attr-defined]
            ).scalars()
        )


def statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
            ).all()
        )


# -- a slow webhook receiver ---------------------------------------------------------------------


class SlowWebhook:
    """A local HTTP server for the webhook channel: every POST is answered
    ``200 {"id": ...}`` after ``delay_s``, and counted by its ``Idempotency-Key``
    (and the ``delivery_id`` of its body). ``answered`` holds the deliveries whose
    answer was written in full: what the channel accepted.

    A thread per request (``ThreadingHTTPServer``), so requests in flight are
    bounded by the senders, not by the server."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.posts: Counter[str] = Counter()  # Idempotency-Key -> POSTs received
        self.delivery_of: dict[str, int] = {}  # Idempotency-Key -> delivery id
        self.answered: set[int] = set()  # delivery ids answered 200
        self.first_post_at: float | None = None
        self.last_answer_at: float | None = None
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("Idempotency-Key", "")
                delivery_id = int(json.loads(body)["delivery_id"])
                with receiver._lock:
                    receiver.posts[key] += 1
                    receiver.delivery_of[key] = delivery_id
                    if receiver.first_post_at is None:
                        receiver.first_post_at = time.monotonic()
                time.sleep(receiver.delay_s)
                answer = json.dumps({"id": f"wh-{delivery_id}"}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    self.wfile.flush()
                except OSError:  # the sender gave up (timeout, process stopped)
                    return
                with receiver._lock:
                    receiver.answered.add(delivery_id)
                    receiver.last_answer_at = time.monotonic()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512  # every sender's connections at once

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a sender that went away mid-request is part of the faults

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    @property
    def duplicates(self) -> dict[str, int]:
        """Keys POSTed more than once, with their counts."""
        with self._lock:
            return {k: c for k, c in self.posts.items() if c > 1}

    def posted_ids(self) -> set[int]:
        with self._lock:
            return set(self.delivery_of.values())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def add_webhook_channel(engine: Engine, name: str, url: str, **config: Any) -> None:
    with session_scope(engine) as session:
        ensure_instance(session, name, "webhook", {"url": url, **config})
