"""Audience benchmark (not a timed test; kept out of the default run):

    python -m pytest tests/audiences/test_audience_scale.py -m slow -s

* events/s through ``POST /api/events``, batches of 500 ``friend_added`` each
  enrolling into a 5-touchpoint new-friend template (target ≥ 5,000/s on SQLite);
* seconds to publish a fixed-start tagged template over a 100,000-contact
  segment, enrolling everyone (target ≤ 5 s).

Both print one JSON line with the figures and check the outcome, not the time.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import pytest
from audience_helpers import create_and_publish, register_account
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select

from api.app import create_app
from audiences.models import Contact, Tag, TagAssignment
from scheduler.models import Delivery, Enrollment
from sopbot.db import session_scope

pytestmark = pytest.mark.slow
EVENTS = int(os.environ.get("SOPBOT_BENCH_EVENTS", "20000"))
CONTACTS = int(os.environ.get("SOPBOT_BENCH_CONTACTS", "100000"))


def _count(engine, model):
    with session_scope(engine) as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def test_events_per_second_through_the_api(engine, clock, settings, auth_headers):
    clock.set(datetime(2027, 3, 1, 1, 0, tzinfo=UTC))
    register_account(engine, "staff_1")
    touchpoints = [
        {"name": f"t{i}", "timing": f"+{i * 6}h", "content": "{{ contact.name }} 你好"}
        for i in range(5)
    ]
    spec = {
        "name": "bench",
        "target": "contact",
        "segment": {"kind": "new_friends"},
        "touchpoints": touchpoints,
    }
    create_and_publish(engine, spec, clock.now())
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as client:
        batches = [
            [
                {
                    "kind": "friend_added",
                    "id": f"bench-{b}-{i}",
                    "account": "staff_1",
                    "external_id": f"wm_{b}_{i}",
                    "name": "张三",
                }
                for i in range(500)
            ]
            for b in range(EVENTS // 500)
        ]
        started = time.perf_counter()
        for batch in batches:
            response = client.post("/api/events", json=batch)
            assert response.status_code == 200
        elapsed = time.perf_counter() - started
    assert _count(engine, Enrollment) == EVENTS
    assert _count(engine, Delivery) == EVENTS * 5
    print(json.dumps({"events": EVENTS, "events_per_s": round(EVENTS / elapsed), "target": 5000}))


def test_publish_enrolls_a_large_tagged_segment(engine, clock):
    clock.set(datetime(2027, 3, 1, 1, 0, tzinfo=UTC))
    register_account(engine, "staff_1")
    now = clock.now()
    with engine.begin() as conn:
        conn.execute(insert(Tag), [{"name": "spring-class-2027"}, {"name": "purchased"}])
        conn.execute(
            insert(Contact),
            [
                {
                    "external_id": f"wm{i}",
                    "account_id": 1,
                    "name": f"学员{i}",
                    "joined_at": now,
                    "status": "active",
                    "attributes": {"city": "上海" if i % 2 else "杭州"},
                }
                for i in range(CONTACTS)
            ],
        )
        conn.execute(
            insert(TagAssignment),
            [
                {"tag_id": 1, "target_kind": "contact", "target_id": i + 1, "tagged_at": now}
                for i in range(CONTACTS)
            ]
            + [
                {"tag_id": 2, "target_kind": "contact", "target_id": i + 1, "tagged_at": now}
                for i in range(0, CONTACTS, 10)
            ],
        )
    spec = {
        "name": "春季班（固定开课）",
        "target": "contact",
        "anchor": "fixed",
        "start_at": "2027-03-02T09:00:00",
        "segment": {"tags": "spring-class-2027"},
        "exit": {"tags_added": ["purchased"]},
        "touchpoints": [
            {"name": "reminder", "timing": "day 1 20:00", "content": "上课提醒"},
            {"name": "preview", "timing": "day 2 19:30", "content": "预习"},
            {"name": "follow-up", "timing": "day 3 09:00", "content": "回访"},
        ],
    }
    started = time.perf_counter()
    _, result = create_and_publish(engine, spec, now)
    elapsed = time.perf_counter() - started
    expected = CONTACTS - len(range(0, CONTACTS, 10))  # those tagged purchased stay out
    assert result.enrolled == expected
    assert _count(engine, Delivery) == expected * 3
    print(json.dumps({"contacts": CONTACTS, "publish_enroll_s": round(elapsed, 2), "target_s": 5}))
