"""Publishing renders content for real members of the segment and checks the
bound channel's own limits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from factories import add_contact, new_friend_spec

from channels.models import ChannelInstance
from scheduler.flows import lifecycle
from sop_templates import service as templates_service
from sop_templates.service import TemplateValidationError
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
SLOW_FOR_REAL_CONTACTS = (
    "{% for x in range(3000 if contact.name != '张三' else 0) %}"
    "{% for y in range(3000) %}{% endfor %}{% endfor %}你好"
)


def _publish(engine, spec):
    with session_scope(engine) as session:
        template = templates_service.create_template(session, spec, T0)
        actor = lifecycle.Actor(require_approval=False, audit=lambda *_: None)
        return lifecycle.publish(session, template.id, T0, actor)  # type: ignore[arg-type]


def test_publishing_renders_for_real_members_of_the_segment(engine):
    add_contact(engine, "wm_1", "王五", T0)
    spec = new_friend_spec(
        segment={"kind": "new_friends"},
        touchpoints=[{"name": "a", "timing": "+0m", "content": SLOW_FOR_REAL_CONTACTS}],
    )
    with pytest.raises(TemplateValidationError) as caught:
        _publish(engine, spec)  # the sample contact (张三) passes; 王五 does not
    message = dict(caught.value.problems)["touchpoints[0].content[0].text"]
    assert "200 ms" in message and "王五" in message


def test_wecom_text_limit_is_checked_with_the_channel_named(engine):
    with session_scope(engine) as session:
        session.add(ChannelInstance(name="wecom-corp", adapter="wecom", config={}))
    long_text = "欢迎" * 700  # 4,200 bytes: over WeCom's 4,000 per mass send
    spec = new_friend_spec(
        channel="wecom-corp",
        touchpoints=[{"name": "a", "timing": "+0m", "content": long_text}],
    )
    with pytest.raises(TemplateValidationError) as caught:
        _publish(engine, spec)
    message = dict(caught.value.problems)["touchpoints[0].content"]
    assert "wecom-corp" in message and "4000" in message
    ok = new_friend_spec(name="短", channel="wecom-corp", touchpoints=[
        {"name": "a", "timing": "+0m", "content": "欢迎" * 600}
    ])  # fmt: skip
    assert _publish(engine, ok).version.version == 1
