"""The segment builder's account (员工账号, by display name) and attribute
(城市=上海) chips: the live count honours them, the saved segment keeps them,
and an SOP started from it enrolls exactly the matching contacts. Tag groups
arrange the tag picker; bad attribute filters get a Chinese message."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from auth_helpers import ui_login as login
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from audiences.schemas import ContactIn
from scheduler.flows import changes
from scheduler.outbox.models import Enrollment
from sopbot.db import session_scope

JOIN = datetime(2027, 3, 2, 13, 30, tzinfo=UTC)


@pytest.fixture
def client(engine, clock, settings):
    clock.set(JOIN)
    with TestClient(create_app(settings, engine=engine, clock=clock, run_scheduler=False)) as c:
        yield c


def _world(engine) -> None:
    from audiences import service as audiences_service

    with session_scope(engine) as session:
        audiences_service.save_account(session, "wx_staff_1", "客服小王")
        audiences_service.save_account(session, "wx_staff_2", "客服小李")
        rows = [
            ("c1", "wx_staff_1", "上海"),
            ("c2", "wx_staff_1", "北京"),
            ("c3", "wx_staff_2", "上海"),
            ("c4", "wx_staff_1", "上海"),
        ]
        for ext, account, city in rows:
            changes.upsert_contact(
                session,
                ContactIn(
                    external_id=ext,
                    account=account,
                    name=ext,
                    joined_at=JOIN,
                    tags=["春季班"],
                    attributes={"城市": city},
                ),
                JOIN,
            )
        changes.set_tag_group(session, ["春季班"], "课程", JOIN)


def test_account_and_attribute_chips_count_save_and_enroll(client, engine, clock):
    csrf = login(client, engine, clock)
    _world(engine)
    page = client.get("/segments/build?all=春季班")
    assert re.search(r'id="seg-live-count">当前 4 个客户<', page.text)
    assert 'data-chip="account:客服小王"' in page.text  # accounts by display name
    assert 'data-chip="attr:城市=上海"' in page.text  # attribute values offered as chips
    assert 'data-chip-group="课程"' in page.text  # the tag picker by tag group

    page = client.get("/segments/build?all=春季班&account=wx_staff_1&attr=城市=上海")
    assert re.search(r'id="seg-live-count">当前 2 个客户<', page.text)
    page = client.get("/segments/build?all=春季班&attr_new=城市")
    assert "属性筛选请写成 名称=值" in page.text

    saved = client.post(
        "/segments/build",
        data={
            "csrf_token": csrf,
            "all": "春季班",
            "account": "wx_staff_1",
            "attr": "城市=上海",
            "name": "上海小王的春季班",
        },
    )
    assert "人群已保存" in saved.text
    assert 'data-chip="attr:城市=上海" checked' in saved.text
    assert 'value="wx_staff_1" data-chip="account:客服小王" checked' in saved.text
    segment_id = int(re.search(r"/segments/saved/(\d+)/sop", saved.text).group(1))

    page = client.post(
        f"/segments/saved/{segment_id}/sop", data={"csrf_token": csrf, "start": "fixed"}
    )
    template_id = int(re.search(r"/templates/(\d+)", str(page.url)).group(1))
    draft = client.get(f"/api/templates/{template_id}").json()["draft"]
    assert draft["segment"]["accounts"] == ["wx_staff_1"]
    assert draft["segment"]["attributes"] == {"城市": {"eq": "上海"}}
    assert (
        client.post(f"/templates/{template_id}/publish", data={"csrf_token": csrf}).status_code
        == 200
    )
    with session_scope(engine) as session:
        enrolled = session.execute(
            select(Enrollment.target_id).where(Enrollment.template_id == template_id)
        ).scalars()
        assert sorted(enrolled) == [1, 4]  # c1 and c4: 客服小王's, in 上海


def test_tag_groups_are_created_moved_and_renamed(client, engine, clock):
    csrf = login(client, engine, clock)
    _world(engine)
    page = client.post(
        "/tags/group",
        data={"csrf_token": csrf, "group": "城市标签", "new_tag": "上海客户"},
    )
    assert "1 个标签已移入标签组“城市标签”" in page.text
    assert 'data-tag-group="城市标签"' in page.text and 'data-tag-group="课程"' in page.text
    page = client.post(
        "/tags/group/rename", data={"csrf_token": csrf, "old": "课程", "new": "课程标签"}
    )
    assert "标签组“课程”已改名为“课程标签”" in page.text
    assert 'data-tag="春季班" data-group="课程标签"' in page.text
    page = client.post("/tags/group", data={"csrf_token": csrf, "group": "x"})
    assert "请至少勾选一个标签" in page.text
    page = client.post(
        "/tags/group/rename", data={"csrf_token": csrf, "old": "没有的组", "new": "新组"}
    )
    assert "没有名为“没有的组”的标签组" in page.text
    # taken out of any group
    page = client.post("/tags/group", data={"csrf_token": csrf, "group": "", "tags": "春季班"})
    assert 'data-tag="春季班" data-group=""' in page.text
