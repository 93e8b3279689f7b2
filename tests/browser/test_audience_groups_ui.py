"""The rest of the audience flows in a real browser, in Chinese, each shot at
1366 and 390 px (``test-output/screenshots/``): the CSV import's progress bar,
tag groups on 标签, the segment builder's staff-account and attribute chips,
one-click exclusivity where the editor flags an overlap, and workspace settings
saved by one API process applied by another."""

from __future__ import annotations

import re
from typing import Any

import pytest
from auth_helpers import PASSWORD, make_user
from browser_kit import no_horizontal_overflow, shot
from factories import new_friend_spec, publish
from sqlalchemy import select

from audiences import importer
from scheduler.outbox.models import Enrollment
from sop_templates import service as templates_service
from sopbot.db import session_scope

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


def login(page: Any, live: Any, username: str) -> None:
    page.goto(f"{live.url}/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/")


def both_widths(page: Any, name: str) -> None:
    shot(page, f"{name}-1366")
    page.set_viewport_size({"width": 390, "height": 844})
    assert no_horizontal_overflow(page), f"{name} scrolls sideways at 390 px"
    shot(page, f"{name}-390")
    page.set_viewport_size({"width": 1366, "height": 900})


def contacts_csv() -> bytes:
    lines = ["外部联系人ID,姓名,员工账号,添加时间,标签,城市"]
    for i in range(1, 301):
        staff = "客服小王" if i % 3 else "客服小李"
        city = "上海" if i % 2 else "北京"
        lines.append(f"wm{i:03d},客户{i},{staff},2027-03-01 21:30,春季班,{city}")
    return ("\r\n".join(lines) + "\r\n").encode("gbk")


def test_import_progress_tag_groups_and_segment_filters(
    live, page, engine, clock, tmp_path, monkeypatch
):
    expect = sync_api.expect
    monkeypatch.setattr(importer, "IMPORT_CHUNK", 50)  # several steps for the bar
    make_user(engine, clock.now(), "wang", ["operator"])
    login(page, live, "wang")
    for name, ext in (("客服小王", "wangxiaoer"), ("客服小李", "lixiaosan")):
        page.goto(f"{live.url}/staff")
        page.fill("#account-name", name)
        page.fill("#account-external_id", ext)
        page.click("#account-save")
        expect(page.locator("#flash")).to_have_text("员工账号已保存。")

    # the import's progress bar: rows written of the file's rows
    csv = tmp_path / "客户.csv"
    csv.write_bytes(contacts_csv())
    page.goto(f"{live.url}/contacts/import")
    page.set_input_files("#file", str(csv))
    page.click("#import")
    expect(page.locator("#import-done")).to_contain_text("已导入 300 个客户")
    expect(page.locator("#import-progress-text")).to_have_text("已导入 300 / 300 行")
    assert page.locator("#import-bar").evaluate("b => [b.value, b.max]") == [300, 300]
    both_widths(page, "import-progress")

    # tag groups: a new group with a tag moved in and a new tag, then renamed
    page.goto(f"{live.url}/tags")
    page.fill("#group-name", "课程")
    page.check("[data-group-tag='春季班']")
    page.fill("#group-new-tag", "秋季班")
    page.click("#group-apply")
    expect(page.locator("#flash")).to_have_text("2 个标签已移入标签组“课程”。")
    expect(page.locator("tr[data-tag-group='课程']")).to_contain_text("课程 (2)")
    page.select_option("#group-old", "课程")
    page.fill("#group-renamed", "课程标签")
    page.click("#group-rename-apply")
    expect(page.locator("#flash")).to_contain_text("标签组“课程”已改名为“课程标签”")
    expect(page.locator("#tags tr[data-tag='春季班']")).to_have_attribute("data-group", "课程标签")
    both_widths(page, "tag-groups")

    # the segment builder: tags by group, staff accounts by name, attribute chips
    page.goto(f"{live.url}/segments/build")
    expect(page.locator("[data-chip-group='课程标签']").first).to_be_visible()
    with page.expect_response(re.compile(r"/segments/build\?")):
        page.click("label.chip:has([data-chip='all:春季班'])")
    expect(page.locator("#seg-live-count")).to_have_text("当前 300 个客户")
    with page.expect_response(re.compile(r"/segments/build\?")):
        page.click("label.chip:has([data-chip='account:客服小王'])")
    expect(page.locator("#seg-live-count")).to_have_text("当前 200 个客户")
    with page.expect_response(re.compile(r"/segments/build\?")):
        page.click("label.chip:has([data-chip='attr:城市=上海'])")
    expect(page.locator("#seg-live-count")).to_have_text("当前 100 个客户")
    expect(page.locator("#seg-attr-summary")).to_contain_text("城市=上海")
    with page.expect_response(re.compile(r"/segments/build\?")):
        page.fill("#seg-attr-new", "城市")
        page.press("#seg-attr-new", "Tab")
    expect(page.locator("#seg-error")).to_have_text("属性筛选请写成 名称=值，例如 城市=上海。")
    with page.expect_response(re.compile(r"/segments/build\?")):
        page.fill("#seg-attr-new", "")
        page.fill("#seg-name", "上海的小王客户")
        page.press("#seg-name", "Tab")
    page.click("#seg-save")
    expect(page.locator("#flash")).to_have_text("人群已保存。")
    expect(page.locator("#seg-live-count")).to_have_text("当前 100 个客户")
    both_widths(page, "segment-filters")


def test_one_click_exclusivity_on_an_overlap(live, page, engine, clock):
    expect = sync_api.expect
    friends = {"kind": "new_friends"}
    first = publish(engine, new_friend_spec(name="欢迎语 A", segment=friends), clock.now())
    with session_scope(engine) as session:
        draft = templates_service.create_template(
            session, new_friend_spec(name="欢迎语 B", segment=friends), clock.now()
        ).id
    make_user(engine, clock.now(), "wang", ["operator"])
    login(page, live, "wang")
    page.goto(f"{live.url}/templates/{draft}")
    expect(page.locator("#overlap-warning")).to_contain_text("欢迎语 A")
    both_widths(page, "exclusive-overlap")
    page.click(f"[data-exclusive='{first}']")
    expect(page.locator(".flash.ok")).to_contain_text("互斥已保存到草稿")
    expect(page.locator("#overlap-warning")).to_have_count(0)
    expect(page.locator(f"#exclusive [data-exclusive-with='{first}']")).to_contain_text(
        "此 SOP 中的客户不再进入“欢迎语 A”"
    )
    both_widths(page, "exclusive-set")
    shot(page, "exclusive-set-top-1366", full_page=False)
    page.click("#publish")
    expect(page.locator(".flash.ok")).to_contain_text("已发布")
    with session_scope(engine) as session:
        spec = templates_service.get_template(session, draft).draft
        assert spec["exclusive_with"] == [first]
        assert session.execute(select(Enrollment.id)).all() == []
