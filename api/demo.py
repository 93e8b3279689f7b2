"""Demo data: the three SOP scenarios as real templates, plus compressed-time
copies (clearly labelled 演示 · 时间压缩) so a newcomer sees deliveries arrive in
the mock channel within a minute."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from audiences import service as audiences_service
from audiences.schemas import ContactIn, GroupIn
from scheduler.outbox import service as scheduler_service
from sop_templates import library
from sop_templates import service as templates_service
from sopbot.db import session_scope

DEMO_CONTACTS = [
    ("wm_demo_zhangsan", "张三", {"city": "上海"}),
    ("wm_demo_lisi", "李四", {"city": "杭州"}),
    ("wm_demo_wangwu", "王五", {"city": "北京"}),
    ("wm_demo_zhaoliu", "赵六", {"city": "深圳"}),
    ("wm_demo_chenqi", "陈七", {"city": "成都"}),
]
DEMO_GROUPS = [
    ("wr_demo_store_xuhui", "徐汇店福利群"),
    ("wr_demo_store_jingan", "静安店福利群"),
    ("wr_demo_store_pudong", "浦东店福利群"),
]
COMPRESSED = "（演示 · 时间压缩）"


def compressed_specs() -> list[dict[str, Any]]:
    """The scenarios with hours turned into seconds and daily cron into every minute."""
    new_friend = copy.deepcopy(library.load("new_friend"))
    new_friend["name"] += COMPRESSED
    for tp, timing in zip(new_friend["touchpoints"], ["+0m", "+20s", "+40s"], strict=True):
        tp["timing"] = timing
    tagged = copy.deepcopy(library.load("tagged_class"))
    tagged["name"] += COMPRESSED
    for tp, timing in zip(tagged["touchpoints"], ["+10s", "+30s", "+50s"], strict=True):
        tp["timing"] = timing
    groups = copy.deepcopy(library.load("store_groups"))
    groups["name"] += COMPRESSED
    groups["touchpoints"] = groups["touchpoints"][:1]
    groups["touchpoints"][0]["timing"] = "cron * * * * *"
    return [new_friend, tagged, groups]


def load_demo(engine: Engine, now: datetime) -> dict[str, int]:
    """Create and publish the demo templates, add demo contacts and groups and
    enroll them. Running it twice changes nothing."""
    created = {"templates": 0, "enrolled": 0}
    with session_scope(engine) as session:
        contacts = [
            audiences_service.upsert_contact(
                session,
                ContactIn(
                    external_id=ext, name=name, account="staff_demo_xiaowang", attributes=attrs
                ),
                now,
            )
            for ext, name, attrs in DEMO_CONTACTS
        ]
        for contact in contacts:
            audiences_service.add_tag(session, "contact", contact.id, "spring-class-2027", now)  # type: ignore[arg-type]
        groups = [
            audiences_service.upsert_group(
                session,
                GroupIn(external_id=ext, name=name, owner="staff_demo_xiaowang", tags=["store"]),
                now,
            )
            for ext, name in DEMO_GROUPS
        ]
        account = audiences_service.ensure_account(session, "staff_demo_xiaowang")
        account.name = "客服小王"
        session.add(account)

        specs = [library.load(n) for n in ("new_friend", "tagged_class", "store_groups")]
        for spec in specs + compressed_specs():
            try:
                template = templates_service.find_template(session, spec["name"])
            except templates_service.NotFound:
                template = templates_service.create_template(session, spec, now)
                templates_service.publish(session, template.id, now)  # type: ignore[arg-type]
                created["templates"] += 1
            targets = contacts if template.target_kind == "contact" else groups
            result = scheduler_service.enroll(
                session,
                template,
                [(t.id, now) for t in targets],  # type: ignore[misc]
                now,
            )
            created["enrolled"] += result.enrolled
    return created
