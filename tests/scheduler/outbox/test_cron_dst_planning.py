"""The cron planner on a fall-back night: each occurrence written once, and a
tick's work bounded (it once found the same instant 100,000 times)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from factories import deliveries, enroll, publish, store_menu_spec

from scheduler.outbox import service as scheduler_service
from sopbot.db import session_scope

LONDON = ZoneInfo("Europe/London")
GROUPS = 3000


def test_the_fall_back_night_plans_each_group_once_and_every_tick_is_quick(engine):
    evening = datetime(2027, 10, 30, 22, 0, tzinfo=UTC)
    spec = store_menu_spec(timezone="Europe/London", touchpoints=[
        {"name": "night", "timing": "cron 30 1 * * *", "content": "{{ group.name }}"}
    ])  # fmt: skip
    template_id = publish(engine, spec, evening)
    enroll(engine, template_id, [(n, evening) for n in range(1, GROUPS + 1)], evening)
    ticks = []
    now = evening
    while now < datetime(2027, 10, 31, 3, 0, tzinfo=UTC):  # through both 01:30s
        started = time.thread_time()  # CPU time: the bound holds on a busy machine
        with session_scope(engine) as session:
            scheduler_service.plan_cron(
                session, now, lookahead=timedelta(minutes=2), catch_up=timedelta(days=7)
            )
        ticks.append(time.thread_time() - started)
        now += timedelta(minutes=1)
    rows = deliveries(engine)
    per_group = Counter(row.target_id for row in rows)
    assert len(per_group) == GROUPS and set(per_group.values()) == {1}
    assert {row.due_at.replace(tzinfo=UTC).astimezone(LONDON).isoformat() for row in rows} == {
        "2027-10-31T01:30:00+01:00"
    }
    assert max(ticks) < 1.0, f"slowest planner tick {max(ticks):.3f} s of CPU"
