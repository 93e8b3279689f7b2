"""Execution modes through the dispatcher: a WeCom mass-send task is recorded as
awaiting staff confirmation and resolved by polling; a reminder says so."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from factories import add_contact, deliveries, enroll, new_friend_spec, publish
from sqlmodel import Session, select

from channels.models import ChannelTask
from channels.registry import ensure_instance
from scheduler.outbox.tasks import open_tasks
from scheduler.runtime import SchedulerRuntime
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
SEND_TIME = int((T0 + timedelta(minutes=30)).timestamp())


class FakeWeCom:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.results: list[dict[str, Any]] = []  # get_groupmsg_send_result send_list
        self.poll_errcode = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.rsplit("/cgi-bin/", 1)[-1]
        body = json.loads(request.content) if request.content else {}
        self.calls.append((path, body))
        if path == "gettoken":
            return httpx.Response(
                200, json={"errcode": 0, "access_token": "tok", "expires_in": 7200}
            )
        if path == "externalcontact/add_msg_template":
            return httpx.Response(200, json={"errcode": 0, "msgid": "msg-1", "fail_list": []})
        if path == "externalcontact/get_groupmsg_send_result":
            if self.poll_errcode:
                return httpx.Response(200, json={"errcode": self.poll_errcode, "errmsg": "limit"})
            return httpx.Response(200, json={"errcode": 0, "send_list": self.results})
        if path == "message/send":
            return httpx.Response(200, json={"errcode": 0, "msgid": "app-1", "invaliduser": ""})
        return httpx.Response(404)

    def paths(self) -> list[str]:
        return [p for p, _ in self.calls if p != "gettoken"]


@pytest.fixture
def wecom(engine) -> FakeWeCom:
    with session_scope(engine) as session:
        ensure_instance(
            session, "wecom-a", "wecom", {"corp_id": "ww1", "corp_secret": "s", "agent_id": 1000002}
        )
    return FakeWeCom()


@pytest.fixture
async def wecom_runtime(engine, clock, settings, wecom):
    http = httpx.AsyncClient(transport=httpx.MockTransport(wecom))
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


def wecom_spec(mode: str) -> dict[str, Any]:
    return new_friend_spec(
        name=f"企微{mode}",
        channel="wecom-a",
        touchpoints=[{"name": "welcome", "timing": "+0m", "content": "欢迎！", "mode": mode}],
    )


def task_row(engine) -> ChannelTask:
    with Session(engine) as session:
        return session.exec(select(ChannelTask)).one()


async def test_task_is_awaiting_confirmation_until_the_poll_resolves_it(
    engine, clock, settings, wecom, wecom_runtime
):
    clock.set(T0)
    template_id = publish(engine, wecom_spec("task"), T0)
    contacts = [
        add_contact(engine, f"wm_{i}", f"客户{i}", T0, account="staff_li") for i in range(3)
    ]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)

    await wecom_runtime.dispatch_tick()
    assert wecom.paths() == ["externalcontact/add_msg_template"]  # one task for all three
    rows = deliveries(engine)
    assert {(r.status, r.provider_message_id) for r in rows} == {("sent", "msg-1")}
    assert {r.reason for r in rows} == {
        "mass-send task msg-1 created for staff staff_li; awaiting staff confirmation"
    }
    task = task_row(engine)
    assert (task.state, sorted(task.delivery_ids)) == ("awaiting", sorted(r.id for r in rows))
    with Session(engine) as session:  # what GET /api/channels/tasks lists
        assert [t.provider_task_id for t in open_tasks(session, "wecom-a")] == ["msg-1"]

    await wecom_runtime.poll_tasks_tick()  # not due yet
    assert "externalcontact/get_groupmsg_send_result" not in wecom.paths()

    wecom.results = [
        {"external_userid": "wm_0", "userid": "staff_li", "status": 1, "send_time": SEND_TIME},
        {"external_userid": "wm_1", "userid": "staff_li", "status": 2},
        {"external_userid": "wm_2", "userid": "staff_li", "status": 0},
    ]
    clock.advance(seconds=settings.task_poll_seconds)
    stats = await wecom_runtime.poll_tasks_tick()
    assert (stats.polled, stats.confirmed, stats.failed) == (1, 1, 1)
    assert wecom.calls[-1][1] == {"msgid": "msg-1", "userid": "staff_li", "limit": 1000}
    by_target = {r.target_id: r for r in deliveries(engine)}
    confirmed, refused, pending = (by_target[c] for c in contacts)
    assert confirmed.status == "sent"
    assert confirmed.reason == "confirmed by staff staff_li: mass-send task msg-1 delivered"
    assert confirmed.sent_at == T0 + timedelta(minutes=30)
    assert refused.status == "failed"
    assert refused.reason == "mass-send task msg-1: not a friend of the sender (any more)"
    assert refused.sent_at is None  # no longer counts against the contact's cap
    assert pending.status == "sent" and "awaiting staff confirmation" in pending.reason
    assert task_row(engine).delivery_ids == [pending.id]

    # Nobody confirms: after task_confirm_hours it is unknown, and the task is closed.
    clock.set(T0 + timedelta(hours=settings.task_confirm_hours))
    stats = await wecom_runtime.poll_tasks_tick()
    assert stats.unknown == 1
    pending = deliveries(engine, id=pending.id)[0]
    assert pending.status == "unknown"
    assert pending.reason == (
        "mass-send task msg-1: staff staff_li did not confirm within 72 h; outcome unknown"
    )
    assert task_row(engine).state == "expired"


async def test_poll_errors_are_kept_and_retried(engine, clock, settings, wecom, wecom_runtime):
    clock.set(T0)
    template_id = publish(engine, wecom_spec("task"), T0)
    contact = add_contact(engine, "wm_0", "客户0", T0, account="staff_li")
    enroll(engine, template_id, [(contact, T0)], T0)
    await wecom_runtime.dispatch_tick()

    wecom.results = [{"external_userid": "wm_0", "status": 1, "send_time": SEND_TIME}]
    wecom.poll_errcode = 45009  # WeCom: API frequency limit
    clock.advance(seconds=settings.task_poll_seconds)
    assert (await wecom_runtime.poll_tasks_tick()).errors == 1
    assert "45009" in task_row(engine).last_error
    assert deliveries(engine)[0].status == "sent"

    wecom.poll_errcode = 0
    clock.advance(seconds=max(60, settings.task_poll_seconds))
    assert (await wecom_runtime.poll_tasks_tick()).confirmed == 1
    assert task_row(engine).state == "done"


async def test_remind_mode_records_that_the_staff_member_was_told(
    engine, clock, settings, wecom, wecom_runtime
):
    """Without the staff inbox (SOPBOT_STAFF_INBOX=false): one app message per
    delivery, recorded as sent (tests/scheduler/staff: the inbox and digests)."""
    settings.staff_inbox = False
    clock.set(T0)
    template_id = publish(engine, wecom_spec("remind"), T0)
    contact = add_contact(engine, "wm_0", "王女士", T0, account="staff_li")
    enroll(engine, template_id, [(contact, T0)], T0)
    await wecom_runtime.dispatch_tick()
    (row,) = deliveries(engine)
    assert (row.status, row.provider_message_id) == ("sent", "app-1")
    assert row.reason == "reminder sent to staff account staff_li; they send it by hand"
    path, body = wecom.calls[-1]
    assert path == "message/send" and body["touser"] == "staff_li"
    assert "王女士" in body["text"]["content"]
