"""A remind-mode SOP run by three staff members with 30 customers each, on a
fake WeCom that records the app messages (digests) it was asked to send."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from factories import add_contact, enroll, new_friend_spec, publish
from sqlalchemy import select
from sqlalchemy.engine import Engine

from audiences.models import Account
from channels.registry import ensure_instance
from sopbot.db import session_scope

T0 = datetime(2027, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
STAFF = ("staff_a", "staff_b", "staff_c")


class FakeWeCom:
    """WeCom's app-message API: every ``message/send`` is recorded."""

    def __init__(self) -> None:
        self.app_messages: list[dict[str, Any]] = []
        self.fail = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.rsplit("/cgi-bin/", 1)[-1]
        if path == "gettoken":
            return httpx.Response(
                200, json={"errcode": 0, "access_token": "tok", "expires_in": 7200}
            )
        if path == "message/send":
            if self.fail:
                return httpx.Response(200, json={"errcode": 60020, "errmsg": "not allow"})
            self.app_messages.append(json.loads(request.content))
            n = len(self.app_messages)
            return httpx.Response(200, json={"errcode": 0, "msgid": f"app-{n}", "invaliduser": ""})
        return httpx.Response(404)

    def to(self, userid: str) -> list[str]:
        return [m["text"]["content"] for m in self.app_messages if m["touser"] == userid]


def add_wecom(engine: Engine) -> None:
    with session_scope(engine) as session:
        ensure_instance(
            session, "wecom-a", "wecom", {"corp_id": "ww1", "corp_secret": "s", "agent_id": 1000002}
        )


def remind_spec(**overrides: Any) -> dict[str, Any]:
    spec = new_friend_spec(
        name="新客户跟进",
        channel="wecom-a",
        touchpoints=[
            {
                "name": "问候",
                "timing": "+0m",
                "mode": "remind",
                "content": [
                    "{{ contact.name }}您好，我是您的专属顾问",
                    {"image": "https://example.com/card.png"},
                ],
            }
        ],
    )
    spec.update(overrides)
    return spec


@dataclass
class World:
    template_id: int
    accounts: dict[str, int] = field(default_factory=dict)  # external id → account id
    contacts: dict[str, list[int]] = field(default_factory=dict)


def build(engine: Engine, per_staff: int = 30, spec: dict[str, Any] | None = None) -> World:
    """Publish the SOP and enroll ``per_staff`` customers of each staff member."""
    world = World(publish(engine, spec or remind_spec(), T0))
    targets = []
    for staff in STAFF:
        ids = [
            add_contact(engine, f"wm_{staff}_{i}", f"{staff}客户{i}", T0, account=staff)
            for i in range(per_staff)
        ]
        world.contacts[staff] = ids
        targets += [(c, T0) for c in ids]
    enroll(engine, world.template_id, targets, T0)
    with session_scope(engine) as session:
        for account in session.execute(select(Account)).scalars():
            world.accounts[account.external_id] = account.id  # type: ignore[assignment]
    return world
