"""The editor's timeline, preview and test send."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish

from scheduler.flows import authoring
from scheduler.flows.models import TestSend
from scheduler.outbox import policies
from sop_templates import library
from sop_templates import service as templates_service
from sopbot.db import session_scope
from sopbot.settings import Settings

JOIN = datetime(2027, 3, 2, 13, 30, tzinfo=UTC)  # Tue 21:30 Shanghai
SHANGHAI = "Asia/Shanghai"


def _local(instant: datetime) -> str:
    from zoneinfo import ZoneInfo

    return instant.astimezone(ZoneInfo(SHANGHAI)).strftime("%a %H:%M")


def test_new_friend_timeline_with_quiet_hours_reads_like_the_issue():
    spec = templates_service.parse_spec(
        {**library.load("new_friend"), "quiet_hours": "22:00-08:00"}
    )
    line = authoring.timeline(spec, JOIN)
    assert [(e.touchpoint, _local(e.run_at), e.status) for e in line.entries] == [
        ("欢迎语", "Tue 21:30", "scheduled"),
        ("小程序和优惠券", "Wed 08:00", "scheduled"),  # +3h = 00:30, deferred
        ("第二天提醒", "Wed 20:00", "scheduled"),
    ]
    coupon = line.entries[1]
    assert coupon.deferred and _local(coupon.due_at) == "Wed 00:30"
    assert "quiet hours 22:00-08:00" in (coupon.reason or "")
    assert line.quiet_hours == "22:00-08:00"


def test_workspace_quiet_hours_apply_when_the_template_sets_none():
    spec = templates_service.parse_spec(library.load("new_friend"))
    defaults = policies.WorkspaceDefaults.from_settings(
        Settings(quiet_hours="22:00-08:00", _env_file=None)  # type: ignore[call-arg]
    )
    line = authoring.timeline(spec, JOIN, defaults=defaults)
    assert _local(line.entries[1].run_at) == "Wed 08:00"
    assert authoring.timeline(spec, JOIN).entries[1].deferred is False


def test_a_day_one_time_already_past_is_skipped():
    spec = templates_service.parse_spec(library.load("tagged_class"))
    line = authoring.timeline(spec, JOIN)  # tagged at 21:30, class reminder day 1 20:00
    first = line.entries[0]
    assert (first.touchpoint, first.status) == ("上课提醒", "skipped")
    assert first.reason == "time already past when enrolled"


def test_cron_touchpoints_show_their_next_occurrences():
    spec = templates_service.parse_spec(library.load("store_groups"))
    line = authoring.timeline(spec, JOIN, cron_occurrences_shown=2)
    assert [(e.touchpoint, _local(e.run_at)) for e in line.entries] == [
        ("午市菜单", "Wed 11:00"),
        ("美食小贴士", "Wed 18:00"),
        ("午市菜单", "Thu 11:00"),
        ("美食小贴士", "Thu 18:00"),
    ]


@pytest.mark.parametrize(
    "quiet", [None, "22:00-08:00", {"start": "21:00", "end": "23:00", "policy": "skip"}]
)
@pytest.mark.parametrize("join", [JOIN, datetime(2027, 3, 2, 1, 0, tzinfo=UTC)])
def test_the_timeline_is_what_enrollment_schedules(engine, quiet, join):
    """The same due times, deferrals and skips as the deliveries enroll writes."""
    spec = {**library.load("new_friend"), "segment": None}
    spec["touchpoints"] = [
        *spec["touchpoints"],
        {
            "name": "day1",
            "timing": "day 1 20:00",
            "content": ["今晚见"],
        },
    ]
    if quiet is not None:
        spec["quiet_hours"] = quiet
    template_id = publish(engine, spec, join)
    contact = add_contact(engine, "wm_1", "张三", join)
    enroll(engine, template_id, [(contact, join)], join)
    with session_scope(engine) as session:
        parsed = templates_service.parse_spec(
            templates_service.get_template(session, template_id).draft
        )
    predicted = {
        (e.touchpoint, e.due_at, e.run_at, e.status)
        for e in authoring.timeline(parsed, join).entries
    }
    with session_scope(engine) as session:
        names = {
            tp.id: tp.name
            for tp in templates_service.touchpoints_of(
                session, templates_service.get_template(session, template_id).current_version_id
            )
        }
    actual = {(names[d.touchpoint_id], d.due_at, d.run_at, d.status) for d in deliveries(engine)}
    assert predicted == actual


def test_preview_renders_for_a_real_contact_and_the_sample(engine):
    add_contact(engine, "wm_li", "李四", JOIN, account="staff_wang")
    spec = templates_service.parse_spec(library.load("new_friend"))
    with session_scope(engine) as session:
        real = authoring.preview(session, spec, "wm_li")
        sample = authoring.preview(session, spec)
    assert not real.sample and real.target["name"] == "李四"
    assert real.items[0].parts[0]["text"].startswith("李四，你好")
    assert "staff_wang" in real.items[0].parts[0]["text"]  # the account's name (its id here)
    assert sample.sample and sample.items[0].parts[0]["text"].startswith("张三，你好")
    assert [i.touchpoint for i in real.items] == ["欢迎语", "小程序和优惠券", "第二天提醒"]


def test_preview_reports_a_render_error_per_touchpoint(engine):
    add_contact(
        engine, "wm_no_account", "王五", JOIN
    )  # no staff account: account.name is undefined
    spec = templates_service.parse_spec(library.load("new_friend"))
    with session_scope(engine) as session:
        result = authoring.preview(session, spec, "wm_no_account")
    assert "undefined" in (result.items[0].error or "")
    assert result.items[2].error is None


async def test_a_test_send_goes_through_the_channel_and_is_recorded(engine, clock, runtime):
    clock.set(JOIN)
    template_id = publish(engine, new_friend_spec(), JOIN)
    add_contact(engine, "wm_me", "我自己", JOIN)
    row = await authoring.test_send(
        engine,
        runtime.channels,
        clock,
        template_id=template_id,
        target_key="wm_me",
        touchpoint="coupon",
        requested_by=1,
        requested_by_name="wang",
    )
    assert row.status == "sent" and row.provider_message_id
    [message] = mock_sends(engine)
    assert message.parts[0]["text"] == "我自己，送你一张优惠券"
    assert message.delivery_id == -row.id  # not an outbox row
    assert deliveries(engine) == []  # and no delivery of the SOP was written
    with session_scope(engine) as session:
        stored = session.get(TestSend, row.id)
        assert (stored.touchpoint_name, stored.requested_by_name) == ("coupon", "wang")


async def test_a_test_send_to_a_deleted_contact_fails_with_the_reason(engine, clock, runtime):
    clock.set(JOIN)
    template_id = publish(engine, new_friend_spec(), JOIN)
    contact_id = add_contact(engine, "wm_gone", "走了", JOIN)
    with session_scope(engine) as session:
        from audiences.models import Contact

        session.get(Contact, contact_id).status = "deleted"
    row = await authoring.test_send(
        engine, runtime.channels, clock, template_id=template_id, target_key="wm_gone"
    )
    assert row.status == "failed" and "deleted" in row.error
    assert mock_sends(engine) == []
