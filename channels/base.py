"""The channel adapter protocol.

An adapter has a name, a pydantic config model, declared capabilities and one
async method that sends a batch of outbound messages and returns exactly one
``SendResult`` per message, in order. Everything else (claiming, retries,
statuses) belongs to the scheduler.

Two operations are optional and declared in :class:`Capabilities`: a live
``check_connection`` (:class:`ConnectionChecker`) and ``poll_task_outcomes`` for
platforms whose sends create tasks resolved later (:class:`TaskOutcomePoller`).
Callers ask :func:`connection_checker` / :func:`task_poller`, which read the
declaration; the conformance test holds every adapter to what it declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol, cast, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Engine

from sopbot.clock import Clock

PartKind = Literal["text", "image", "link", "miniprogram", "file", "video"]
TargetKind = Literal["contact", "group", "staff"]  # staff: a digest to the staff member
ExecutionMode = Literal["send", "task", "remind", "welcome", "moment"]
TaskStatus = Literal["sent", "pending", "failed", "skipped"]


class ResultStatus(StrEnum):
    SENT = "sent"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    SKIPPED = "skipped"  # nothing sent, by the touchpoint's own rule (e.g. welcome fallback)


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One rendered delivery, ready for a platform."""

    delivery_id: int
    idempotency_key: str  # stable per delivery: "d<id>"
    target_kind: TargetKind
    target_external_id: str
    account_external_id: str | None
    parts: list[dict[str, Any]]  # rendered content parts, e.g. {"kind": "text", "text": "..."}
    mode: ExecutionMode = "send"
    target_name: str | None = None
    template_name: str | None = None
    touchpoint_name: str | None = None
    # Mode-specific settings of the touchpoint and target (welcome code, fallback,
    # moment visibility); empty for send/task/remind.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    status: ResultStatus
    provider_message_id: str | None = None
    error: str | None = None  # a reason a person can read
    retry_after: float | None = None  # seconds, when the platform says so
    note: str | None = None  # what a sent result means, for the delivery log

    @classmethod
    def sent(cls, provider_message_id: str | None = None) -> SendResult:
        return cls(ResultStatus.SENT, provider_message_id=provider_message_id)

    @classmethod
    def retryable(cls, error: str, retry_after: float | None = None) -> SendResult:
        return cls(ResultStatus.RETRYABLE, error=error, retry_after=retry_after)

    @classmethod
    def permanent(cls, error: str) -> SendResult:
        return cls(ResultStatus.PERMANENT, error=error)

    @classmethod
    def skipped(cls, reason: str) -> SendResult:
        return cls(ResultStatus.SKIPPED, error=reason)


@dataclass(frozen=True)
class Capabilities:
    parts: frozenset[str] = frozenset({"text", "image", "link", "miniprogram", "file"})
    targets: frozenset[str] = frozenset({"contact", "group"})
    modes: frozenset[str] = frozenset({"send"})
    # True when the platform itself drops a second send with the same idempotency
    # key; then a delivery whose worker died mid-send may safely be sent again.
    idempotent: bool = False
    max_batch: int = 100
    # Optional operations the adapter implements (see the protocols below).
    connection_check: bool = False  # ConnectionChecker: check without sending
    task_outcomes: bool = False  # TaskOutcomePoller: resolve tasks a send created


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What happened to one customer or group of a platform's mass-send task."""

    status: TaskStatus
    reason: str | None = None
    send_time: int | None = None  # unix seconds, when the platform reports it


# Declares a URL field whose user info and query may carry credentials: shown
# with those masked (``Field(json_schema_extra=URL_CREDENTIALS)``).
URL_CREDENTIALS: dict[str, Any] = {"url_credentials": True}


class AdapterConfig(BaseModel):
    """Base for adapter config models. Mark secrets with ``SecretStr`` (also as
    list items or dict values), URLs that may embed credentials with
    ``URL_CREDENTIALS``."""

    # Inputs stay out of validation errors: they may hold a secret.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


@dataclass
class AdapterContext:
    """What the runtime lends an adapter: shared HTTP client, database, clock."""

    http: httpx.AsyncClient
    engine: Engine
    clock: Clock
    instance_name: str = "default"
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ChannelAdapter(Protocol):
    name: ClassVar[str]
    config_model: ClassVar[type[AdapterConfig]]
    capabilities: ClassVar[Capabilities]

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Send a batch; return one result per message, in the same order."""
        ...


class ConnectionChecker(Protocol):
    """Declared by ``Capabilities.connection_check``."""

    async def check_connection(self) -> str:
        """Prove the config works without sending anything; return what was
        checked. Raise with a reason a person can act on when it does not."""
        ...


class TaskOutcomePoller(Protocol):
    """Declared by ``Capabilities.task_outcomes``."""

    async def poll_task_outcomes(self, task_id: str, sender: str) -> dict[str, TaskOutcome]:
        """Per target external id: what became of the task ``task_id`` that
        ``sender`` (a staff account) was asked to send."""
        ...


def connection_checker(adapter: ChannelAdapter) -> ConnectionChecker | None:
    """The adapter's live check, if it declares one."""
    return cast(ConnectionChecker, adapter) if adapter.capabilities.connection_check else None


def task_poller(adapter: ChannelAdapter) -> TaskOutcomePoller | None:
    """The adapter's task-outcome poll, if it declares one."""
    return cast(TaskOutcomePoller, adapter) if adapter.capabilities.task_outcomes else None


class AdapterFactory(Protocol):
    def __call__(self, config: Any, context: AdapterContext) -> ChannelAdapter: ...


class ChannelError(Exception):
    """A channel is misconfigured or unknown; the message says what to fix."""
