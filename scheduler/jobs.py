"""What a background job is. Each domain declares its own jobs next to its code
(``scheduler/<domain>/jobs.py``); ``scheduler.runtime`` only collects and runs
them. Every job is safe to run in any number of processes at once: whatever it
coordinates, it coordinates in the database."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from channels.registry import ChannelPool
    from scheduler.operations.heartbeat import Heartbeat
    from scheduler.operations.metrics import DispatchMetrics
    from scheduler.outbox.dispatch import Dispatcher
    from sopbot.clock import Clock
    from sopbot.settings import Settings
    from sopbot.workspace import WorkspaceWatch


class JobContext(Protocol):
    """What a job may use: the runtime's shared parts."""

    engine: Engine
    clock: Clock
    settings: Settings
    channels: ChannelPool
    worker_id: str
    dispatcher: Dispatcher
    heartbeat: Heartbeat
    metrics: DispatchMetrics | None
    workspace: WorkspaceWatch


@dataclass(frozen=True)
class Job:
    """One interval job: a fixed id (APScheduler's memory store, replaced on
    restart), its interval in seconds from the settings (0 switches it off),
    and the coroutine to run each time."""

    id: str
    interval: Callable[[Settings], float]
    run: Callable[[JobContext], Awaitable[Any]]
