"""Operators run their audience and approvals in a real browser (Playwright
driving Debian's chromium), from an empty workspace: a staff account, a GBK
CSV of 200 contacts with 3 bad lines (seen, fixed, imported), 50 tagged in
bulk, a saved segment from the tag picker, and a live tagged SOP that enrolls
exactly those 50; an approver's reason for a rejection reaches the author; an
analyst finds no input to change the audience.

Every page added here is shot at 1366 and 390 px (``test-output/screenshots/``)
and must not scroll sideways on a phone.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from auth_helpers import PASSWORD, make_user, token_headers
from browser_kit import no_horizontal_overflow, shot
from factories import plan_when_due
from sqlalchemy import select

from scheduler.outbox.models import Delivery, Enrollment
from sop_templates import library
from sopbot.db import session_scope

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


def login(page: Any, live: Any, username: str) -> None:
    page.goto(f"{live.url}/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/")


def both_widths(page: Any, name: str) -> None:
    """Shoot the page at 1366 and 390 px; on the phone it must not scroll sideways."""
    shot(page, f"{name}-1366")
    page.set_viewport_size({"width": 390, "height": 844})
    assert no_horizontal_overflow(page), f"{name} scrolls sideways at 390 px"
    shot(page, f"{name}-390")
    page.set_viewport_size({"width": 1366, "height": 900})


def contacts_csv(bad: bool) -> bytes:
    lines = ["外部联系人ID,姓名,员工账号,添加时间,城市"]
    for i in range(1, 201):
        lines.append(f"wm{i:03d},客户{i},客服小王,2027-03-01 21:30,上海")
    if bad:
        lines[51] = "wm051,客户51,客服小王,昨天晚上,上海"  # line 52: not a date
        lines[102] = ",客户102,客服小王,2027-03-01 21:30,上海"  # line 103: no id
        lines[153] = "wm153,客户153,客服老李,2027-03-01 21:30,上海"  # line 154: unknown staff
    return ("\r\n".join(lines) + "\r\n").encode("gbk")


def test_operator_imports_tags_segments_and_a_tagged_sop_enrolls_exactly_them(
    live, page, engine, clock, tmp_path
):
    expect = sync_api.expect
    make_user(engine, clock.now(), "wang", ["operator"])
    login(page, live, "wang")

    # an empty workspace says what to do first
    expect(page.locator("#onboarding [data-step]")).to_have_count(3)
    both_widths(page, "dashboard-empty")

    # a staff account, by the name everyone knows it by
    page.goto(f"{live.url}/contacts")
    page.click("#to-accounts")
    page.fill("#account-name", "客服小王")
    page.fill("#account-external_id", "wangxiaoer")
    page.click("#account-save")
    expect(page.locator("#flash")).to_have_text("员工账号已保存。")
    expect(page.locator("#accounts")).to_contain_text("客服小王")
    both_widths(page, "staff-accounts")

    # the GBK file with three bad lines: checked, every bad line shown, nothing written
    bad, good = tmp_path / "客户-有错.csv", tmp_path / "客户.csv"
    bad.write_bytes(contacts_csv(bad=True))
    good.write_bytes(contacts_csv(bad=False))
    page.goto(f"{live.url}/contacts")
    page.click("#to-import")
    page.set_input_files("#file", str(bad))
    page.click("#check")
    errors = page.locator("#import-errors tr[data-line]")
    expect(errors).to_have_count(3)
    assert [errors.nth(i).get_attribute("data-line") for i in range(3)] == ["52", "103", "154"]
    expect(errors.nth(0)).to_contain_text("不是日期时间")
    expect(errors.nth(1)).to_contain_text("为空；必填")
    expect(errors.nth(2)).to_contain_text("未知的员工账号 客服老李")
    expect(page.locator("#import-errors-summary")).to_contain_text("200 行中有 3 行有错误")
    both_widths(page, "import-errors")

    # fixed, checked again, imported
    page.set_input_files("#file", str(good))
    page.click("#check")
    expect(page.locator("#import-ok")).to_contain_text("全部 200 行没有问题")
    expect(page.locator("#import-ok")).to_contain_text("gb18030")
    page.click("#import")
    expect(page.locator("#import-done")).to_contain_text("已导入 200 个客户（新增 200，更新 0）")
    both_widths(page, "import-done")

    # 50 in bulk: the whole first page
    page.goto(f"{live.url}/contacts")
    expect(page.locator("#found")).to_have_text("共 200 个")
    page.check("#tick-page")
    expect(page.locator("input.tick:checked")).to_have_count(50)
    page.select_option("#bulk-action", "tag")
    page.fill("#bulk-tags", "春季班")
    page.click("#bulk-apply")
    expect(page.locator("#flash")).to_contain_text("已为 50 个客户打上标签 春季班")
    both_widths(page, "contacts-tagged")
    page.click("#to-tags")
    sync_api.expect(page.locator("#tags tr[data-tag='春季班']")).to_contain_text("50")
    both_widths(page, "tags")

    # a saved segment from the tag picker: live count, then saved
    page.goto(f"{live.url}/segments")
    page.click("#new-segment")
    with page.expect_response(re.compile(r"/segments/build\?")):
        page.click("label.chip:has([data-chip='all:春季班'])")
    expect(page.locator("#seg-live-count")).to_have_text("当前 50 个客户")
    expect(page.locator("#seg-sample tr")).to_have_count(11)  # header + 10 members
    with page.expect_response(re.compile(r"/segments/build\?")):
        page.fill("#seg-name", "春季班学员")
        page.press("#seg-name", "Tab")  # a change: the live count follows
    page.click("#seg-save")
    expect(page.locator("#flash")).to_have_text("人群已保存。")
    both_widths(page, "segment-build")

    # a tagged SOP for the segment, published: exactly those 50 enroll
    page.select_option("#seg-start", "fixed")
    page.click("#seg-new-sop")
    page.wait_for_url(re.compile(r"/templates/\d+\?done=created"))
    template_id = int(re.search(r"/templates/(\d+)", page.url).group(1))
    impact = page.locator("#publish-impact")
    expect(impact).to_contain_text("发布后将立即入组 50 人，写入 150 条待发送")
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.click("#publish")
    expect(page.locator(".flash.ok")).to_contain_text("已发布")
    assert "立即入组 50 人" in asked[0] and asked[0].endswith("现在发布吗？")
    with session_scope(engine) as session:
        from audiences.models import Contact

        tagged = set(
            session.execute(select(Contact.id).where(Contact.external_id >= "wm151")).scalars()
        )
        enrolled = set(
            session.execute(
                select(Enrollment.target_id).where(Enrollment.template_id == template_id)
            ).scalars()
        )
        pending = session.execute(
            select(Delivery.id).where(Delivery.template_id == template_id)
        ).all()
    assert len(tagged) == 50 and enrolled == tagged
    # the class starts days later: the planner writes the rows shortly before
    assert pending == []
    expect(page.locator("#planned-later")).to_have_text("另有 150 条待发送，将在发送前 10 分钟生成")
    both_widths(page, "template-planned-later")
    # the calendar shows each of them as expected, for the 50 enrolled
    with session_scope(engine) as session:
        from sqlalchemy import func

        from sop_templates.models import Touchpoint

        first = session.execute(
            select(func.min(Touchpoint.fan_out_at)).where(Touchpoint.template_id == template_id)
        ).scalar_one()
    page.goto(f"{live.url}/calendar?view=week&day={first.date().isoformat()}")
    expected = page.locator("li.send.computed").first
    expect(expected).to_contain_text("50")
    expect(expected.locator(".pill.computed")).to_have_text("预计")
    both_widths(page, "calendar-planned-later")
    assert plan_when_due(engine) == 150  # three touchpoints each
    page.goto(f"{live.url}/segments")
    both_widths(page, "segments")


def test_an_approver_rejects_with_a_reason_the_author_then_sees(live, page, engine, clock):
    import httpx

    expect = sync_api.expect
    author_id = make_user(engine, clock.now(), "author", ["operator"])
    make_user(engine, clock.now(), "boss", ["approver"])
    with httpx.Client(
        base_url=live.url, headers=token_headers(engine, clock.now(), author_id)
    ) as api:
        template_id = api.post("/api/templates", json=library.load("tagged_class")).json()["id"]
        assert api.post(f"/api/templates/{template_id}/submit").status_code == 200

    login(page, live, "boss")
    page.goto(f"{live.url}/templates/{template_id}")
    page.click("#reject")  # no reason: the browser asks for one first
    expect(page.locator("#reject-note")).to_have_js_property("validity.valueMissing", True)
    page.fill("#reject-note", "第二课的预习链接错了，请换成新的")
    page.click("#reject")
    expect(page.locator("#reject-reason")).to_contain_text("第二课的预习链接错了")
    page.click(".topbar form button")  # log out

    login(page, live, "author")
    expect(page.locator("#rejected-drafts")).to_contain_text("boss：第二课的预习链接错了")
    both_widths(page, "dashboard-rejected")
    page.click(f"#rejected-drafts a[href='/templates/{template_id}']")
    expect(page.locator("#reject-reason")).to_contain_text("已被 boss 驳回：第二课的预习链接错了")
    page.goto(f"{live.url}/audit")
    expect(page.locator("main")).to_contain_text("第二课的预习链接错了")


def test_an_analyst_finds_no_input_to_change_anything(live, page, engine, clock):
    import httpx

    author_id = make_user(engine, clock.now(), "author", ["operator"])
    with httpx.Client(
        base_url=live.url, headers=token_headers(engine, clock.now(), author_id)
    ) as api:
        template_id = api.post("/api/templates", json=library.load("tagged_class")).json()["id"]
    make_user(engine, clock.now(), "li", ["analyst"])
    login(page, live, "li")
    # what is left are filters and the timeline / preview's sample pickers: they change nothing
    view_only = (
        ":not(#q):not(#tag):not(#account):not(#status):not(#search)"
        ":not(#timeline-card *):not(#preview-card *)"
    )
    for path in (
        "/contacts",
        "/groups",
        "/staff",
        "/tags",
        "/contacts/import",
        "/segments/build",
        f"/templates/{template_id}",
    ):
        page.goto(f"{live.url}{path}")
        live_inputs = page.locator(
            f"main input:not([type=hidden]):enabled{view_only}, "
            f"main select:enabled{view_only}, main textarea:enabled, "
            f"main button:enabled{view_only}"
        )
        assert live_inputs.count() == 0, (path, live_inputs.first.evaluate("e => e.outerHTML"))
    sync_api.expect(page.locator("#read-only")).to_contain_text("只读")
    shot(page, "editor-read-only-1366")


def test_an_admin_sets_workspace_defaults_and_a_channel_by_its_form(live, page, engine, clock):
    expect = sync_api.expect
    make_user(engine, clock.now(), "root", ["admin"])
    login(page, live, "root")
    page.goto(f"{live.url}/settings")
    page.select_option("#default_timezone", "Asia/Shanghai")
    page.fill("#quiet_start", "22:00")
    page.fill("#quiet_end", "08:00")
    page.select_option("#frequency_cap", "wecom_daily")
    page.click("#settings-save")
    expect(page.locator("#flash")).to_have_text("已保存。")
    expect(page.locator("#quiet_start")).to_have_value("22:00")
    assert live.app.state.settings.quiet_hours == "22:00-08:00"
    both_widths(page, "settings")
    page.goto(f"{live.url}/channels/mock")
    expect(page.locator("#config-fields")).to_be_visible()
    both_widths(page, "channel-detail")
