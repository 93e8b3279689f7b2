"""Two hours with no worker running, then one starts: deliveries still within
their grace period go out late (lateness recorded), the ones past it become
`missed` with a reason; nothing disappears. (The same, on a driven clock, is
covered in tests/scheduler; this is the process-level variant.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from harness import add_mock_channel, now, pending, start_worker, wait_until, witness
from sqlalchemy import select

from audiences.models import Account, Contact
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.models import Delivery
from sop_templates import service as templates_service
from sopbot.db import session_scope

pytestmark = pytest.mark.postgres


def test_restart_after_two_hours_sends_within_grace_and_misses_the_rest(
    scale_url, scale_engine, workdir
):
    add_mock_channel(scale_engine, "mock")
    down_since = now() - timedelta(hours=2)
    spec = {
        "name": "停机演练",
        "target": "contact",
        "timezone": "Asia/Shanghai",
        "anchor": "join",
        "channel": "mock",
        "touchpoints": [
            {"name": "patient", "timing": "+0m", "grace": "6h", "content": ["{{ contact.name }}"]},
            {"name": "urgent", "timing": "+1m", "grace": "30m", "content": ["{{ contact.name }}"]},
        ],
    }
    n = 50
    with session_scope(scale_engine) as session:
        template = templates_service.create_template(session, spec, down_since)
        templates_service.freeze_draft(session, template.id, down_since)
        account = Account(external_id="staff", name="客服", channel="mock")
        session.add(account)
        session.flush()
        contacts = [
            Contact(
                external_id=f"wm_{i}",
                account_id=account.id,
                name=f"客户{i}",
                joined_at=down_since,
                status="active",
                attributes={},
            )
            for i in range(n)
        ]
        session.add_all(contacts)
        session.flush()
        # Enrolled just before the outage; every delivery was due during it.
        scheduler_service.enroll(
            session, template, [(c.id, down_since) for c in contacts], down_since
        )

    worker = start_worker(scale_url, "w1", workdir)
    try:
        wait_until(lambda: pending(scale_engine) == 0, 60, what="caught up")
        assert worker.terminate() == 0
    finally:
        worker.close()

    seen = witness(scale_engine)
    assert seen.statuses == {"sent": n, "missed": n}
    assert seen.mock_distinct == n and seen.duplicates == 0
    with scale_engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.status, Delivery.due_at, Delivery.sent_at, Delivery.reason)
        ).all()
    for row in rows:
        if row.status == "sent":
            assert row.sent_at - row.due_at >= timedelta(hours=2) - timedelta(minutes=1)
        else:
            assert "grace period" in row.reason
