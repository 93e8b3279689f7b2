"""Operators change the audience in the UI (no browser): add a contact, tag,
untag and remove one, a selection or every row a filter matches — through the
audience write path, so tagged SOPs enroll — staff accounts by display name, and
the CSV import (GBK, errors by line, display names)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from auth_helpers import make_user
from factories import add_contact, publish
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from audiences.models import Account, Contact
from scheduler.outbox.models import Enrollment
from sop_templates import library
from sopbot.db import session_scope

JOIN = datetime(2027, 3, 2, 13, 30, tzinfo=UTC)


@pytest.fixture
def client(engine, clock, settings):
    clock.set(JOIN)
    with TestClient(create_app(settings, engine=engine, clock=clock, run_scheduler=False)) as c:
        yield c


def login(client, engine, clock, username="wang", roles=("operator",)) -> str:
    make_user(engine, clock.now(), username, list(roles))
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    done = client.post(
        "/login", data={"username": username, "password": "test-password", "csrf_token": token}
    )
    return re.search(r'name="csrf-token" content="([^"]+)"', done.text).group(1)


def tagged_sop(engine, tag="春季班") -> int:
    spec = library.load("tagged_class")
    spec.update(anchor_tag=tag, segment={"tags": tag})
    return publish(engine, spec, JOIN)


def enrolled(engine, template_id) -> set[int]:
    with session_scope(engine) as session:
        return set(
            session.execute(
                select(Enrollment.target_id).where(Enrollment.template_id == template_id)
            ).scalars()
        )


def test_bulk_tag_the_ticked_rows_enrolls_them_and_says_so(client, engine, clock):
    csrf = login(client, engine, clock)
    sop = tagged_sop(engine)
    ids = [add_contact(engine, f"wm_{i}", f"客户{i}", JOIN) for i in range(5)]
    page = client.post(
        "/contacts/bulk",
        data={"csrf_token": csrf, "action": "tag", "tags": "春季班", "ids": ids[:3]},
    )
    assert page.status_code == 200
    flash = re.search(r'id="flash">([^<]+)<', page.text).group(1)
    assert "已为 3 个客户打上标签 春季班" in flash and "1 个 SOP 入组 3 人" in flash
    assert enrolled(engine, sop) == set(ids[:3])
    # untag one: the tag is gone (the SOP's exit rules decide whether it leaves)
    page = client.post(
        "/contacts/bulk",
        data={"csrf_token": csrf, "action": "untag", "tags": "春季班", "ids": [ids[0]]},
    )
    assert "已为 1 个客户移除标签 春季班" in page.text
    assert "春季班" not in client.get(f"/contacts/{ids[0]}").text.split("<h1")[1][:400]


def test_all_matching_the_filter_and_remove(client, engine, clock):
    csrf = login(client, engine, clock)
    for i in range(4):
        add_contact(engine, f"a_{i}", f"甲{i}", JOIN)
    add_contact(engine, "b_0", "乙", JOIN)
    page = client.post(
        "/contacts/bulk",
        data={"csrf_token": csrf, "action": "tag", "tags": "甲组", "q": "a_", "all_matching": "1"},
    )
    assert "已为 4 个客户打上标签 甲组" in page.text
    assert "共 4 个" in client.get("/contacts?tag=甲组").text
    page = client.post(
        "/contacts/bulk",
        data={"csrf_token": csrf, "action": "remove", "tag": "甲组", "all_matching": "1"},
    )
    assert "已移除 4 个客户" in page.text
    with session_scope(engine) as session:
        statuses = dict(session.execute(select(Contact.external_id, Contact.status)).all())
    assert statuses == {
        "a_0": "deleted",
        "a_1": "deleted",
        "a_2": "deleted",
        "a_3": "deleted",
        "b_0": "active",
    }


def test_bulk_without_rows_or_tags_says_what_is_missing(client, engine, clock):
    csrf = login(client, engine, clock)
    page = client.post("/contacts/bulk", data={"csrf_token": csrf, "action": "tag", "tags": "x"})
    assert "请至少勾选一行" in page.text
    cid = add_contact(engine, "wm_1", "张三", JOIN)
    page = client.post("/contacts/bulk", data={"csrf_token": csrf, "action": "tag", "ids": cid})
    assert "请填写要添加或移除的标签" in page.text


def test_accounts_by_display_name_everywhere(client, engine, clock):
    csrf = login(client, engine, clock)
    page = client.post(
        "/staff", data={"csrf_token": csrf, "external_id": "wangxe", "name": "客服小王"}
    )
    assert "客服小王" in page.text and "已保存" in page.text
    # the contact form takes the display name too
    page = client.post(
        "/contacts/new",
        data={
            "csrf_token": csrf,
            "external_id": "wm_9",
            "name": "李四",
            "account": "客服小王",
            "tags": "vip",
        },
    )
    assert "已保存" in page.text
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Account)) == 1
    assert "李四" in client.get("/contacts?account=客服小王").text
    assert "李四" not in client.get("/contacts?account=nobody").text


GBK_CSV = "外部联系人ID,姓名,员工账号,标签,添加时间\r\n" + "".join(
    f"wm{i:03d},客户{i},客服小王,春季班,2027-03-01 21:30\r\n" for i in range(5)
)


def test_import_check_shows_every_bad_line_then_imports(client, engine, clock):
    csrf = login(client, engine, clock)
    client.post("/staff", data={"csrf_token": csrf, "external_id": "wangxe", "name": "客服小王"})
    bad = GBK_CSV + "wm100,坏日期,客服小王,,昨天\r\n,无ID,客服小王,,\r\nwm101,无账号,客服老李,,\r\n"
    files = {"file": ("客户.csv", bad.encode("gbk"), "text/csv")}
    page = client.post(
        "/contacts/import",
        data={"csrf_token": csrf, "mode": "check", "encoding": "auto"},
        files=files,
    )
    assert page.status_code == 200
    lines = re.findall(r'<tr data-line="(\d+)">', page.text)
    assert lines == ["7", "8", "9"]
    assert "不是日期时间" in page.text and "未知的员工账号 客服老李" in page.text
    assert "没有导入任何数据" in page.text
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 0
    # fixed: imports, accounts matched by display name
    files = {"file": ("客户.csv", GBK_CSV.encode("gbk"), "text/csv")}
    page = client.post(
        "/contacts/import",
        data={"csrf_token": csrf, "mode": "import", "encoding": "gb18030"},
        files=files,
    )
    assert "已导入 5 个客户" in page.text
    with session_scope(engine) as session:
        owners = set(session.execute(select(Contact.account_id)).scalars())
        assert len(owners) == 1 and None not in owners


def test_api_import_accepts_display_names(client, engine, clock, auth_headers):
    client.post(
        "/api/accounts", json={"external_id": "wangxe", "name": "客服小王"}, headers=auth_headers
    )
    files = {"file": ("c.csv", GBK_CSV.encode("utf-8"), "text/csv")}
    done = client.post("/api/contacts/import", files=files, headers=auth_headers)
    assert done.status_code == 200, done.text
    assert done.json()["imported"] == 5 and done.json()["accounts_created"] == []


def test_template_csv_opens_in_excel():
    from api.routes.ui_audience_edit import TEMPLATE_CSV
    from audiences import importer

    parsed = importer.parse_csv(("\ufeff" + TEMPLATE_CSV).encode("utf-8"))
    assert not parsed.errors and parsed.rows[0].account == "客服小王"


def test_template_download_has_a_bom(client, engine, clock):
    login(client, engine, clock)
    got = client.get("/contacts/import/template.csv")
    assert got.content.startswith(b"\xef\xbb\xbf") and "外部联系人ID" in got.content.decode(
        "utf-8-sig"
    )


def test_analyst_sees_no_bulk_form_and_cannot_post(client, engine, clock):
    csrf = login(client, engine, clock, "li", ["analyst"])
    add_contact(engine, "wm_1", "张三", JOIN)
    page = client.get("/contacts")
    assert 'id="bulk"' not in page.text and '<input type="checkbox"' not in page.text
    assert (
        client.post(
            "/contacts/bulk", data={"csrf_token": csrf, "action": "remove", "ids": 1}
        ).status_code
        == 403
    )


def test_reject_needs_a_reason_the_author_then_sees(client, engine, clock):
    from auth_helpers import token_headers

    author_id = make_user(engine, clock.now(), "author", ["operator"])
    author = token_headers(engine, clock.now(), author_id)
    created = client.post("/api/templates", json=library.load("tagged_class"), headers=author)
    template_id = created.json()["id"]
    assert client.post(f"/api/templates/{template_id}/submit", headers=author).status_code == 200
    csrf = login(client, engine, clock, "boss", ["approver"])
    page = client.post(f"/templates/{template_id}/reject", data={"csrf_token": csrf, "note": " "})
    assert page.status_code == 409 and "请填写驳回原因" in page.text
    page = client.post(
        f"/templates/{template_id}/reject", data={"csrf_token": csrf, "note": "第二课的链接错了"}
    )
    assert page.status_code == 200
    assert "已被 boss 驳回：第二课的链接错了" in page.text
    assert "第二课的链接错了" in client.get("/").text.split('id="rejected-drafts"')[1]
    assert "第二课的链接错了" in client.get("/audit").text
    # the API refuses a reject without a reason too
    assert client.post(f"/api/templates/{template_id}/submit", headers=author).status_code == 200
    boss = token_headers(engine, clock.now(), 2)
    assert client.post(f"/api/templates/{template_id}/reject", headers=boss).status_code == 409


def test_an_empty_workspace_says_what_to_do_next(client, engine, clock):
    login(client, engine, clock)
    page = client.get("/")
    steps = re.findall(r'data-step="(\w+)"', page.text)
    assert steps == ["channel", "contacts", "sop"]
    assert "连接发送渠道" in page.text and "从模板库创建 SOP" in page.text


def test_segment_picker_counts_saves_and_starts_a_tagged_sop(client, engine, clock):
    csrf = login(client, engine, clock)
    for i in range(3):
        add_contact(
            engine, f"wm_{i}", f"客户{i}", JOIN, tags=["春季班"] + (["已购"] if i == 0 else [])
        )
    page = client.get("/segments/build?all=春季班&none=已购")
    assert re.search(r'id="seg-live-count">当前 2 个客户<', page.text)
    assert "春季班 and not 已购" in page.text
    page = client.get("/segments/build?none=已购")
    assert "请至少选择一个" in page.text
    page = client.post(
        "/segments/build", data={"csrf_token": csrf, "all": "春季班", "none": "已购", "name": ""}
    )
    assert page.status_code == 422 and "请给人群起个名字" in page.text
    page = client.post(
        "/segments/build",
        data={"csrf_token": csrf, "all": "春季班", "none": "已购", "name": "春季班未购"},
    )
    assert "人群已保存" in page.text and 'value="已购" data-chip="none:已购" checked' in page.text
    segment_id = int(re.search(r"/segments/saved/(\d+)/sop", page.text).group(1))
    assert "春季班未购" in client.get("/segments").text
    page = client.post(f"/segments/saved/{segment_id}/sop", data={"csrf_token": csrf})
    template_id = int(re.search(r"/templates/(\d+)", str(page.url)).group(1))
    got = client.get(f"/api/templates/{template_id}").json()
    assert got["draft"]["segment"]["tags"] == "春季班 and not 已购"


def test_read_only_roles_get_a_disabled_editor_and_approvers_a_diff(client, engine, clock):
    from auth_helpers import token_headers

    author = token_headers(engine, clock.now(), make_user(engine, clock.now(), "a", ["operator"]))
    spec = library.load("tagged_class")
    template_id = client.post("/api/templates", json=spec, headers=author).json()["id"]
    assert client.post(f"/api/templates/{template_id}/publish", headers=author).status_code == 200
    spec["touchpoints"][0]["content"] = ["今晚 20:30 开课，别迟到"]
    assert client.put(f"/api/templates/{template_id}", json=spec, headers=author).status_code == 200
    login(client, engine, clock, "boss", ["approver"])
    page = client.get(f"/templates/{template_id}").text
    assert 'id="read-only"' in page
    editor = page.split('<fieldset disabled class="read-only-view"')[1].split("</fieldset>\n")[0]
    assert 'id="editor"' in editor
    diff = page.split('id="draft-diff"')[1]
    assert "草稿与线上版本 v1 对比" in diff
    changed = re.findall(
        r'<tr class="diff-changed"><td><pre>(.*?)</pre></td><td><pre>(.*?)</pre>', diff
    )
    assert any("今晚 20:30 开课，别迟到" in right for _, right in changed)
    assert any("第一课开讲" in left for left, _ in changed)


def test_the_editor_warns_of_an_overlapping_live_sop(client, engine, clock):
    from factories import new_friend_spec

    friends = {"kind": "new_friends"}
    publish(engine, new_friend_spec(name="老欢迎语", segment=friends), JOIN)
    csrf = login(client, engine, clock)
    assert csrf
    from auth_helpers import token_headers

    token = token_headers(engine, clock.now(), 1)
    spec = new_friend_spec(name="新欢迎语", segment=friends)
    template_id = client.post("/api/templates", json=spec, headers=token).json()["id"]
    page = client.get(f"/templates/{template_id}").text
    warning = page.split('id="overlap-warning"')[1].split("</div>")[0]
    assert "SOP 重叠" in warning and "老欢迎语" in warning and "welcome ↔ welcome" in warning
    assert "与 老欢迎语 重叠" in page.split('id="publish-form"')[1].split(">")[0]


def test_enrolling_by_hand_outside_the_segment_asks_first(client, engine, clock):
    csrf = login(client, engine, clock)
    spec = library.load("tagged_class")
    spec.update(anchor="fixed", start_at="2027-03-03T00:00:00", segment={"tags": "春季班"})
    spec.pop("anchor_tag")
    sop = publish(engine, spec, JOIN)
    outsider = add_contact(engine, "wm_9", "王五", JOIN)
    page = client.post(
        f"/contacts/{outsider}/enroll", data={"csrf_token": csrf, "template_id": sop}
    )
    assert "王五 不在“春季班课程提醒”的人群里。仍要入组吗？" in page.text
    assert enrolled(engine, sop) == set()
    page = client.post(
        f"/contacts/{outsider}/enroll",
        data={"csrf_token": csrf, "template_id": sop, "confirm": "1"},
    )
    assert enrolled(engine, sop) == {outsider}
    member = add_contact(engine, "wm_8", "赵六", JOIN, tags=["春季班"])
    client.post(f"/contacts/{member}/enroll", data={"csrf_token": csrf, "template_id": sop})
    assert member in enrolled(engine, sop)


def test_rename_and_merge_a_tag_through_the_write_path(client, engine, clock):
    csrf = login(client, engine, clock)
    sop = tagged_sop(engine, "春季班")
    a = add_contact(engine, "wm_1", "甲", JOIN, tags=["春季班级"])
    b = add_contact(engine, "wm_2", "乙", JOIN, tags=["春季班级", "vip"])
    page = client.post(
        "/tags/rename", data={"csrf_token": csrf, "old": "春季班级", "new": "春季班"}
    )
    assert "2 个客户和客户群的标签“春季班级”已改为“春季班”" in page.text
    assert "SOP：2 人入组" in page.text
    assert enrolled(engine, sop) == {a, b}
    rows = re.findall(r'<tr data-tag="([^"]+)"', page.text)
    assert "春季班级" in rows  # the tag row stays, carried by nobody
    assert "春季班级" not in client.get(f"/contacts/{a}").text.split("<h1")[1][:600]
    page = client.post("/tags/rename", data={"csrf_token": csrf, "old": "vip", "new": "vip"})
    assert "请选择一个标签，并填写不同的新名称" in page.text


def test_workspace_settings_are_stored_and_used(client, engine, clock, settings):
    csrf = login(client, engine, clock, "root", ["admin"])
    form = {
        "csrf_token": csrf,
        "default_timezone": "Asia/Tokyo",
        "quiet_start": "25:00",
        "quiet_end": "08:00",
        "quiet_hours_policy": "defer",
        "frequency_cap": "wecom_daily",
        "frequency_cap_policy": "skip",
    }
    page = client.post("/settings", data=form)
    assert page.status_code == 422 and "免打扰时段需要开始和结束时间" in page.text
    assert client.app.state.settings.default_timezone == "Asia/Shanghai"
    page = client.post("/settings", data={**form, "quiet_start": "22:00"})
    assert page.status_code == 200 and "已保存" in page.text
    now = client.app.state.settings
    assert (now.default_timezone, now.quiet_hours, now.frequency_cap) == (
        "Asia/Tokyo",
        "22:00-08:00",
        "wecom_daily",
    )
    assert now.frequency_cap_policy == "skip"
    assert client.app.state.runtime.dispatcher.workspace.cap is not None
    assert "时间按 Asia/Tokyo 显示" in page.text
    # a new process reads them at start; the environment's values stay the defaults
    with TestClient(create_app(settings, engine=engine, clock=clock, run_scheduler=False)) as other:
        assert other.app.state.settings.quiet_hours == "22:00-08:00"
    assert settings.quiet_hours is None
    # cleared quiet hours and cap
    client.post("/settings", data={**form, "quiet_start": "", "quiet_end": "", "frequency_cap": ""})
    assert client.app.state.settings.quiet_hours is None
    assert client.app.state.settings.frequency_cap is None


def test_channel_config_is_a_form_from_the_adapter_schema_with_write_only_secrets(
    client, engine, clock
):
    from channels import service as channels_service
    from channels.models import ChannelInstance

    csrf = login(client, engine, clock, "root", ["admin"])
    with session_scope(engine) as session:
        channels_service.create_instance(
            session,
            channels_service.ChannelInstanceIn(
                name="hook",
                adapter="webhook",
                config={"url": "https://example.com/a", "secret": "s3cret-value"},
            ),
        )
    page = client.get("/channels/hook").text
    assert 'id="cfg-url" name="cfg.url" value="https://example.com/a"' in page
    assert 'type="password" id="cfg-secret" name="cfg.secret" value=""' in page
    assert "s3cret-value" not in page and "已设置：留空则保持不变" in page
    assert 'type="number" step="any" id="cfg-timeout_s"' in page
    saved = client.post(
        "/channels/hook",
        data={
            "csrf_token": csrf,
            "config_form": "1",
            "cfg.url": "https://example.com/b",
            "cfg.secret": "",
            "cfg.timeout_s": "5",
            "cfg.max_concurrency": "8",
            "cfg.headers": "{}",
            "enabled": "on",
            "breaker_threshold": "5",
            "breaker_cooldown_seconds": "60",
            "max_attempts": "3",
        },
    )
    assert saved.status_code == 200, saved.text[:500]
    with session_scope(engine) as session:
        row = session.execute(
            select(ChannelInstance).where(ChannelInstance.name == "hook")
        ).scalar_one()
        assert row.config["url"] == "https://example.com/b"
        assert row.config["secret"] == "s3cret-value" and row.config["timeout_s"] == 5
    bad = client.post(
        "/channels/hook",
        data={"csrf_token": csrf, "config_form": "1", "cfg.url": "x", "cfg.timeout_s": "abc"},
    )
    assert bad.status_code == 422


def test_the_api_docs_send_the_session_csrf_token(client, engine, clock):
    assert "data-csrf-token" not in client.get("/docs").text
    csrf = login(client, engine, clock)
    assert f'data-csrf-token="{csrf}"' in client.get("/docs").text
    # what "Try it out" then sends: the import with the header, from the browser session
    files = {"file": ("c.csv", "外部联系人ID,姓名\r\nwm_1,张三\r\n".encode(), "text/csv")}
    done = client.post("/api/contacts/import", files=files, headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200 and done.json()["imported"] == 1


def test_group_chats_added_and_tagged_in_the_ui_start_the_group_sop(client, engine, clock):
    from factories import store_menu_spec

    csrf = login(client, engine, clock)
    sop = publish(engine, store_menu_spec(segment={"kind": "groups", "tags": "门店"}), JOIN)
    client.post("/staff", data={"csrf_token": csrf, "external_id": "wangxe", "name": "客服小王"})
    page = client.post(
        "/groups/new",
        data={"csrf_token": csrf, "external_id": "g_1", "name": "徐汇店", "account": "客服小王"},
    )
    assert "已保存" in page.text and "徐汇店" in page.text
    gid = int(re.search(r'href="/groups/(\d+)"', page.text).group(1))
    page = client.post(
        "/groups/bulk", data={"csrf_token": csrf, "action": "tag", "tags": "门店", "ids": gid}
    )
    assert "已为 1 个客户群打上标签 门店。1 个 SOP 入组 1 人。" in page.text
    assert enrolled(engine, sop) == {gid}
    page = client.post("/groups/bulk", data={"csrf_token": csrf, "action": "remove", "ids": gid})
    assert "已移除 1 个客户群" in page.text and "已解散" in page.text
