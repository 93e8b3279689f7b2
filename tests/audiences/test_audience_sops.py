"""The three SOP scenarios driven purely by events (POST /api/events), plus the
exit conditions and re-entry policies that make SOPs stop and start by themselves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from audience_helpers import (
    create_and_publish,
    enrollments,
    register_account,
    run_until,
    send_events,
)
from factories import deliveries, mock_sends, new_friend_spec, plan_when_due, store_menu_spec
from fastapi.testclient import TestClient

from api.app import create_app
from scheduler.flows import changes

SH = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        assert (
            c.post("/api/accounts", json={"external_id": "staff_1", "name": "小王"}).status_code
            == 201
        )
        yield c


def post(client, events):
    response = client.post("/api/events", json=events)
    assert response.status_code == 200, response.text
    return response.json()


def class_spec(**overrides):
    spec = {
        "name": "春季班课程提醒",
        "target": "contact",
        "timezone": "Asia/Shanghai",
        "anchor": "tag",
        "anchor_tag": "spring-class-2027",
        "segment": {"tags": "spring-class-2027"},
        "exit": {"tags_added": ["purchased"]},
        "touchpoints": [
            {
                "name": "reminder",
                "timing": "day 1 20:00",
                "content": "{{ contact.name }}，今晚上课",
            },
            {"name": "preview", "timing": "day 2 19:30", "content": "预习资料"},
            {"name": "follow-up", "timing": "day 3 09:00", "content": "回访"},
        ],
    }
    spec.update(overrides)
    return spec


def publish_via_api(client, spec):
    template = client.post("/api/templates", json=spec)
    assert template.status_code == 201, template.text
    published = client.post(f"/api/templates/{template.json()['id']}/publish")
    assert published.status_code == 200, published.text
    return template.json()["id"], published.json()


async def test_friend_added_enrolls_into_the_new_friend_sop(client, engine, clock, runtime):
    clock.set(datetime(2027, 3, 1, 9, 0, tzinfo=SH))
    before = datetime(2027, 3, 1, 8, 0, tzinfo=SH).isoformat()
    post(client, {"kind": "friend_added", "account": "staff_1", "external_id": "wm_old",
                  "name": "老朋友", "occurred_at": before})  # fmt: skip
    template_id, published = publish_via_api(
        client, new_friend_spec(segment={"kind": "new_friends"})
    )
    assert published["enrolled"] == 0  # new-friend SOPs take nobody in at publish

    joined = datetime(2027, 3, 1, 21, 30, tzinfo=SH)
    clock.set(joined)
    report = post(
        client,
        {"kind": "friend_added", "account": "staff_1", "external_id": "wm_zhang", "name": "张三"},
    )
    assert report["created"] == 1 and report["enrolled"] == 1

    rows = deliveries(engine, template_id=template_id)
    assert [r.due_at for r in rows] == [
        datetime(2027, 3, 1, 13, 30, tzinfo=UTC),  # +0
        datetime(2027, 3, 1, 16, 30, tzinfo=UTC),  # +3h
        datetime(2027, 3, 2, 12, 0, tzinfo=UTC),  # day 2 20:00 Shanghai
    ]
    # the friend from before the template went live, touched again, stays out
    post(client, {"kind": "contact_updated", "account": "staff_1", "external_id": "wm_old",
                  "attributes": {"city": "上海"}})  # fmt: skip
    assert len(enrollments(engine)) == 1

    await run_until(runtime, clock, joined + timedelta(days=2), timedelta(minutes=30))
    assert [r.status for r in deliveries(engine)] == ["sent", "sent", "sent"]
    assert all("张三" in s.parts[0]["text"] for s in mock_sends(engine))


async def test_tag_added_enrolls_and_purchased_cancels_the_rest(client, engine, clock, runtime):
    clock.set(datetime(2027, 3, 1, 9, 0, tzinfo=SH))
    post(
        client,
        {"kind": "friend_added", "account": "staff_1", "external_id": "wm_li", "name": "李四"},
    )
    template_id, _ = publish_via_api(client, class_spec())
    assert enrollments(engine) == []

    tagged_at = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(tagged_at + timedelta(minutes=1))
    report = post(
        client,
        {
            "kind": "tag_added",
            "account": "staff_1",
            "external_id": "wm_li",
            "tags": ["spring-class-2027"],
            "occurred_at": tagged_at.isoformat(),
        },
    )
    assert report["enrolled"] == 1
    (enrollment,) = enrollments(engine)
    assert enrollment.anchor_at == tagged_at  # counted from the tag time
    rows = deliveries(engine, template_id=template_id)
    assert [r.due_at.astimezone(SH).strftime("%m-%d %H:%M") for r in rows] == [
        "03-01 20:00",
        "03-02 19:30",
        "03-03 09:00",
    ]

    await run_until(runtime, clock, datetime(2027, 3, 2, 9, 0, tzinfo=SH), timedelta(minutes=30))
    report = post(
        client,
        {"kind": "tag_added", "account": "staff_1", "external_id": "wm_li", "tags": ["purchased"]},
    )
    assert report["exited"] == 1 and report["cancelled"] == 2
    await run_until(runtime, clock, datetime(2027, 3, 4, 9, 0, tzinfo=SH), timedelta(hours=1))

    rows = deliveries(engine, template_id=template_id)
    assert [r.status for r in rows] == ["sent", "cancelled", "cancelled"]
    assert {r.reason for r in rows[1:]} == {"exit condition: tag 'purchased' added"}
    (enrollment,) = enrollments(engine)
    assert enrollment.status == "exited"
    assert enrollment.exit_reason == "exit condition: tag 'purchased' added"
    assert len(mock_sends(engine)) == 1


async def test_group_tagged_store_created_later_gets_the_menu_until_dissolved(
    client, engine, clock, runtime
):
    start = datetime(2027, 3, 1, 9, 0, tzinfo=SH)
    clock.set(start)
    post(
        client,
        {"kind": "group_created", "external_id": "wr_old", "name": "老店群", "tags": ["store"]},
    )
    template_id, published = publish_via_api(client, store_menu_spec(segment={"tag": "store"}))
    assert published["enrolled"] == 1  # the store group that already existed

    clock.set(start + timedelta(hours=1))
    report = post(
        client,
        [
            {"kind": "group_created", "external_id": "wr_new", "name": "新店群", "tags": ["store"]},
            {"kind": "group_created", "external_id": "wr_chat", "name": "闲聊群"},
        ],
    )
    assert report["enrolled"] == 1  # the untagged group is not a store

    await run_until(runtime, clock, start + timedelta(days=1, hours=3), timedelta(minutes=15))
    sent = {(r.target_id, r.due_at.astimezone(SH).strftime("%m-%d %H:%M")) for r in deliveries(engine) if r.status == "sent"}  # fmt: skip
    assert len(sent) == 4  # 2 groups × 11:00 on two days
    assert {d for _, d in sent} == {"03-01 11:00", "03-02 11:00"}

    report = post(client, {"kind": "group_dissolved", "external_id": "wr_new"})
    assert report["exited"] == 1
    await run_until(runtime, clock, start + timedelta(days=3, hours=3), timedelta(minutes=15))

    per_group: dict[str, list[str]] = {}
    names = {e.target_id: e for e in enrollments(engine)}
    for row in deliveries(engine):
        if row.status == "sent":
            per_group.setdefault(names[row.target_id].exit_reason or "active", []).append(
                row.due_at.astimezone(SH).strftime("%m-%d")
            )
    assert per_group == {
        "active": ["03-01", "03-02", "03-03", "03-04"],
        "group dissolved": ["03-01", "03-02"],
    }
    # a group tagged store later is picked up too
    post(
        client,
        {"kind": "tag_added", "target": "group", "external_id": "wr_chat", "tags": ["store"]},
    )
    assert len(enrollments(engine, status="active")) == 2


def test_a_group_dissolved_with_occurrences_planned_ahead_has_them_cancelled(engine, clock):
    clock.set(datetime(2027, 3, 1, 10, 59, tzinfo=SH))
    create_and_publish(engine, store_menu_spec(segment={"tag": "store"}), clock.now())
    send_events(
        engine, clock.now(), {"kind": "group_created", "external_id": "wr1", "tags": ["store"]}
    )
    from scheduler.outbox import service as scheduler_service
    from sopbot.db import session_scope

    with session_scope(engine) as session:  # the look-ahead fans 11:00 out a minute early
        planned = scheduler_service.plan_cron(
            session, clock.now(), lookahead=timedelta(minutes=2), catch_up=timedelta(days=1)
        )
    assert (planned.occurrences, planned.deliveries, planned.missed) == (1, 1, 0)
    assert [r.status for r in deliveries(engine)] == ["scheduled"]
    send_events(engine, clock.now(), {"kind": "group_dissolved", "external_id": "wr1"})
    (row,) = deliveries(engine)
    assert (row.status, row.reason) == ("cancelled", "group dissolved")


def test_the_same_event_replayed_three_times_enrolls_once(engine, clock):
    register_account(engine, "staff_1")
    create_and_publish(engine, new_friend_spec(segment={"kind": "new_friends"}), clock.now())
    event = {"kind": "friend_added", "id": "wecom-add-42", "account": "staff_1",
             "external_id": "wm_x", "name": "王五"}  # fmt: skip
    reports = [send_events(engine, clock.now(), event) for _ in range(3)]
    assert [r.applied for r in reports] == [1, 0, 0]
    assert [r.duplicates for r in reports] == [0, 1, 1]
    assert len(enrollments(engine)) == 1 and len(deliveries(engine)) == 3
    # and inside one batch
    again = send_events(engine, clock.now(), [{**event, "id": "b"}, {**event, "id": "b"}])
    assert [r["status"] for r in again.results] == ["applied", "duplicate"]


def test_fixed_start_template_enrolls_everyone_matching_at_publish(engine, clock):
    register_account(engine, "staff_1")
    clock.set(datetime(2027, 3, 2, 12, 0, tzinfo=SH))
    send_events(
        engine,
        clock.now(),
        [
            {"kind": "friend_added", "account": "staff_1", "external_id": f"wm{i}", "tags": tags}
            for i, tags in enumerate(
                [
                    ["spring-class-2027"],
                    ["spring-class-2027"],
                    ["other"],
                    ["spring-class-2027", "purchased"],
                ]
            )  # fmt: skip
        ],
    )
    spec = class_spec(anchor="fixed", anchor_tag=None, start_at="2027-03-01T08:00:00")
    _, result = create_and_publish(engine, spec, clock.now())
    # wm3 carries an exit tag already; "other" does not match
    assert result.enrolled == 2
    assert {e.anchor_at for e in enrollments(engine)} == {datetime(2027, 3, 1, 0, 0, tzinfo=UTC)}
    statuses = [(r.status, r.reason) for r in deliveries(engine) if r.target_id == 1]
    # day 1 20:00 is gone; the planner writes the later two shortly before they fall due
    assert statuses == [("skipped", "time already past when enrolled")]
    assert result.planned_later == 2
    assert plan_when_due(engine) == 2 * 2
    statuses = [(r.status, r.reason) for r in deliveries(engine) if r.target_id == 1]
    assert statuses == [
        ("skipped", "time already past when enrolled"),
        ("scheduled", None),
        ("scheduled", None),
    ]
    # later matches are anchored at the same fixed start
    send_events(engine, clock.now(), {"kind": "tag_added", "account": "staff_1",
                                      "external_id": "wm2", "tags": ["spring-class-2027"]})  # fmt: skip
    assert len(enrollments(engine)) == 3
    assert enrollments(engine)[-1].anchor_at == datetime(2027, 3, 1, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"kind": "friend_deleted", "account": "staff_1", "external_id": "wm1"}, "contact deleted"),
        ({"kind": "contact_updated", "external_id": "wm1", "status": "blocked"}, "contact blocked"),
        (
            {"kind": "contact_updated", "external_id": "wm1", "status": "unsubscribed"},
            "contact unsubscribed",
        ),
        (
            {"kind": "tag_removed", "external_id": "wm1", "tags": ["spring-class-2027"]},
            "no longer matches the segment",
        ),
        (
            {"kind": "tag_removed", "external_id": "wm1", "tags": ["vip"]},
            "exit condition: tag 'vip' removed",
        ),
    ],
)
def test_exit_conditions_cancel_pending_deliveries_with_the_reason(engine, clock, event, reason):
    register_account(engine, "staff_1")
    create_and_publish(
        engine,
        class_spec(exit={"tags_added": ["purchased"], "tags_removed": ["vip"]}),
        clock.now(),
    )
    send_events(engine, clock.now(), {"kind": "friend_added", "account": "staff_1",
                                      "external_id": "wm1", "tags": ["vip", "spring-class-2027"]})  # fmt: skip
    assert len(deliveries(engine, status="scheduled")) == 3
    report = send_events(engine, clock.now(), event)
    assert (report.membership.exited, report.membership.cancelled) == (1, 3)
    assert {(r.status, r.reason) for r in deliveries(engine)} == {("cancelled", reason)}
    assert enrollments(engine)[0].exit_reason == reason


def test_no_exit_when_the_template_says_so(engine, clock):
    register_account(engine, "staff_1")
    create_and_publish(
        engine,
        class_spec(exit={"on_segment_mismatch": False, "on_inactive": False}),
        clock.now(),
    )
    send_events(engine, clock.now(), {"kind": "friend_added", "account": "staff_1",
                                      "external_id": "wm1", "tags": ["spring-class-2027"]})  # fmt: skip
    send_events(engine, clock.now(), [
        {"kind": "tag_removed", "external_id": "wm1", "tags": ["spring-class-2027"]},
        {"kind": "friend_deleted", "account": "staff_1", "external_id": "wm1"},
    ])  # fmt: skip
    assert [e.status for e in enrollments(engine)] == ["active"]


@pytest.mark.parametrize(
    ("policy", "mismatch_exits", "cycles", "first_status"),
    [
        ("never", True, [0], "exited"),
        ("after_finish", True, [0, 1], "exited"),
        ("always", True, [0, 1], "exited"),
        # the first run is still going when the target matches again
        ("never", False, [0], "active"),
        ("after_finish", False, [0], "active"),  # deliveries still pending: not finished
        ("always", False, [0, 1], "exited"),  # restarted
    ],
)
def test_reentry_policies(engine, clock, policy, mismatch_exits, cycles, first_status):
    register_account(engine, "staff_1")
    spec = class_spec(reentry=policy, exit={"on_segment_mismatch": mismatch_exits})
    create_and_publish(engine, spec, clock.now())
    tag = {"account": "staff_1", "external_id": "wm1", "tags": ["spring-class-2027"]}
    send_events(
        engine, clock.now(), {"kind": "friend_added", "account": "staff_1", "external_id": "wm1"}
    )
    send_events(engine, clock.now(), {"kind": "tag_added", **tag})
    clock.advance(hours=1)
    send_events(engine, clock.now(), {"kind": "tag_removed", **tag})
    clock.advance(hours=1)
    send_events(engine, clock.now(), {"kind": "tag_added", **tag})

    runs = enrollments(engine)
    assert [e.cycle for e in runs] == cycles
    assert runs[0].status == first_status
    if len(runs) == 2:
        assert runs[1].status == "active"
        assert runs[1].anchor_at == clock.now()  # the new tag time
        assert len(deliveries(engine, enrollment_id=runs[1].id, status="scheduled")) == 3


def test_after_finish_reenters_once_the_first_run_is_over(engine, clock):
    register_account(engine, "staff_1")
    spec = class_spec(reentry="after_finish", exit={"on_segment_mismatch": False})
    create_and_publish(engine, spec, clock.now())
    tag = {"account": "staff_1", "external_id": "wm1", "tags": ["spring-class-2027"]}
    send_events(engine, clock.now(), [{"kind": "friend_added", "account": "staff_1",
                                       "external_id": "wm1"}, {"kind": "tag_added", **tag}])  # fmt: skip
    from sqlalchemy import update

    from scheduler.outbox.models import Delivery
    from sopbot.db import session_scope

    with session_scope(engine) as session:  # as if all three had gone out
        session.execute(update(Delivery).values(status="sent"))
    clock.advance(days=5)
    send_events(engine, clock.now(), {"kind": "tag_removed", **tag})
    send_events(engine, clock.now(), {"kind": "tag_added", **tag})
    first, second = enrollments(engine)
    assert (first.status, first.exit_reason) == ("completed", "finished")
    assert second.cycle == 1 and second.status == "active"


def test_after_finish_waits_for_touchpoints_the_planner_has_yet_to_write(engine, clock):
    """A fixed start's later touchpoints have no rows until shortly before they
    fall due; a run whose rows are all done but which has those ahead is not over."""
    register_account(engine, "staff_1")
    tag = {"account": "staff_1", "external_id": "wm1", "tags": ["spring-class-2027"]}
    send_events(engine, clock.now(), [{"kind": "friend_added", "account": "staff_1",
                                       "external_id": "wm1"}, {"kind": "tag_added", **tag}])  # fmt: skip
    spec = class_spec(
        anchor="fixed",
        anchor_tag=None,
        start_at="2027-03-05T08:00:00",
        reentry="after_finish",
        exit={"on_segment_mismatch": False},
    )
    _, result = create_and_publish(engine, spec, clock.now())
    assert (result.enrolled, result.deliveries, result.planned_later) == (1, 0, 3)
    send_events(engine, clock.now(), {"kind": "tag_removed", **tag})
    send_events(engine, clock.now(), {"kind": "tag_added", **tag})
    assert [(e.cycle, e.status) for e in enrollments(engine)] == [(0, "active")]
    assert plan_when_due(engine) == 3


def test_exit_action_tags_trigger_other_sops(engine, clock):
    """Tags sopbot applies itself go through the same path as tags from events."""
    register_account(engine, "staff_1")
    create_and_publish(
        engine,
        class_spec(exit={"tags_added": ["purchased"], "add_tags": ["class-done"]}),
        clock.now(),
    )
    create_and_publish(
        engine,
        class_spec(
            name="结课回访", anchor_tag="class-done", segment={"tags": "class-done"}, exit={}
        ),
        clock.now(),
    )
    send_events(engine, clock.now(), {"kind": "friend_added", "account": "staff_1",
                                      "external_id": "wm1", "tags": ["spring-class-2027"]})  # fmt: skip
    report = send_events(engine, clock.now(), {"kind": "tag_added", "external_id": "wm1",
                                               "tags": ["purchased"]})  # fmt: skip
    assert report.membership.exited == 1 and report.membership.enrolled == 1
    first, second = enrollments(engine)
    assert first.status == "exited" and second.status == "active" and second.template_id == 2

    # and an operator's tag through the service, not an event
    from sopbot.db import session_scope

    send_events(
        engine, clock.now(), {"kind": "friend_added", "account": "staff_1", "external_id": "wm2"}
    )
    with session_scope(engine) as session:
        result = changes.add_tags(session, "contact", [2], ["class-done"], clock.now())
    assert result.enrolled == 1


def test_attribute_change_out_of_the_segment_exits(engine, clock):
    register_account(engine, "staff_1")
    create_and_publish(
        engine,
        new_friend_spec(segment={"kind": "new_friends", "attributes": {"city": "上海"}}),
        clock.now(),
    )
    send_events(engine, clock.now(), [
        {"kind": "friend_added", "account": "staff_1", "external_id": "wm1", "attributes": {"city": "上海"}},
        {"kind": "friend_added", "account": "staff_1", "external_id": "wm2", "attributes": {"city": "北京"}},
    ])  # fmt: skip
    assert [e.target_id for e in enrollments(engine)] == [1]
    send_events(engine, clock.now(), {"kind": "contact_updated", "external_id": "wm1",
                                      "attributes": {"city": "北京"}})  # fmt: skip
    assert enrollments(engine)[0].exit_reason == "no longer matches the segment"


def test_paused_templates_do_not_enroll_but_still_exit(engine, clock):
    from sop_templates import service as templates_service
    from sopbot.db import session_scope

    register_account(engine, "staff_1")
    template_id, _ = create_and_publish(engine, class_spec(), clock.now())
    tag = {"account": "staff_1", "external_id": "wm1", "tags": ["spring-class-2027"]}
    send_events(engine, clock.now(), [{"kind": "friend_added", "account": "staff_1",
                                       "external_id": "wm1"}, {"kind": "tag_added", **tag}])  # fmt: skip
    with session_scope(engine) as session:
        templates_service.set_status(session, template_id, "paused", clock.now())
    send_events(engine, clock.now(), [
        {"kind": "friend_added", "account": "staff_1", "external_id": "wm2", "tags": ["spring-class-2027"]},
        {"kind": "tag_added", "external_id": "wm1", "tags": ["purchased"]},
    ])  # fmt: skip
    assert [(e.target_id, e.status) for e in enrollments(engine)] == [(1, "exited")]
