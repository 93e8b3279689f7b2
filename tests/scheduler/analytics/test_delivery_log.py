"""The delivery log API: filters combine as an analyst expects, keyset pages
never skip or repeat a row while new ones arrive, bad input is a 422 that names
the parameter."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from analytics_world import Row, World, build_world
from fastapi.testclient import TestClient

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2027, 3, 20, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
STATUS_CYCLE = ["sent", "sent", "failed", "skipped", "sent", "missed", "cancelled", "unknown"]
REASONS = {
    "failed": "channel mock returned 400: invalid user",
    "skipped": "frequency cap: 1 per day",
    "missed": "not sent within its grace period",
    "cancelled": "quota 100% used",
    "unknown": "worker stopped while sending",
}


def populate(world: World) -> None:
    """Ten days of deliveries to every target, every status, two channels, a
    burst of rows due at the same instant, and a few still scheduled."""
    n = 0
    for day in range(10):
        for i, target in enumerate(world.contacts + world.groups):
            status = STATUS_CYCLE[n % len(STATUS_CYCLE)]
            n += 1
            world.add(
                target,
                status=status,
                due_at=NOW - timedelta(days=9 - day, hours=i, minutes=7 * day),
                touchpoint=day % 3 if target.kind == "contact" else 0,
                late=timedelta(milliseconds=150 * i + day),
                reason=REASONS.get(status),
                channel="wecom-a" if (day + i) % 3 == 0 else "mock",
            )
    burst = NOW - timedelta(days=2, hours=3)
    for target in world.contacts:
        world.add(target, due_at=burst, late=timedelta(seconds=2))
    for target in world.contacts[:3]:
        world.add(target, status="scheduled", due_at=NOW + timedelta(hours=5), touchpoint=2)


@pytest.fixture
def world(engine, clock) -> World:
    clock.set(NOW)
    world = build_world(engine, NOW)
    populate(world)
    return world


def fetch_all(client: TestClient, params: dict[str, Any], limit: int = 7) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(500):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/deliveries", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page) <= limit
        rows += page
        cursor = response.headers.get("x-next-cursor")
        if not cursor:
            return rows
        assert (
            response.headers["link"].endswith('rel="next"') and cursor in response.headers["link"]
        )
    raise AssertionError("pagination did not end")


def expected_order(rows: list[Row], sort: str, order: str) -> list[int]:
    desc = order == "desc"
    if sort == "due_at":
        return [r.id for r in sorted(rows, key=lambda r: (r.due_at, r.id), reverse=desc)]
    sent = sorted((r for r in rows if r.sent_at), key=lambda r: (r.sent_at, r.id), reverse=desc)
    unsent = sorted((r for r in rows if not r.sent_at), key=lambda r: r.id, reverse=desc)
    return [r.id for r in sent + unsent]  # not yet sent: last, in either direction


def iso(value: datetime) -> str:
    return value.isoformat()


Case = tuple[str, Callable[[World], dict[str, Any]], Callable[[Row, World], bool]]
CASES: list[Case] = [
    ("everything", lambda w: {}, lambda r, w: True),
    (
        "template",
        lambda w: {"template_id": w.friend_template},
        lambda r, w: r.template_id == w.friend_template,
    ),
    (
        "version",
        lambda w: {"version_id": w.group_version},
        lambda r, w: r.version_id == w.group_version,
    ),
    (
        "touchpoint",
        lambda w: {"touchpoint_id": w.friend_touchpoints[1]},
        lambda r, w: r.touchpoint_id == w.friend_touchpoints[1],
    ),
    ("one status", lambda w: {"status": "failed"}, lambda r, w: r.status == "failed"),
    (
        "two statuses, comma-separated",
        lambda w: {"status": "failed,missed"},
        lambda r, w: r.status in ("failed", "missed"),
    ),
    (
        "two statuses, repeated",
        lambda w: {"status": ["sent", "scheduled"]},
        lambda r, w: r.status in ("sent", "scheduled"),
    ),
    (
        "reason substring in another case",
        lambda w: {"reason": "CAP: 1"},
        lambda r, w: r.reason is not None and "cap: 1" in r.reason.lower(),
    ),
    (
        "reason with a LIKE wildcard in it",
        lambda w: {"reason": "100%"},
        lambda r, w: r.reason is not None and "100%" in r.reason,
    ),
    ("reason wildcard only", lambda w: {"reason": "%"}, lambda r, w: "%" in (r.reason or "")),
    ("channel", lambda w: {"channel": "wecom-a"}, lambda r, w: r.channel == "wecom-a"),
    (
        "account (contacts and a group's owner)",
        lambda w: {"account_id": w.accounts["b"]},
        lambda r, w: r.target.account_id == w.accounts["b"],
    ),
    (
        "contact",
        lambda w: {"contact_id": w.contacts[1].id},
        lambda r, w: r.target is w.contacts[1],
    ),
    ("group", lambda w: {"group_id": w.groups[0].id}, lambda r, w: r.target is w.groups[0]),
    ("tag", lambda w: {"tag": "purchased"}, lambda r, w: "purchased" in r.target.tags),
    ("unknown tag", lambda w: {"tag": "no-such-tag"}, lambda r, w: False),
    (
        "due range (half-open)",
        lambda w: {
            "due_from": iso(NOW - timedelta(days=5)),
            "due_to": iso(NOW - timedelta(days=2)),
        },
        lambda r, w: NOW - timedelta(days=5) <= r.due_at < NOW - timedelta(days=2),
    ),
    (
        "due range in the workspace zone, a bare end date covers that day",
        lambda w: {"due_from": "2027-03-15T08:00", "due_to": "2027-03-16"},
        lambda r, w: (
            datetime(2027, 3, 15, 8, tzinfo=SH) <= r.due_at < datetime(2027, 3, 17, tzinfo=SH)
        ),
    ),
    (
        "sent range",
        lambda w: {
            "sent_from": iso(NOW - timedelta(days=4)),
            "sent_to": iso(NOW - timedelta(days=1)),
        },
        lambda r, w: (
            r.sent_at is not None and NOW - timedelta(days=4) <= r.sent_at < NOW - timedelta(days=1)
        ),
    ),
    (
        "template + status + one day",
        lambda w: {
            "template_id": w.friend_template,
            "status": "sent",
            "due_from": "2027-03-17",
            "due_to": "2027-03-17",
        },
        lambda r, w: (
            r.template_id == w.friend_template
            and r.status == "sent"
            and r.due_at.astimezone(SH).date().isoformat() == "2027-03-17"
        ),
    ),
    (
        "tag + account + statuses",
        lambda w: {
            "tag": "spring-class-2027",
            "account_id": w.accounts["a"],
            "status": "sent,failed",
        },
        lambda r, w: (
            "spring-class-2027" in r.target.tags
            and r.target.account_id == w.accounts["a"]
            and r.status in ("sent", "failed")
        ),
    ),
    (
        "contact + sent range + channel",
        lambda w: {
            "contact_id": w.contacts[0].id,
            "sent_from": iso(NOW - timedelta(days=8)),
            "channel": "mock",
        },
        lambda r, w: (
            r.target is w.contacts[0]
            and r.sent_at is not None
            and r.sent_at >= NOW - timedelta(days=8)
            and r.channel == "mock"
        ),
    ),
    (
        "group template + account that owns no group",
        lambda w: {"template_id": w.group_template, "account_id": w.accounts["a"]},
        lambda r, w: False,
    ),
]


@pytest.mark.parametrize(
    ("sort", "order"), [("due_at", "desc"), ("due_at", "asc"), ("sent_at", "desc")]
)
def test_filters_combine_and_every_page_is_in_order(world, client, sort, order):
    assert len(world.rows) > 70
    for name, params, keep in CASES:
        got = [r["id"] for r in fetch_all(client, {**params(world), "sort": sort, "order": order})]
        want = expected_order([r for r in world.rows if keep(r, world)], sort, order)
        assert got == want, f"{name} ({sort} {order})"


def test_a_row_shows_what_an_operator_needs(world, client):
    row = next(r for r in world.rows if r.target is world.contacts[1] and r.status == "sent")
    [out] = [
        r for r in fetch_all(client, {"contact_id": world.contacts[1].id}) if r["id"] == row.id
    ]
    assert out["target_name"] == '李四, "小李"' and out["target_kind"] == "contact"
    assert out["target_external_id"] == "wm_1" and out["account_name"] == "客服小李"
    assert out["template_name"] == "新好友 SOP" and out["version"] == 1
    assert out["touchpoint_name"] in ("welcome", "coupon", "reminder")
    assert datetime.fromisoformat(out["due_at"]) == row.due_at
    assert datetime.fromisoformat(out["sent_at"]) == row.sent_at
    assert out["lateness_seconds"] == pytest.approx((row.sent_at - row.due_at).total_seconds())
    assert out["provider_message_id"] and out["attempts"] == 1
    assert out["rendered"] == [{"kind": "text", "text": '李四, "小李"，你好'}]


@pytest.mark.parametrize(
    ("sort", "order"),
    [("due_at", "desc"), ("due_at", "asc"), ("sent_at", "desc"), ("sent_at", "asc")],
)
def test_pages_never_skip_or_repeat_while_rows_are_being_inserted(world, client, sort, order):
    present = {r.id for r in world.rows}
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {
            "sort": sort,
            "order": order,
            "limit": 6,
            **({"cursor": cursor} if cursor else {}),
        }
        response = client.get("/api/deliveries", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page
        if page:
            # Between two page loads the scheduler writes: a tie with the last row's
            # due time, rows newer and older than anything so far, and unsent ones.
            last = datetime.fromisoformat(page[-1]["due_at"])
            contact = world.contacts[len(seen) % 5]
            world.add(contact, due_at=last, late=timedelta(seconds=1))
            world.add(contact, due_at=NOW + timedelta(days=1), status="scheduled")
            world.add(contact, due_at=NOW - timedelta(days=30), late=timedelta(seconds=3))
            world.add(contact, due_at=last, status="scheduled")
        cursor = response.headers.get("x-next-cursor")
        if not cursor:
            break
    ids = [r["id"] for r in seen]
    assert len(ids) == len(set(ids)), "a row was repeated"
    assert present <= set(ids), "a row that existed before paging began was skipped"

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        if sort == "due_at":
            return (0, r["due_at"], r["id"])
        # rows sent and recorded before the walk began first (by time), then the
        # others (by id), in either order; the walk began at NOW (a frozen clock)
        recorded = r["finished_at"] or r["sent_at"]
        if r["sent_at"] and datetime.fromisoformat(recorded) < NOW:
            return (0, r["sent_at"], r["id"])
        return (1, "", r["id"])

    keys = [key(r) for r in seen]
    for a, b in zip(keys, keys[1:], strict=False):
        assert a[0] <= b[0]
        if a[0] == b[0]:
            assert (a > b) if order == "desc" else (a < b), (a, b)


def _detail(response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    return response.json()["detail"][0]


@pytest.mark.parametrize(
    ("params", "param", "says"),
    [
        ({"status": "lost"}, "status", "'lost'"),
        ({"status": "sent,lost"}, "status", "'lost'"),
        ({"due_from": "2027-03-10", "due_to": "2027-03-09"}, "due_to", "after due_from"),
        ({"due_from": "2027-03-10T10:00", "due_to": "2027-03-10T10:00"}, "due_to", "after"),
        ({"sent_from": "2027-03-10T10:00Z", "sent_to": "2027-03-01T10:00Z"}, "sent_to", "after"),
        ({"due_from": "last tuesday"}, "due_from", "ISO 8601"),
        ({"cursor": "not-a-cursor"}, "cursor", "start again"),
        ({"cursor": "!!!"}, "cursor", "start again"),
        (
            {"cursor": base64.urlsafe_b64encode(b'{"a": 1}').decode()},
            "cursor",
            "start again",
        ),
        ({"contact_id": 1, "group_id": 1}, "group_id", "not both"),
        ({"sort": "price"}, "sort", "due_at"),
        ({"order": "sideways"}, "order", "desc"),
        ({"limit": 0}, "limit", ""),
        ({"template_id": "abc"}, "template_id", ""),
        ({"template_id": 2**63}, "template_id", ""),
        (
            {
                "cursor": base64.urlsafe_b64encode(
                    b'[1,"due_at","desc","2027-03-01T00:00:00+00:00",9223372036854775808]'
                ).decode()
            },
            "cursor",
            "start again",
        ),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(client, params, param, says):
    detail = _detail(client.get("/api/deliveries", params=params))
    assert detail["loc"] == ["query", param]
    assert says in detail["msg"]


def test_a_cursor_only_continues_the_listing_it_came_from(world, client):
    first = client.get("/api/deliveries", params={"limit": 3})
    cursor = first.headers["x-next-cursor"]
    detail = _detail(client.get("/api/deliveries", params={"sort": "sent_at", "cursor": cursor}))
    assert detail["loc"] == ["query", "cursor"] and "sort=due_at" in detail["msg"]
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert raw[1:3] == ["due_at", "desc"]  # opaque to clients, but (sort key, id) inside
    for path in ("/api/deliveries/export.csv", "/api/deliveries/export.ndjson"):
        detail = _detail(client.get(path, params={"status": "lost"}))
        assert detail["loc"] == ["query", "status"]


def test_an_offset_whose_plus_was_not_url_encoded_still_parses(world, client):
    raw = client.get(
        "/api/deliveries?due_from=2027-03-15T08:00+08:00&due_to=2027-03-16T00:00+08:00"
    )
    assert raw.status_code == 200, raw.text
    want = [
        r.id
        for r in sorted(world.rows, key=lambda r: (r.due_at, r.id), reverse=True)
        if datetime(2027, 3, 15, 8, tzinfo=SH) <= r.due_at < datetime(2027, 3, 16, tzinfo=SH)
    ]
    assert [r["id"] for r in raw.json()] == want and want
