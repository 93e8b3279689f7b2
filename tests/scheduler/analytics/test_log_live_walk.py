"""Walking the delivery log page by page while the worker keeps sending: every
row that existed when the walk began is listed exactly once, in every sort the
log offers (a row sent mid-walk must not drop out of the sent-time sort)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from analytics_world import Row, World, build_world

from scheduler.outbox.repository import DELIVERIES

NOW = datetime(2027, 3, 20, 4, 0, tzinfo=UTC)


@pytest.fixture
def world(engine, clock) -> World:
    clock.set(NOW)
    world = build_world(engine, NOW)
    targets = world.contacts + world.groups
    for day in range(4):  # sent history, every target
        for i, target in enumerate(targets):
            world.add(
                target,
                due_at=NOW - timedelta(days=4 - day, hours=i),
                late=timedelta(seconds=i),
            )
    for i in range(40):  # due now, waiting for the worker
        world.add(targets[i % len(targets)], status="scheduled", due_at=NOW - timedelta(minutes=i))
    return world


def _send(world: World, row: Row, *, sent_at: datetime, finished_at: datetime) -> None:
    with world.engine.begin() as conn:
        conn.execute(
            DELIVERIES.update()
            .where(DELIVERIES.c.id == row.id)
            .values(
                status="sent",
                sent_at=sent_at,
                finished_at=finished_at,
                attempts=1,
                provider_message_id=f"mock-{row.id}",
            )
        )


@pytest.mark.parametrize(
    ("sort", "order"),
    [("sent_at", "desc"), ("sent_at", "asc"), ("due_at", "desc"), ("due_at", "asc")],
)
def test_rows_sent_during_a_walk_are_listed_once(world, client, clock, sort, order):
    existing = [r.id for r in world.rows]
    waiting = [r for r in world.rows if r.status == "scheduled"]
    sent_during_walk = 0
    seen: list[int] = []
    params: dict[str, Any] = {"sort": sort, "order": order, "limit": 4}
    for _ in range(200):
        response = client.get("/api/deliveries", params=params)
        assert response.status_code == 200, response.text
        seen += [entry["id"] for entry in response.json()]
        cursor = response.headers.get("x-next-cursor")
        if not cursor:
            break
        params["cursor"] = cursor
        # Between two page requests the worker sends two rows, and staff
        # confirm a mass-send task whose message went out an hour ago.
        now = clock.advance(seconds=7)
        for row in waiting[:2]:
            _send(world, row, sent_at=now, finished_at=now)
        if len(waiting) > 2:
            _send(world, waiting[2], sent_at=now - timedelta(hours=1), finished_at=now)
        sent_during_walk += len(waiting[:3])
        waiting = waiting[3:]
    else:
        raise AssertionError("pagination did not end")
    assert sent_during_walk >= 20
    repeated = sorted({i for i in seen if seen.count(i) > 1})
    assert repeated == [], f"listed twice: {repeated}"
    skipped = sorted(set(existing) - set(seen))
    assert skipped == [], f"{len(skipped)} of {len(existing)} rows never listed: {skipped}"


def test_a_page_of_the_sent_time_sort_lists_rows_sent_since_the_walk_began_after_the_sent_ones(
    world, client, clock
):
    first = client.get("/api/deliveries", params={"sort": "sent_at", "limit": 3})
    waiting = [r for r in world.rows if r.status == "scheduled"]
    now = clock.advance(minutes=1)
    _send(world, waiting[0], sent_at=now, finished_at=now)
    rest = client.get(
        "/api/deliveries",
        params={"sort": "sent_at", "limit": 1000, "cursor": first.headers["x-next-cursor"]},
    ).json()
    ids = [entry["id"] for entry in rest]
    # the row just sent is among the rows that were unsent when the walk began,
    # in id order, showing its new status
    unsent_part = [e for e in rest if e["id"] in {r.id for r in waiting}]
    assert [e["id"] for e in unsent_part] == sorted((r.id for r in waiting), reverse=True)
    sent_now = next(e for e in rest if e["id"] == waiting[0].id)
    assert sent_now["status"] == "sent"
    assert ids.index(waiting[0].id) > max(
        ids.index(e["id"]) for e in rest if e["id"] not in {r.id for r in waiting}
    )
    # a new walk lists it by its send time, first
    clock.advance(seconds=1)
    fresh = client.get("/api/deliveries", params={"sort": "sent_at", "limit": 1}).json()
    assert fresh[0]["id"] == waiting[0].id
