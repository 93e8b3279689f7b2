"""Mass sends against the fake WeCom: the quota is per customer across staff
members, customer groups go 2,000 to a task, the adapter survives expired
tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from factories import add_contact, deliveries, enroll, new_friend_spec, publish
from wecom_kit import CHANNEL, CONFIG

from channels.base import AdapterContext, OutboundMessage, ResultStatus
from channels.registry import ensure_instance
from channels.wecom import WeComAdapter, WeComConfig
from channels.wecom_fake import FakeWeCom
from scheduler.runtime import SchedulerRuntime
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def fake(engine, clock) -> FakeWeCom:
    with session_scope(engine) as session:
        ensure_instance(session, CHANNEL, "wecom", CONFIG)
    clock.set(T0)
    return FakeWeCom(clock, quota="1_per_day")


@pytest.fixture
async def wecom_runtime(engine, clock, settings, fake):
    http = httpx.AsyncClient(transport=fake.transport())
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


def set_quota(engine, preset: str | None) -> None:
    """The channel's mass_send_quota (before the runtime first builds the adapter)."""
    with session_scope(engine) as session:
        instance = ensure_instance(session, CHANNEL, "wecom", CONFIG)
        instance.config = {**CONFIG, "mass_send_quota": preset}
        session.add(instance)


def task_spec(name: str, **overrides: Any) -> dict[str, Any]:
    return new_friend_spec(
        name=name,
        channel=CHANNEL,
        touchpoints=[{"name": "hello", "timing": "+0m", "content": "新品上架", "mode": "task"}],
        **overrides,
    )


async def test_two_staff_one_customer_one_mass_message_a_day_the_second_skipped(
    engine, clock, settings, fake, wecom_runtime
):
    # sopbot was not told the admin's preset: WeCom itself refuses the second.
    set_quota(engine, None)
    # 王女士 (wm_1) is a friend of two staff members: two contacts in sopbot.
    fake.add_contact("staff_li", "wm_1")
    fake.add_contact("staff_zhao", "wm_1")
    template_id = publish(engine, task_spec("新品"), T0)
    li = add_contact(engine, "wm_1", "王女士", T0, account="staff_li")
    zhao = add_contact(engine, "wm_1", "王女士", T0, account="staff_zhao")
    enroll(engine, template_id, [(li, T0), (zhao, T0)], T0)

    await wecom_runtime.dispatch_tick()
    assert fake.calls["externalcontact/add_msg_template"] == 2  # one task per sender
    by_sender = {task.sender: task.msgid for task in fake.tasks.values()}
    clock.advance(minutes=10)
    fake.confirm(by_sender["staff_li"], "staff_li")
    fake.confirm(by_sender["staff_zhao"], "staff_zhao")  # WeCom refuses: quota used

    clock.advance(seconds=settings.task_poll_seconds)
    stats = await wecom_runtime.poll_tasks_tick()
    assert stats.confirmed == 1
    rows = {r.target_id: r for r in deliveries(engine)}
    assert rows[li].status == "sent" and rows[li].reason.startswith("confirmed by staff staff_li")
    assert rows[zhao].status == "skipped"
    assert rows[zhao].reason == (
        f"mass-send task {by_sender['staff_zhao']}: the customer already received a mass "
        "message (WeCom's mass-send quota)"
    )
    assert fake.received == {"wm_1": [T0 + timedelta(minutes=10)]}


async def test_the_channel_quota_counts_per_customer_across_staff_members(
    engine, clock, settings, fake, wecom_runtime
):
    set_quota(engine, "1_per_day")
    fake.add_contact("staff_li", "wm_1")
    fake.add_contact("staff_zhao", "wm_1")
    first = publish(engine, task_spec("新品"), T0)
    second = publish(engine, task_spec("会员日"), T0)
    li = add_contact(engine, "wm_1", "王女士", T0, account="staff_li")
    zhao = add_contact(engine, "wm_1", "王女士", T0, account="staff_zhao")
    enroll(engine, first, [(li, T0)], T0)
    enroll(engine, second, [(zhao, T0)], T0)

    await wecom_runtime.dispatch_tick()
    assert fake.calls["externalcontact/add_msg_template"] == 1  # the other is held back
    rows = {r.target_id: r for r in deliveries(engine)}
    assert rows[li].status == "sent"
    held = rows[zhao]
    assert held.status == "scheduled"
    assert held.reason.startswith(
        "WeCom mass-send quota (customer wm_1): frequency cap 1_per_day: 1 already sent this day"
    )
    # the next day in China time: 2027-03-02 00:00 +08:00
    assert held.run_at == datetime(2027, 3, 1, 16, 0, tzinfo=UTC)

    clock.set(held.run_at)
    await wecom_runtime.dispatch_tick()
    assert fake.calls["externalcontact/add_msg_template"] == 2
    assert deliveries(engine, id=held.id)[0].status == "sent"


async def test_a_group_sop_to_2500_customer_groups_makes_two_tasks(clock, fake):
    for i in range(2_500):
        fake.add_group(f"wr_{i}", "staff_li")
    messages = [
        OutboundMessage(i, f"d{i}", "group", f"wr_{i}", "staff_li", [TEXT], mode="task")
        for i in range(2_500)
    ]
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        adapter = _adapter(http, clock)
        results = await adapter.send(messages)
        tasks = list(fake.tasks.values())
        assert [(t.chat_type, len(t.targets)) for t in tasks] == [("group", 2_000), ("group", 500)]
        assert {r.provider_message_id for r in results} == {t.msgid for t in tasks}
        # per-group results, polled as for customer tasks
        fake.confirm(tasks[1].msgid)
        outcomes = await adapter.poll_task_outcomes(tasks[1].msgid, "staff_li")
    assert len(outcomes) == 500 and {o.status for o in outcomes.values()} == {"sent"}


