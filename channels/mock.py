"""The mock channel: a real adapter that delivers into a table.

It is registered like every other adapter, persists every message it accepts
(``mock_messages``), and can be told to fail (retryable or permanent), to fail
only for some targets or every Nth call, or to be slow. Tests, the demo and the
benchmark use it; its table is the witness that nothing was sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field
from sqlalchemy import insert

from channels.base import AdapterConfig, AdapterContext, Capabilities, OutboundMessage, SendResult
from channels.models import MockMessage


class MockConfig(AdapterConfig):
    fail_mode: Literal["none", "retryable", "permanent"] = Field(
        "none", description="fail every message this way (or only fail_targets)"
    )
    fail_targets: list[str] = Field(default_factory=list, description="external ids that fail")
    latency_ms: float = Field(0.0, ge=0, description="simulated time per batch call")
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
        if self.config.latency_ms:
            await asyncio.sleep(self.config.latency_ms / 1000)
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
        if accepted and self.config.persist:
            await asyncio.to_thread(self._persist, accepted)
        return results

    def _persist(self, messages: list[OutboundMessage]) -> None:
        now = self.context.clock.now()
        rows = [
            {
                "instance": self.context.instance_name,
                "delivery_id": m.delivery_id,
                "idempotency_key": m.idempotency_key,
                "target_kind": m.target_kind,
                "target_external_id": m.target_external_id,
                "account_external_id": m.account_external_id,
                "mode": m.mode,
                "parts": m.parts,
                "received_at": now,
            }
            for m in messages
        ]
        with self.context.engine.begin() as conn:
            conn.execute(insert(MockMessage), rows)
