"""Shared set-up for tests that run sopbot against the fake WeCom server."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from audiences import inbox, wecom_events
from channels.wecom_fake import FakeWeCom
from scheduler.flows import lifecycle
from sop_templates import service as templates_service
from sopbot.db import session_scope

CHANNEL = "wecom-a"
CONFIG = {"corp_id": "ww_corp", "corp_secret": "corp-secret", "agent_id": 1000002}


def contact_callback(
    engine: Any, now: datetime, change: str, user: str, external: str, **extra: str
) -> None:
    """Store a change_external_contact callback as the callback route does."""
    fields = {
        "ToUserName": "ww_corp",
        "FromUserName": "sys",
        "CreateTime": str(int(now.timestamp())),
        "MsgType": "event",
        "Event": "change_external_contact",
        "ChangeType": change,
        "UserID": user,
        "ExternalUserID": external,
        **extra,
    }
    with session_scope(engine) as session:
        inbox.enqueue(
            session,
            dedupe_key=wecom_events.dedupe_key(fields),
            source=wecom_events.SOURCE,
            kind=wecom_events.event_kind(fields),
            payload={"fields": fields},
            now=now,
        )


def befriend(
    engine: Any, fake: FakeWeCom, now: datetime, user: str, external: str, **kw: Any
) -> str | None:
    """A customer adds ``user`` in WeCom; the callback (with its WelcomeCode) arrives."""
    code = fake.add_contact(user, external, **kw)
    extra = {"WelcomeCode": code} if code else {}
    contact_callback(engine, now, "add_external_contact", user, external, **extra)
    return code


def _no_audit(action: str, template_id: int, summary: str, detail: Any) -> None:
    pass


def create_and_publish(engine: Any, spec: dict[str, Any], now: datetime) -> int:
    """Create a template and publish it as the API does (enrolling its segment)."""
    actor = lifecycle.Actor(require_approval=False, audit=_no_audit)
    with session_scope(engine) as session:
        template = templates_service.create_template(session, spec, now)
        lifecycle.publish(session, template.id, now, actor)  # type: ignore[arg-type]
        return template.id  # type: ignore[return-value]
