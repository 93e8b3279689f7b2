"""Prometheus metrics. Nothing is registered globally: ``create_app`` (or a
worker) builds a ``CollectorRegistry`` and hands it to ``DispatchMetrics`` (what
this process dispatched: histograms and counters) and ``DatabaseCollector``
(what the database says about the whole deployment, read at scrape time with a
short cache).

In a scale-out deployment scrape the API for the database-wide figures and each
``sopbot worker`` (``SOPBOT_METRICS_PORT``) for its own dispatch histograms.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scheduler.operations import heartbeat
from scheduler.outbox.dispatch import DispatchStats
from scheduler.outbox.models import Delivery, DeliveryStatus
from sopbot import __version__
from sopbot.clock import Clock
from sopbot.db import reader

log = logging.getLogger("sopbot.metrics")

BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LATENESS_BUCKETS = (
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    3 * 3600.0,
    6 * 3600.0,
    24 * 3600.0,
)


class DispatchMetrics:
    """What this process's dispatcher did, as Prometheus histograms and counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_seconds = Histogram(
            "sopbot_dispatch_batch_seconds",
            "Seconds from claiming a batch of deliveries to recording every outcome.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.lateness = Histogram(
            "sopbot_delivery_lateness_seconds",
            "Seconds between a delivery's due time and the moment it was sent.",
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )
        self.dispatched = Counter(
            "sopbot_dispatched",
            "Claimed deliveries by the outcome this process recorded.",
            ["outcome"],
            registry=registry,
        )
        self.channel_errors = Counter(
            "sopbot_channel_errors",
            "Channel adapter errors by channel instance and kind (retryable, permanent, unknown).",
            ["channel", "kind"],
            registry=registry,
        )
        self.reaped = Counter(
            "sopbot_leases_reaped",
            "Expired leases resolved: released (claimed, back to scheduled), "
            "resent (idempotent channel) or unknown (worker died mid-send).",
            ["result"],
            registry=registry,
        )

    def observe(self, stats: DispatchStats) -> None:
        for seconds in stats.batch_seconds:
            self.batch_seconds.observe(seconds)
        for seconds in stats.lateness:
            self.lateness.observe(max(0.0, seconds))
        for outcome, n in stats.outcomes.items():
            self.dispatched.labels(outcome=outcome).inc(n)
        for (channel, kind), n in stats.channel_errors.items():
            self.channel_errors.labels(channel=channel, kind=kind).inc(n)

    def observe_reap(self, reaped: dict[str, int]) -> None:
        for result, n in reaped.items():
            if n:
                self.reaped.labels(result=result).inc(n)


