"""Demo data: the three SOP scenarios as real templates, plus compressed-time
copies (clearly labelled 演示 · 时间压缩) so a newcomer sees deliveries arrive in
the mock channel within a minute."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from api.template_actions import system_actor
from audiences import service as audiences_service
from audiences.schemas import ContactIn, GroupIn
from scheduler.flows import changes, lifecycle
from sop_templates import approvals, library
from sop_templates import service as templates_service
from sop_templates.models import TemplateStatus
from sopbot.db import session_scope
from sopbot.settings import Settings

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


def load_demo(engine: Engine, now: datetime, settings: Settings | None = None) -> dict[str, int]:
    """Create and publish the demo templates, add demo contacts and groups and
    enroll them — through the same audience write path and the same publish as
    the API. Running it twice changes nothing. Where the workspace requires
    approval, the templates stay drafts for an approver (``drafts``)."""
    created = {"templates": 0, "enrolled": 0, "drafts": 0}
    settings = settings or Settings()
    with session_scope(engine) as session:
        audiences_service.ensure_account(session, "staff_demo_xiaowang", "客服小王")
        contacts = [
            changes.upsert_contact(
                session,
                ContactIn(
                    external_id=ext,
                    name=name,
                    account="staff_demo_xiaowang",
                    attributes=attrs,
                    tags=["spring-class-2027"],
                ),
                now,
            )
            for ext, name, attrs in DEMO_CONTACTS
        ]
        groups = [
            changes.upsert_group(
                session,
                GroupIn(external_id=ext, name=name, owner="staff_demo_xiaowang", tags=["store"]),
                now,
            )
            for ext, name in DEMO_GROUPS
        ]
        created["enrolled"] += sum(c.reaction.enrolled for _, c in contacts + groups)
        actor = system_actor(session, settings, now, name="demo")

        specs = [library.load(n) for n in ("new_friend", "tagged_class", "store_groups")]
        for spec in specs + compressed_specs():
            try:
                template = templates_service.find_template(session, spec["name"])
            except templates_service.NotFound:
                template = templates_service.create_template(session, spec, now)
                try:
                    with session.begin_nested():
                        outcome = lifecycle.publish(session, template.id, now, actor)  # type: ignore[arg-type]
                except approvals.ApprovalError:
                    created["drafts"] += 1
                    continue
                created["templates"] += 1
                created["enrolled"] += outcome.enrolled
            if template.status != TemplateStatus.PUBLISHED:
                continue
            targets = [t for t, _ in (contacts if template.target_kind == "contact" else groups)]
            result = lifecycle.enroll(
                session,
                template,
                [(t.id, now) for t in targets],  # type: ignore[misc]
                now,
                actor,
                named="demo targets",
            )
            created["enrolled"] += result.enrolled
    if not created["drafts"]:
        del created["drafts"]
    return created
