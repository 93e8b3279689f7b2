"""A render over its budget at send time fails its own delivery, with the
reason, and nothing else waits for it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
# Passes validation (the sample contact is 张三), loops 9,000,000 times for anyone else.
SLOW_FOR_REAL_CONTACTS = (
    "{% for x in range(3000 if contact.name != '张三' else 0) %}"
    "{% for y in range(3000) %}{% endfor %}{% endfor %}你好"
)


async def test_a_budget_overrun_fails_only_its_own_delivery(engine, clock, runtime):
    clock.set(T0)
    hostile = publish(engine, new_friend_spec(name="慢模板", touchpoints=[
        {"name": "slow", "timing": "+0m", "content": SLOW_FOR_REAL_CONTACTS}
    ]), T0)  # fmt: skip
    healthy = publish(engine, new_friend_spec(name="好模板", touchpoints=[
        {"name": "hello", "timing": "+0m", "content": "{{ contact.name }}，你好"}
    ]), T0)  # fmt: skip
    contact = add_contact(engine, "wm_1", "李四", T0)
    enroll(engine, hostile, [(contact, T0)], T0)
    enroll(engine, healthy, [(contact, T0)], T0)
    started = time.perf_counter()
    await runtime.dispatch_tick()
    assert time.perf_counter() - started < 2.0
    by_template = {row.template_id: row for row in deliveries(engine)}
    assert by_template[healthy].status == "sent"
    assert by_template[healthy].sent_at.replace(tzinfo=UTC) == T0  # on time
    assert by_template[hostile].status == "failed"
    assert "200 ms" in by_template[hostile].reason
    assert [m.delivery_id for m in mock_sends(engine)] == [by_template[healthy].id]
