"""The template list's figures (delivery counts, next sends) are read afresh
while reading is quick; once a read is slow, pages get the last one (at most
``max_age_seconds`` old) while one background thread reads again. Time is an
injected monotonic clock; the slow read is simulated by moving it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from scheduler.analytics.stats.snapshot import SlowReadSnapshot

NOW = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


class Reads:
    def __init__(self) -> None:
        self.t = 0.0
        self.calls = 0
        self.took = 0.0  # how long the next read "takes"
        self.done = threading.Event()

    def monotonic(self) -> float:
        return self.t

    def read(self, session, now) -> int:  # type: ignore[no-untyped-def]
        self.calls += 1
        self.t += self.took
        self.done.set()
        return self.calls


def test_quick_reads_are_fresh_and_a_slow_one_is_served_from_the_snapshot(engine) -> None:
    reads = Reads()
    snapshot = SlowReadSnapshot(engine, reads.read, monotonic=reads.monotonic)
    assert [snapshot.get(NOW), snapshot.get(NOW)] == [1, 2]  # quick: each request reads
    reads.took = 1.0
    assert snapshot.get(NOW) == 3  # this one was slow
    reads.took = 0.0
    assert snapshot.get(NOW) == 3  # served from the snapshot, no read
    assert reads.calls == 3
    reads.t += 5.0  # older than max_age: one background read, the page is not kept waiting
    reads.done.clear()
    assert snapshot.get(NOW) == 3
    assert reads.done.wait(5)
    assert reads.calls == 4


def test_a_slow_read_of_a_small_workspace_is_never_served_from_the_snapshot(engine) -> None:
    """However long the clock says a read took (a busy machine), figures that
    cover fewer than ``min_rows`` deliveries are read afresh for each request."""
    reads = Reads()
    size = {"rows": 10}
    snapshot = SlowReadSnapshot(
        engine, reads.read, monotonic=reads.monotonic, min_rows=100, rows=lambda _: size["rows"]
    )
    reads.took = 1.0
    assert [snapshot.get(NOW), snapshot.get(NOW)] == [1, 2]  # slow but small: fresh
    size["rows"] = 100
    assert snapshot.get(NOW) == 3  # slow and large
    reads.took = 0.0
    assert snapshot.get(NOW) == 3  # from the snapshot
