"""The template list's figures, kept cheap to read on a large outbox: its
delivery counts and each SOP's next send (with its recipients).

Both scan every pending row of a burst. On a small workspace that takes a few
milliseconds and each request reads afresh. Once a read took longer than
``slow_seconds`` and covered at least ``min_rows`` deliveries (a burst of a
hundred thousand being sent), requests are answered from the last read, at
most ``max_age_seconds`` old, while one background thread reads again: a
page never waits for the scan, and the figures lag by a few seconds at most.
Names and statuses are always read fresh; only these figures come from the
snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session

from scheduler.analytics import calendar
from scheduler.analytics.stats.figures import Counts
from scheduler.analytics.stats.report import overview_counts
from sopbot.sql import read_snapshot

log = logging.getLogger("sopbot.stats")

T = TypeVar("T")


class SlowReadSnapshot(Generic[T]):
    """Per process: the last result of ``read(session, now)`` and when it was
    read."""

    what = "the template list's figures"

    def __init__(
        self,
        engine: Engine,
        read: Callable[[Session, datetime], T],
        *,
        slow_seconds: float = 0.02,
        min_rows: int = 10_000,
        rows: Callable[[T], int] | None = None,
        max_age_seconds: float = 3.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rows(value)``: how many deliveries a read covered (a read of fewer
        than ``min_rows`` is never slow: a small workspace always reads afresh,
        however busy the machine); without it every read counts."""
        self._engine = engine
        self._reader = read
        self._slow = slow_seconds
        self._min_rows = min_rows
        self._rows = rows
        self._max_age = max_age_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._value: T | None = None
        self._read_at = 0.0
        self._took = 0.0
        self._refreshing = False

    def get(self, now: datetime) -> T:
        with self._lock:
            cached, fast = self._value, self._took < self._slow
            stale = self._monotonic() - self._read_at > self._max_age
            if cached is not None and not fast and stale and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, args=(now,), daemon=True).start()
        if cached is None or fast:
            return self._read(now)
        return cached

    def _read(self, now: datetime) -> T:
        started = self._monotonic()
        with Session(read_snapshot(self._engine)) as session:
            value = self._reader(session, now)
        ended = self._monotonic()
        took = ended - started
        if self._rows is not None and self._rows(value) < self._min_rows:
            took = 0.0  # small: quick, whatever the clock said
        with self._lock:
            self._value, self._read_at, self._took = value, ended, took
        return value

    def _refresh(self, now: datetime) -> None:
        try:
            self._read(now)
        except Exception:  # noqa: BLE001 - the next request tries again
            log.exception("could not read %s", self.what)
        finally:
            with self._lock:
                self._refreshing = False


class CountsSnapshot(SlowReadSnapshot[dict[int, Counts]]):
    """The list's delivery counts per template."""

    what = "the template list's delivery counts"

    def __init__(self, engine: Engine, **options: Any) -> None:
        super().__init__(
            engine,
            lambda session, now: overview_counts(session, now=now),
            rows=lambda counts: sum(c.deliveries for c in counts.values()),
            **options,
        )

    def counts(self, now: datetime) -> dict[int, Counts]:
        return self.get(now)


class NextSendsSnapshot(SlowReadSnapshot[dict[int, calendar.CalendarSend]]):
    """Each live template's next send (``calendar.next_sends``)."""

    what = "the template list's next sends"

    def __init__(self, engine: Engine, **options: Any) -> None:
        super().__init__(
            engine,
            calendar.next_sends,
            rows=lambda sends: sum(send.count for send in sends.values()),
            **options,
        )
