"""mode: welcome against the fake WeCom: the add event's WelcomeCode greets the
new friend once, within its validity; without one the declared fallback runs
and the delivery log says why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from factories import deliveries, new_friend_spec
from wecom_kit import CHANNEL, CONFIG, befriend, create_and_publish

from channels.registry import ensure_instance
from channels.wecom_fake import FakeWeCom
from scheduler.runtime import SchedulerRuntime
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def fake(engine, clock) -> FakeWeCom:
    with session_scope(engine) as session:
        ensure_instance(session, CHANNEL, "wecom", CONFIG)
    clock.set(T0)
    return FakeWeCom(clock)


@pytest.fixture
async def wecom_runtime(engine, clock, settings, fake):
    http = httpx.AsyncClient(transport=fake.transport())
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


def welcome_spec(fallback: str | None = None) -> dict[str, Any]:
    touchpoint: dict[str, Any] = {
        "name": "welcome",
        "timing": "+0m",
        "content": [
            "欢迎！请填写问卷",
            {"link": {"title": "问卷", "url": "https://example.com/q"}},
        ],
        "mode": "welcome",
    }
    if fallback:
        touchpoint["fallback"] = fallback
    return new_friend_spec(
        name="欢迎语", channel=CHANNEL, segment={"kind": "new_friends"}, touchpoints=[touchpoint]
    )


async def test_add_event_code_greets_once_within_validity_and_creates_no_task(
    engine, clock, fake, wecom_runtime
):
    create_and_publish(engine, welcome_spec(), T0)
    befriend(engine, fake, T0, "staff_li", "wm_1", name="王女士")
    clock.advance(seconds=1)
    wecom_runtime.apply_inbox_now()
    await wecom_runtime.dispatch_tick()
    await wecom_runtime.dispatch_tick()  # nothing more to send

    assert fake.calls["externalcontact/send_welcome_msg"] == 1
    assert "externalcontact/add_msg_template" not in fake.calls
    assert not fake.tasks
    [welcome] = fake.welcomes
    assert (welcome["userid"], welcome["external_userid"]) == ("staff_li", "wm_1")
    assert welcome["text"] == {"content": "欢迎！请填写问卷"}
    assert welcome["attachments"][0]["link"]["url"] == "https://example.com/q"
    [row] = deliveries(engine)
    assert row.status == "sent" and row.provider_message_id is None
    assert "WelcomeCode" in row.reason and "send_welcome_msg" in row.reason


async def test_no_code_falls_back_to_a_task_and_says_why(engine, clock, fake, wecom_runtime):
    fake.console_welcome.add("staff_li")  # WeCom issues no code then
    create_and_publish(engine, welcome_spec("task"), T0)
    assert befriend(engine, fake, T0, "staff_li", "wm_1") is None
    wecom_runtime.apply_inbox_now()
    await wecom_runtime.dispatch_tick()

    assert "externalcontact/send_welcome_msg" not in fake.calls
    [task] = fake.tasks.values()
    assert task.targets == ["wm_1"]
    [row] = deliveries(engine)
    assert row.status == "sent" and row.provider_message_id == task.msgid
    assert row.reason.startswith("welcome fell back to a mass-send task: no WelcomeCode")
    assert "awaiting staff confirmation" in row.reason


async def test_expired_code_runs_the_skip_fallback(engine, clock, fake, wecom_runtime):
    create_and_publish(engine, welcome_spec("skip"), T0)
    befriend(engine, fake, T0, "staff_li", "wm_1")
    clock.advance(seconds=25)  # the inbox was slow: the code is past its 20 s
    wecom_runtime.apply_inbox_now()
    await wecom_runtime.dispatch_tick()

    assert "externalcontact/send_welcome_msg" not in fake.calls
    assert not fake.tasks
    [row] = deliveries(engine)
    assert row.status == "skipped"
    assert row.reason.startswith("welcome skipped by its fallback: WelcomeCode expired: 25 s")


async def test_code_already_used_falls_back_to_a_reminder_with_wecoms_reason(
    engine, clock, fake, wecom_runtime
):
    create_and_publish(engine, welcome_spec("remind"), T0)
    code = befriend(engine, fake, T0, "staff_li", "wm_1")
    fake.welcome_codes[code].used = True  # another app greeted first
    wecom_runtime.apply_inbox_now()
    await wecom_runtime.dispatch_tick()

    assert fake.calls["externalcontact/send_welcome_msg"] == 1
    [reminder] = fake.app_messages
    assert reminder["touser"] == "staff_li"
    [row] = deliveries(engine)
    assert row.status == "sent" and row.provider_message_id is None
    assert row.reason.startswith("welcome fell back to a reminder to staff staff_li")
    assert "errcode 41051" in row.reason


def test_fallback_only_with_mode_welcome():
    from pydantic import ValidationError

    from sop_templates.schemas import TouchpointSpec

    with pytest.raises(ValidationError, match="fallback is only for mode welcome"):
        TouchpointSpec.model_validate(
            {"name": "a", "timing": "+0m", "content": "hi", "mode": "task", "fallback": "skip"}
        )
    assert timedelta(seconds=20)  # the validity the adapter checks, see wecom_welcome


async def test_a_welcome_that_became_a_task_counts_against_the_quota(
    engine, clock, fake, wecom_runtime
):
    from factories import enroll, publish
    from sqlmodel import Session, select

    from audiences.models import Contact
    from channels.models import ChannelInstance

    with session_scope(engine) as session:
        instance = session.exec(
            select(ChannelInstance).where(ChannelInstance.name == CHANNEL)
        ).one()
        instance.config = {**CONFIG, "mass_send_quota": "1_per_day"}
        session.add(instance)
    fake.console_welcome.add("staff_li")
    create_and_publish(engine, welcome_spec("task"), T0)
    befriend(engine, fake, T0, "staff_li", "wm_1")
    wecom_runtime.apply_inbox_now()
    await wecom_runtime.dispatch_tick()  # the welcome, as a mass-send task

    later = new_friend_spec(
        name="活动",
        channel=CHANNEL,
        touchpoints=[{"name": "promo", "timing": "+0m", "content": "周末活动", "mode": "task"}],
    )
    clock.advance(hours=1)
    template_id = publish(engine, later, clock.now())
    with Session(engine) as session:
        contact_id = session.exec(select(Contact.id)).one()
    enroll(engine, template_id, [(contact_id, clock.now())], clock.now())
    await wecom_runtime.dispatch_tick()

    assert len(fake.tasks) == 1
    promo = [r for r in deliveries(engine) if r.template_id == template_id][0]
    assert promo.status == "scheduled"
    assert promo.reason.startswith("WeCom mass-send quota (customer wm_1)")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"timing": "+3h"}, "not at +0"),
        ({"timing": "day 1 20:00"}, "not an offset"),
    ],
)
def test_a_welcome_is_only_for_the_new_friend_start(change, why):
    from api import error_codes
    from sop_templates.service import TemplateValidationError, parse_spec

    spec = welcome_spec("task")
    spec["touchpoints"][0].update(change)
    with pytest.raises(TemplateValidationError) as caught:
        parse_spec(spec)
    [(location, message)] = caught.value.problems
    assert location == "touchpoints[0].mode", why
    code, params = error_codes.classify(location, message)
    assert code == "welcome_placement"
    assert error_codes.render(code, params, "zh_CN", location).startswith(
        "欢迎语只能用于新好友 SOP"
    )


def test_a_welcome_in_a_tagged_sop_is_refused():
    from sop_templates.service import TemplateValidationError, parse_spec

    spec = welcome_spec("task")
    spec.update(anchor="tag", anchor_tag="vip", segment={"kind": "tagged", "tags": "vip"})
    with pytest.raises(TemplateValidationError, match="mode welcome is only for a new-friend"):
        parse_spec(spec)
