"""A small, fully known delivery log for the analytics tests: real templates,
touchpoints, accounts, contacts, groups, tags and enrollments, and deliveries
written directly (Core inserts) with exactly the attributes a test needs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from factories import new_friend_spec, publish, store_menu_spec
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from audiences.models import Account, Contact, GroupChat, Tag, TagAssignment
from scheduler.analytics.models import (
    DeliveryAccountRollup,
    DeliveryDailyRollup,
    DeliveryRollupHold,
    DeliveryRollupState,
)
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment
from sop_templates.models import SopTemplate, Touchpoint

T = lambda model: model.__table__  # noqa: E731


@dataclass
class Target:
    kind: str
    id: int
    name: str
    account_id: int | None
    tags: set[str]
    enrollment_id: int = 0


@dataclass
class Row:
    """What a test knows about one delivery it wrote."""

    id: int
    template_id: int
    version_id: int
    touchpoint_id: int
    target: Target
    channel: str
    status: str
    reason: str | None
    due_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    rendered: list[dict[str, Any]] | None


@dataclass
class World:
    engine: Engine
    now: datetime
    friend_template: int = 0
    friend_version: int = 0
    friend_touchpoints: list[int] = field(default_factory=list)
    group_template: int = 0
    group_version: int = 0
    group_touchpoints: list[int] = field(default_factory=list)
    accounts: dict[str, int] = field(default_factory=dict)
    contacts: list[Target] = field(default_factory=list)
    groups: list[Target] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    _occurrence: itertools.count = field(default_factory=lambda: itertools.count(1))

    def add(
        self,
        target: Target,
        *,
        status: str = DeliveryStatus.SENT,
        due_at: datetime,
        touchpoint: int = 0,
        late: timedelta | None = None,
        reason: str | None = None,
        channel: str = "mock",
        finished_at: datetime | None = None,
        rendered: list[dict[str, Any]] | None = None,
        created_at: datetime | None = None,
    ) -> Row:
        """Write one delivery. Sent rows get ``sent_at = due_at + late``; finished
        rows a finish time (the send time, or ``due_at`` + 1 s) unless given."""
        is_contact = target.kind == "contact"
        template = self.friend_template if is_contact else self.group_template
        version = self.friend_version if is_contact else self.group_version
        tp_id = (self.friend_touchpoints if is_contact else self.group_touchpoints)[touchpoint]
        sent_at = due_at + (late or timedelta()) if status == DeliveryStatus.SENT else None
        if finished_at is None and status in DeliveryStatus.TERMINAL:
            finished_at = sent_at or due_at + timedelta(seconds=1)
        if rendered is None and status == DeliveryStatus.SENT:
            rendered = [{"kind": "text", "text": f"{target.name}，你好"}]
        with self.engine.begin() as conn:
            row_id = conn.execute(
                insert(T(Delivery)).values(
                    enrollment_id=target.enrollment_id,
                    touchpoint_id=tp_id,
                    occurrence=next(self._occurrence),
                    template_id=template,
                    version_id=version,
                    target_kind=target.kind,
                    target_id=target.id,
                    channel=channel,
                    mode="send",
                    due_at=due_at,
                    run_at=due_at,
                    expires_at=due_at + timedelta(hours=1),
                    status=status,
                    reason=reason,
                    attempts=1 if status in (DeliveryStatus.SENT, DeliveryStatus.FAILED) else 0,
                    created_at=created_at or min(due_at, self.now),
                    sent_at=sent_at,
                    finished_at=finished_at,
                    provider_message_id=f"mock-{target.id}" if sent_at else None,
                    rendered=rendered,
                )
            ).inserted_primary_key[0]
        row = Row(
            row_id,
            template,
            version,
            tp_id,
            target,
            channel,
            status,
            reason,
            due_at,
            sent_at,
            finished_at,
            rendered,
        )
        self.rows.append(row)
        return row

    def forget_deliveries(self) -> None:
        """Empty the log and the rollups (the templates, targets and enrollments stay)."""
        with self.engine.begin() as conn:
            for model in (
                DeliveryDailyRollup,
                DeliveryAccountRollup,
                DeliveryRollupHold,
                DeliveryRollupState,
                Delivery,
            ):
                conn.execute(delete(T(model)))
        self.rows.clear()


CONTACT_NAMES = ["张三", '李四, "小李"', "王五\n第二行", "Zoë", "赵六"]


def build_world(engine: Engine, now: datetime) -> World:
    """Two templates (a 3-touchpoint new-friend SOP for contacts, a cron menu for
    groups), two staff accounts, five contacts and two groups, tags, and one
    enrollment per target."""
    world = World(engine, now)
    world.friend_template = publish(engine, new_friend_spec(), now - timedelta(days=60))
    world.group_template = publish(engine, store_menu_spec(), now - timedelta(days=60))
    with engine.begin() as conn:
        for template_id, attr in (
            (world.friend_template, "friend"),
            (world.group_template, "group"),
        ):
            version = conn.execute(
                select(T(SopTemplate).c.current_version_id).where(
                    T(SopTemplate).c.id == template_id
                )
            ).scalar_one()
            setattr(world, f"{attr}_version", version)
            setattr(
                world,
                f"{attr}_touchpoints",
                list(
                    conn.execute(
                        select(T(Touchpoint).c.id)
                        .where(T(Touchpoint).c.version_id == version)
                        .order_by(T(Touchpoint).c.position)
                    ).scalars()
                ),
            )
        for key, name in (("a", "客服小王"), ("b", "客服小李")):
            world.accounts[key] = conn.execute(
                insert(T(Account)).values(external_id=f"staff_{key}", name=name, channel="mock")
            ).inserted_primary_key[0]
        tag_ids = {
            name: conn.execute(insert(T(Tag)).values(name=name)).inserted_primary_key[0]
            for name in ("purchased", "spring-class-2027", "store")
        }
        for i, name in enumerate(CONTACT_NAMES):
            account = world.accounts["a" if i % 2 == 0 else "b"]
            contact_id = conn.execute(
                insert(T(Contact)).values(
                    external_id=f"wm_{i}",
                    account_id=account,
                    name=name,
                    joined_at=now - timedelta(days=40),
                    status="active",
                    attributes={},
                )
            ).inserted_primary_key[0]
            tags = {"spring-class-2027"} | ({"purchased"} if i in (1, 3) else set())
            world.contacts.append(Target("contact", contact_id, name, account, tags))
        for i, name in enumerate(["门店1群", "门店2群"]):
            group_id = conn.execute(
                insert(T(GroupChat)).values(
                    external_id=f"wr_{i}",
                    owner_account_id=world.accounts["b"],
                    name=name,
                    member_count=10,
                    joined_at=now - timedelta(days=40),
                    status="active",
                    attributes={},
                )
            ).inserted_primary_key[0]
            world.groups.append(Target("group", group_id, name, world.accounts["b"], {"store"}))
        for target in world.contacts + world.groups:
            for tag in target.tags:
                conn.execute(
                    insert(T(TagAssignment)).values(
                        tag_id=tag_ids[tag],
                        target_kind=target.kind,
                        target_id=target.id,
                        tagged_at=now - timedelta(days=30),
                    )
                )
            is_contact = target.kind == "contact"
            target.enrollment_id = conn.execute(
                insert(T(Enrollment)).values(
                    template_id=world.friend_template if is_contact else world.group_template,
                    version_id=world.friend_version if is_contact else world.group_version,
                    target_kind=target.kind,
                    target_id=target.id,
                    cycle=0,
                    anchor_at=now - timedelta(days=40),
                    enrolled_at=now - timedelta(days=40),
                    status="active",
                )
            ).inserted_primary_key[0]
    return world
