"""The mock channel: a real adapter that delivers into a table.

It is registered like every other adapter, persists every message it accepts
(``mock_messages``), and can be told to fail (retryable or permanent), to fail
only for some targets or every Nth call, or to be slow. Tests, the demo and the
benchmark use it; its table is the witness that nothing was sent twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field
from sqlalchemy.engine import Connection

from channels.base import AdapterConfig, AdapterContext, Capabilities, OutboundMessage, SendResult
from channels.models import MockMessage
from sopbot.sql import insert_rows, sqlite_instant


class MockConfig(AdapterConfig):
    fail_mode: Literal["none", "retryable", "permanent"] = Field(
        "none", description="fail every message this way (or only fail_targets)"
    )
    fail_targets: list[str] = Field(default_factory=list, description="external ids that fail")
    latency_ms: float = Field(
        0.0, ge=0, description="simulated time per batch call (messages recorded meanwhile)"
    )
    retry_after_s: float | None = Field(None, ge=0, description="Retry-After on retryable errors")
    persist: bool = Field(True, description="record every accepted message")
    max_batch: int | None = Field(
        None, ge=1, le=1000, description="messages per call (1 = a per-message API); default 1000"
    )


class MockAdapter:
    name: ClassVar[str] = "mock"
    config_model: ClassVar[type[AdapterConfig]] = MockConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=frozenset({"send", "task", "remind"}),
        idempotent=False,
        max_batch=1000,
        connection_check=True,
    )

    def __init__(self, config: MockConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self.calls = 0
        # Calls waiting for their messages to be recorded, and the task writing
        # them (see _record).
        self._queued: list[tuple[list[OutboundMessage], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        if config.max_batch is not None:  # this instance's batch size (benchmarks)
            self.capabilities = replace(type(self).capabilities, max_batch=config.max_batch)  # type: ignore[misc]

    async def check_connection(self) -> str:
        return "mock channel ready (messages are recorded in mock_messages)"

    def _fails(self, message: OutboundMessage) -> bool:
        if self.config.fail_mode == "none":
            return False
        return (
            not self.config.fail_targets or message.target_external_id in self.config.fail_targets
        )

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        self.calls += 1
        results: list[SendResult] = []
        accepted: list[OutboundMessage] = []
        for message in messages:
            if self._fails(message):
                if self.config.fail_mode == "retryable":
                    results.append(
                        SendResult.retryable(
                            "mock: simulated temporary error", self.config.retry_after_s
                        )
                    )
                else:
                    results.append(SendResult.permanent("mock: simulated permanent error"))
            else:
                accepted.append(message)
                results.append(SendResult.sent(f"mock-{message.delivery_id}"))
        # A call takes ``latency_ms`` in all: the messages are recorded while it
        # lasts, as a real channel accepts a message before its answer arrives.
        # (Recording after the wait made a "20 ms" call take 20 ms plus a commit.)
        # So a worker killed inside the call leaves messages the channel has but
        # the worker never heard about: they must end ``unknown``, never resent.
        wait = asyncio.sleep(self.config.latency_ms / 1000) if self.config.latency_ms else None
        if accepted and self.config.persist:
            if wait is None:
                await self._record(accepted)
            else:
                await asyncio.gather(wait, self._record(accepted))
        elif wait is not None:
            await wait
        return results

    async def _record(self, messages: list[OutboundMessage]) -> None:
        """Return once ``messages`` are committed to ``mock_messages``.

        Calls that finish while a write is under way are recorded together in
        the next transaction (a group commit): with a per-message channel and
        many calls in flight, one transaction per call was most of the cost of
        a send. A call still returns only after its own rows are committed, so
        the table stays the truthful witness of what was accepted; if a group
        fails, each of its calls is written on its own, and only a call whose
        own write fails raises."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            self._queued = [(messages, done)]
            self._writer = loop.create_task(self._write_queued())
        else:
            self._queued.append((messages, done))
        await done

    async def _write_queued(self) -> None:
        while self._queued:
            group, self._queued = self._queued, []
            try:
                await asyncio.to_thread(self._persist, [m for ms, _ in group for m in ms])
                failures: list[BaseException | None] = [None] * len(group)
            except Exception as exc:  # noqa: BLE001 - handed to the calls that wait
                if len(group) == 1:
                    failures = [exc]
                else:  # one bad call must not fail the others
                    failures = []
                    for ms, _ in group:
                        try:
                            await asyncio.to_thread(self._persist, ms)
                            failures.append(None)
                        except Exception as own:  # noqa: BLE001
                            failures.append(own)
            for (_, done), failure in zip(group, failures, strict=True):
                if done.done():  # its call was cancelled meanwhile
                    continue
                if failure is None:
                    done.set_result(None)
                else:
                    done.set_exception(failure)

    def _persist(self, messages: list[OutboundMessage]) -> None:
        now = self.context.clock.now()
        instance = self.context.instance_name
        if self.context.engine.dialect.name == "postgresql":
            with self.context.engine.begin() as conn:
                _persist_postgresql(conn, instance, messages, now)
            return
        with self.context.engine.begin() as conn:
            _persist_sqlite(conn, instance, messages, now)


def _persist_postgresql(
    conn: Connection, instance: str, messages: list[OutboundMessage], now: datetime
) -> None:
    """PostgreSQL: the call's messages in one ``INSERT ... SELECT`` over one
    array per column, not a statement per message (which made the mock's own
    record the largest part of the database's work per delivery)."""
    conn.exec_driver_sql(
        _PG_INSERT,
        {
            "instance": instance,
            "received_at": now,
            "delivery_ids": [m.delivery_id for m in messages],
            "keys": [m.idempotency_key for m in messages],
            "kinds": [m.target_kind for m in messages],
            "targets": [m.target_external_id for m in messages],
            "accounts": [m.account_external_id for m in messages],
            "modes": [m.mode for m in messages],
            "parts": [_json(m.parts) for m in messages],
        },
    )


def _persist_sqlite(
    conn: Connection, instance: str, messages: list[OutboundMessage], now: datetime
) -> None:
    """SQLite: the bulk insert of ready rows (``sopbot.sql.insert_rows``: a
    multi-row ``VALUES`` per 500 messages, not one execution per message)."""
    at = sqlite_instant(now)
    rows = [
        (
            instance,
            m.delivery_id,
            m.idempotency_key,
            m.target_kind,
            m.target_external_id,
            m.account_external_id,
            m.mode,
            _json(m.parts),
            at,
        )
        for m in messages
    ]
    insert_rows(conn, MockMessage.__table__, _COLUMNS, rows)  # type: ignore[attr-defined]


_COLUMNS = (
    "instance",
    "delivery_id",
    "idempotency_key",
    "target_kind",
    "target_external_id",
    "account_external_id",
    "mode",
    "parts",
    "received_at",
)


_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# The arrays go in binary (%b): in text each string is quoted and escaped in
# Python, about 10x the client CPU for a call's messages.
_PG_INSERT = """
INSERT INTO mock_messages (instance, delivery_id, idempotency_key, target_kind,
    target_external_id, account_external_id, mode, parts, received_at)
SELECT %(instance)s, m.delivery_id, m.key, m.kind, m.target, m.account, m.mode,
    m.parts::json, %(received_at)s
FROM unnest(%(delivery_ids)b::bigint[], %(keys)b::text[], %(kinds)b::text[],
    %(targets)b::text[], %(accounts)b::text[], %(modes)b::text[], %(parts)b::text[])
    WITH ORDINALITY AS m(delivery_id, key, kind, target, account, mode, parts, n)
ORDER BY m.n
"""