class DatabaseCollector(Collector):
    """Deployment-wide figures read from the database at scrape time.

    The queries are cheap (a GROUP BY on the status index, a range count, the
    workers table, the breakers table) and their result is reused for
    ``cache_seconds`` so several scrapers, or several API processes, do not
    multiply the load."""

    def __init__(
        self, engine: Engine, clock: Clock, *, stale: timedelta, cache_seconds: float = 5.0
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.stale = stale
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: list[Metric] | None = None
        self._cached_at = 0.0

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            fresh = (
                self._cached is not None and time.monotonic() - self._cached_at < self.cache_seconds
            )
            if not fresh:
                self._cached = self._read()
                self._cached_at = time.monotonic()
            metrics = list(self._cached or [])
        yield from metrics

    def describe(self) -> Iterator[Metric]:
        # Describing without reading keeps registering cheap (no query at start-up).
        return iter(())

    def _read(self) -> list[Metric]:
        now = self.clock.now()
        info = GaugeMetricFamily("sopbot_info", "sopbot version.", labels=["version"])
        info.add_metric([__version__], 1)
        up = GaugeMetricFamily(
            "sopbot_database_up", "1 when the database answered this scrape's queries."
        )
        try:
            with Session(reader(self.engine)) as session:
                metrics = self._queries(session, now)
        except Exception:  # noqa: BLE001 - a scrape must answer even when the database does not
            log.exception("metrics: database queries failed")
            up.add_metric([], 0)
            return [info, up]
        up.add_metric([], 1)
        return [info, up, *metrics]

    def _queries(self, session: Session, now: Any) -> list[Metric]:
        by_status = GaugeMetricFamily(
            "sopbot_deliveries", "Deliveries in the outbox by status.", labels=["status"]
        )
        counts: dict[str, int] = dict(
            session.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
            ).all()
        )
        for status in DeliveryStatus.ALL:
            by_status.add_metric([status], counts.get(status, 0))
        for status, n in counts.items():
            if status not in DeliveryStatus.ALL:
                by_status.add_metric([status], n)

        due, oldest = heartbeat.backlog(session, now)
        backlog = GaugeMetricFamily(
            "sopbot_backlog", "Deliveries due now and not yet claimed by a worker."
        )
        backlog.add_metric([], due)
        overdue = GaugeMetricFamily(
            "sopbot_oldest_overdue_seconds",
            "How long the oldest due, unclaimed delivery has waited (0 when none).",
        )
        overdue.add_metric([], oldest.overdue_seconds if oldest else 0.0)

        workers = heartbeat.list_workers(session, now, self.stale)
        live = GaugeMetricFamily(
            "sopbot_workers_live", "Scheduler processes with a recent heartbeat."
        )
        live.add_metric([], len(workers))
        claimed = CounterMetricFamily(
            "sopbot_worker_claimed",
            "Deliveries claimed by each live worker since it started (from its heartbeat).",
            labels=["worker"],
        )
        sent = CounterMetricFamily(
            "sopbot_worker_sent",
            "Deliveries sent by each live worker since it started (from its heartbeat).",
            labels=["worker"],
        )
        for worker in workers:
            claimed.add_metric([worker.id], worker.claimed_total)
            sent.add_metric([worker.id], worker.sent_total)
        return [by_status, backlog, overdue, live, claimed, sent, *_breaker_metrics(session)]


def _breaker_metrics(session: Session) -> list[Metric]:
    """Circuit-breaker state per channel instance, where breakers exist."""
    try:
        from channels.models import BreakerState, ChannelBreaker
    except ImportError:  # no breakers in this build
        return []
    table = ChannelBreaker.__table__  # type: ignore[attr-defined]
    state = GaugeMetricFamily(
        "sopbot_channel_breaker_state",
        "Circuit breaker of a channel instance: 1 for its current state.",
        labels=["channel", "state"],
    )
    failures = GaugeMetricFamily(
        "sopbot_channel_breaker_consecutive_failures",
        "Consecutive failed channel calls counted by the breaker.",
        labels=["channel"],
    )
    trips = CounterMetricFamily(
        "sopbot_channel_breaker_trips",
        "How often a channel's breaker opened.",
        labels=["channel"],
    )
    states = (BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN)
    for row in session.execute(select(table)).all():
        for name in states:
            state.add_metric([row.instance, name], 1 if row.state == name else 0)
        failures.add_metric([row.instance], row.consecutive_failures or 0)
        trips.add_metric([row.instance], row.trips or 0)
    return [state, failures, trips]


def build_registry(
    engine: Engine,
    clock: Clock,
    *,
    stale: timedelta,
    cache_seconds: float,
    with_dispatch: bool = True,
) -> tuple[CollectorRegistry, DispatchMetrics]:
    """A fresh registry with the database collector and the dispatch metrics.
    ``with_dispatch=False`` (serve with its scheduler in a child process): the
    registry has only the database figures, and the dispatch metrics returned
    are registered nowhere."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine, clock, stale=stale, cache_seconds=cache_seconds))
    return registry, DispatchMetrics(
        registry if with_dispatch else CollectorRegistry(auto_describe=False)
    )
