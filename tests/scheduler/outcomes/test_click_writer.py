"""The click writer: clicks answered before they are written are never lost on
a clean stop, and a database that cannot be written keeps them queued."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from benchmarks.redirect import seed
from scheduler.flows.clicks import ClickRecorder
from scheduler.outcomes import links
from scheduler.outcomes.models import LinkClick
from sopbot.db import session_scope

SH = ZoneInfo("Asia/Shanghai")
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) wxwork/4.1.20"


def _rows(engine) -> int:
    with session_scope(engine) as session:
        return session.execute(select(func.count()).select_from(LinkClick)).scalar_one()


def test_a_clean_stop_writes_every_queued_click(engine, clock):
    clock.set(datetime(2027, 3, 1, 10, 0, tzinfo=SH))
    cache = links.LinkCache(engine)
    tokens = seed(engine, 50)
    recorder = ClickRecorder(engine, clock, flush_seconds=60)  # never on its own here
    recorder.start()
    for token in tokens * 2:
        recorder.opened(cache.lookup(token), clock.now(), BROWSER)  # type: ignore[arg-type]
    assert recorder.pending == 100 and _rows(engine) == 0
    recorder.stop()
    assert recorder.pending == 0 and _rows(engine) == 100
    with session_scope(engine) as session:
        repeats = session.execute(
            select(func.count()).select_from(LinkClick).where(LinkClick.repeat)
        ).scalar_one()
    assert repeats == 50  # each link's second click


def test_a_database_that_cannot_be_written_keeps_the_clicks(engine, clock, monkeypatch):
    clock.set(datetime(2027, 3, 1, 10, 0, tzinfo=SH))
    cache = links.LinkCache(engine)
    [token] = seed(engine, 1)
    recorder = ClickRecorder(engine, clock, flush_seconds=60)
    recorder.opened(cache.lookup(token), clock.now(), BROWSER)  # type: ignore[arg-type]
    write = recorder._write

    def down(batch):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(recorder, "_write", down)
    with pytest.raises(OperationalError):
        recorder.flush()
    assert recorder.pending == 1 and _rows(engine) == 0
    monkeypatch.setattr(recorder, "_write", write)
    assert recorder.flush() == 1 and _rows(engine) == 1
