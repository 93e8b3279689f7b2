"""The template list's delivery counts, kept cheap to read on a large outbox.

Counting the live deliveries scans every recent and pending row. On a small
workspace that takes a few milliseconds and each request counts afresh. Once a
count took longer than ``slow_seconds`` (hundreds of thousands of rows, or a
burst being sent), requests are answered from the last count, at most
``max_age_seconds`` old, while one background thread counts again: a page never
waits for the scan, and the figures lag by a few seconds at most. Names and
statuses are always read fresh; only the counts come from the snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from scheduler.analytics.stats.figures import Counts
from scheduler.analytics.stats.report import overview_counts
from sopbot.sql import read_snapshot

log = logging.getLogger("sopbot.stats")


class CountsSnapshot:
    """Per process: the last ``overview_counts`` and when it was read."""

    def __init__(
        self,
        engine: Engine,
        *,
        slow_seconds: float = 0.05,
        max_age_seconds: float = 3.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._slow = slow_seconds
        self._max_age = max_age_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._counts: dict[int, Counts] | None = None
        self._read_at = 0.0
        self._took = 0.0
        self._refreshing = False

    def counts(self, now: datetime) -> dict[int, Counts]:
        with self._lock:
            cached, fast = self._counts, self._took < self._slow
            stale = self._monotonic() - self._read_at > self._max_age
            if cached is not None and not fast and stale and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, args=(now,), daemon=True).start()
        if cached is None or fast:
            return self._read(now)
        return cached

    def _read(self, now: datetime) -> dict[int, Counts]:
        started = self._monotonic()
        with Session(read_snapshot(self._engine)) as session:
            counts = overview_counts(session, now=now)
        ended = self._monotonic()
        with self._lock:
            self._counts, self._read_at, self._took = counts, ended, ended - started
        return counts

    def _refresh(self, now: datetime) -> None:
        try:
            self._read(now)
        except Exception:  # noqa: BLE001 - the next request tries again
            log.exception("could not count deliveries for the template list")
        finally:
            with self._lock:
                self._refreshing = False