async def test_an_expired_token_is_refreshed_once(clock, fake):
    fake.add_contact("staff_li", "wm_1")
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        adapter = _adapter(http, clock)
        message = OutboundMessage(1, "d1", "contact", "wm_1", "staff_li", [TEXT], mode="task")
        [first] = await adapter.send([message])
        fake.expire_tokens()  # WeCom revoked it early: our cache still thinks it is good
        [second] = await adapter.send([message])
    assert (first.status, second.status) == (ResultStatus.SENT, ResultStatus.SENT)
    assert fake.calls["gettoken"] == 2
    assert fake.calls["externalcontact/add_msg_template"] == 3  # one refused with 42001


TEXT = {"kind": "text", "text": "今日菜单"}


def _adapter(http: httpx.AsyncClient, clock: Any) -> WeComAdapter:
    context = AdapterContext(http=http, engine=None, clock=clock)  # type: ignore[arg-type]
    return WeComAdapter(WeComConfig.model_validate(CONFIG), context)


async def test_a_task_waits_for_the_staff_member_and_refuses_non_friends(clock, fake):
    fake.add_contact("staff_li", "wm_1")
    fake.add_contact("staff_zhao", "wm_2")  # not staff_li's friend
    messages = [
        OutboundMessage(i, f"d{i}", "contact", f"wm_{i}", "staff_li", [TEXT], mode="task")
        for i in (1, 2)
    ]
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        adapter = _adapter(http, clock)
        sent, refused = await adapter.send(messages)
        assert sent.status is ResultStatus.SENT
        assert refused.status is ResultStatus.PERMANENT and "not a friend" in refused.error
        pending = await adapter.poll_task_outcomes(sent.provider_message_id, "staff_li")
        clock.advance(minutes=5)
        fake.confirm(sent.provider_message_id, "staff_li")
        done = await adapter.poll_task_outcomes(sent.provider_message_id, "staff_li")
    assert pending["wm_1"].status == "pending"
    assert done["wm_1"].status == "sent"
    assert done["wm_1"].send_time == int((T0 + timedelta(minutes=5)).timestamp())


def test_half_added_contacts_keep_their_welcome_code_too():
    from audiences import wecom_events

    fields = {
        "MsgType": "event",
        "Event": "change_external_contact",
        "ChangeType": "add_half_external_contact",
        "UserID": "staff_li",
        "ExternalUserID": "wm_1",
        "CreateTime": str(int(T0.timestamp())),
        "WelcomeCode": "WC9",
    }
    [event], ignored = wecom_events.to_events(fields)
    assert ignored is None and event["kind"] == "friend_added"
    assert event["attributes"] == {
        "wecom_welcome_code": "WC9",
        "wecom_welcome_at": T0.isoformat(),
    }
    assert wecom_events.welcome_code_of(event["attributes"]) == {
        "welcome_code": "WC9",
        "welcome_at": T0.isoformat(),
    }


async def test_the_fake_also_serves_as_an_asgi_app(clock, fake):
    fake.add_contact("staff_li", "wm_1")
    transport = httpx.ASGITransport(app=fake.asgi_app())
    async with httpx.AsyncClient(transport=transport) as http:
        message = OutboundMessage(1, "d1", "contact", "wm_1", "staff_li", [TEXT], mode="task")
        [result] = await _adapter(http, clock).send([message])
        bad = await http.get("https://qyapi.weixin.qq.com/cgi-bin/externalcontact/get")
    assert result.status is ResultStatus.SENT
    assert bad.json()["errcode"] == 40014  # no access token


async def test_a_group_sop_to_2500_groups_makes_two_tasks_through_the_dispatcher(
    engine, clock, settings, fake
):
    """Claim batches are smaller than a task (100 here, 500 by default): the
    claim gathers the occurrence's due rows, so batch boundaries do not split
    the task."""
    from factories import store_menu_spec
    from sqlmodel import select as sql_select

    from audiences.models import Account, GroupChat

    set_quota(engine, None)
    with session_scope(engine) as session:
        session.add(Account(external_id="staff_li", name="李"))
    for i in range(2_500):
        fake.add_group(f"wr_{i}", "staff_li")
    with session_scope(engine) as session:
        owner = session.exec(sql_select(Account.id)).one()
        session.add_all(
            GroupChat(
                external_id=f"wr_{i}",
                owner_account_id=owner,
                name=f"门店{i}",
                joined_at=T0,
                status="active",
                attributes={},
                member_count=0,
            )
            for i in range(2_500)
        )
    with session_scope(engine) as session:
        ids = list(session.exec(sql_select(GroupChat.id)).all())
    spec = store_menu_spec(
        channel=CHANNEL,
        touchpoints=[{"name": "menu", "timing": "+0m", "content": "今日菜单", "mode": "task"}],
    )
    template_id = publish(engine, spec, T0)
    enroll(engine, template_id, [(i, T0) for i in ids], T0)
    http = httpx.AsyncClient(transport=fake.transport())
    runtime = SchedulerRuntime(engine, clock, settings, http=http)
    stats = await runtime.dispatcher.run_once()
    await http.aclose()

    assert stats.claimed == 2_500
    tasks = list(fake.tasks.values())
    assert sorted((t.chat_type, len(t.targets)) for t in tasks) == [
        ("group", 500),
        ("group", 2_000),
    ]
    assert {r.status for r in deliveries(engine)} == {"sent"}
