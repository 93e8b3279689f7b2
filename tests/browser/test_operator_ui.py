"""The operator's whole job in a real browser (Playwright driving Debian's
chromium): log in, build the new-friend SOP from scratch, fix a bad cron, read
the timeline and the preview, publish, a friend is added, the welcome goes out.

Screenshots of the editor and the dashboard go to ``test-output/screenshots/``
(CI keeps them as artifacts). Skipped when chromium or Playwright is missing.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from auth_helpers import PASSWORD, make_user, token_headers
from browser_kit import JOIN, SCREENSHOTS

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


def _htmx(page: Any, click: str) -> None:
    """Click a button that posts the editor with htmx and wait for the swap."""
    with page.expect_response(lambda r: r.request.method == "POST" and "/live" not in r.url):
        page.click(click)
    page.wait_for_selector("#editor")


def test_build_publish_and_deliver_the_new_friend_sop(live, page, engine, clock):
    expect = sync_api.expect
    user_id = make_user(engine, clock.now(), "wang", ["admin"])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # log in
    page.goto(f"{live.url}/templates")
    assert "/login" in page.url
    page.fill("#username", "wang")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/templates")

    # a new SOP from scratch
    page.click("a[href='/templates/new']")
    page.click("a[href='/templates/new?start=blank']")
    page.fill("#name", "新好友 SOP")
    page.select_option("#segment_kind", "new_friends")
    page.click("summary:has-text('免打扰时段')")
    page.select_option("#quiet_mode", "custom")
    page.fill("#quiet_start", "22:00")
    page.fill("#quiet_end", "08:00")

    # 1: the welcome at +0 with the questionnaire link
    page.fill("#tp-0-name", "欢迎语")
    page.fill("#tp-0-offset_n", "0")
    page.fill("#tp-0-part-0-text", "{{ contact.name }}，你好！欢迎加入，填一下问卷 👇")
    page.select_option("#tp-0-new-part", "link")
    _htmx(page, "button[name=action][value='add_part:0']")
    page.fill("#tp-0-part-1-title", "新人问卷")
    page.fill("#tp-0-part-1-url", "https://example.com/survey")

    # 2: the mini-program and the coupon at +3h
    _htmx(page, "button[name=action][value='add_touchpoint']")
    page.fill("#tp-1-name", "小程序和优惠券")
    page.fill("#tp-1-offset_n", "3")
    page.select_option("#tp-1-offset_unit", "h")
    page.fill("#tp-1-part-0-text", "送你一张新人券：满 199 减 30")
    page.select_option("#tp-1-new-part", "miniprogram")
    _htmx(page, "button[name=action][value='add_part:1']")
    _htmx(page, "button[name=action][value='part_up:1:1']")  # the card first
    page.fill("#tp-1-part-0-title", "品牌商城")
    page.fill("#tp-1-part-0-appid", "wx0123456789abcdef")
    page.fill("#tp-1-part-0-page", "pages/mall/index")

    # 3: the reminder, first with a bad cron
    _htmx(page, "button[name=action][value='add_touchpoint']")
    page.fill("#tp-2-name", "第二天提醒")
    page.select_option("#tp-2-timing_kind", "cron")
    expect(page.locator("#tp-2-offset_n")).to_be_hidden()  # only the chosen kind's inputs
    page.fill("#tp-2-cron", "0 25 * * *")
    page.fill("#tp-2-part-0-text", "{{ contact.name }}，今晚 20:30 直播间有专场福利")
    _htmx(page, "#save")
    error = page.locator("[data-error-for='tp-2-cron']")
    expect(error).to_contain_text("25")
    expect(page.locator("#tp-2-cron")).to_have_value("0 25 * * *")

    # fix it: day 2 at 20:00
    page.select_option("#tp-2-timing_kind", "day_at")
    page.fill("#tp-2-day", "2")
    page.fill("#tp-2-at", "20:00")
    page.click("#save")
    page.wait_for_url(re.compile(r"/templates/\d+\?done=created"))
    expect(page.locator(".flash.ok")).to_contain_text("模板已创建")

    # the timeline for a friend added Tue 21:30: +3h falls in quiet hours
    page.fill("#sample_at", "2027-03-02T21:30")
    with page.expect_response(re.compile(r"/timeline\?")):
        page.click("#timeline-card button[type=submit]")
    timeline = page.locator("#timeline")
    expect(timeline.locator("[data-touchpoint='欢迎语'] .when")).to_have_text("周二 03-02 21:30")
    coupon = timeline.locator("[data-touchpoint='小程序和优惠券']")
    expect(coupon.locator(".when")).to_have_text("周三 03-03 08:00")
    expect(coupon.locator(".why")).to_contain_text("周三 03-03 00:30")
    expect(timeline.locator("[data-touchpoint='第二天提醒'] .when")).to_have_text(
        "周三 03-03 20:00"
    )

    # the preview, rendered for the sample contact
    preview = page.locator("#preview")
    expect(preview.locator("[data-touchpoint='欢迎语'] .bubble").first).to_contain_text(
        "张三，你好"
    )
    expect(preview.locator("[data-touchpoint='小程序和优惠券']")).to_contain_text("品牌商城")
    page.screenshot(path=str(SCREENSHOTS / "editor.png"), full_page=True)

    # publish
    page.click("#publish")
    expect(page.locator(".flash.ok")).to_contain_text("已发布")
    template_id = int(re.search(r"/templates/(\d+)", page.url).group(1))

    # a friend is added (a script with an API token), the welcome goes out
    headers = token_headers(engine, clock.now(), user_id)
    with httpx.Client(base_url=live.url, headers=headers) as api:
        api.post("/api/accounts", json={"external_id": "staff_wang", "name": "客服小王"})
        event = {
            "kind": "friend_added",
            "id": "evt-browser-1",
            "account": "staff_wang",
            "external_id": "wm_lilei",
            "name": "李雷",
            "occurred_at": JOIN.isoformat(),
        }
        applied = api.post("/api/events", json=event)
        assert applied.status_code == 200 and applied.json()["enrolled"] == 1, applied.text
    live.run(live.app.state.runtime.dispatch_tick())

    page.goto(f"{live.url}/contacts")
    page.click("text=李雷")
    received = page.locator("table").first
    expect(received).to_contain_text("欢迎语")
    expect(received).to_contain_text("已发送")
    expect(received).to_contain_text("李雷，你好！欢迎加入")
    expect(page.locator("body")).to_contain_text("新好友 SOP")

    page.goto(f"{live.url}/")
    expect(page.locator("[data-stat='sent-today']")).to_have_text("1")
    expect(page.locator("body")).to_contain_text("小程序和优惠券")  # next send: Wed 08:00
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

    # the delivery log and the report are pages of the app: its nav, the user, log out
    page.click("nav a[href='/log']")
    expect(page.locator("nav a[aria-current=page]")).to_have_text("发送记录")
    expect(page.locator(".topbar .who button")).to_have_text("退出登录")
    expect(page.locator("h1")).to_have_text("发送记录")
    welcome = page.locator(".log-table tr", has_text="欢迎语")
    expect(welcome).to_contain_text("李雷")
    expect(welcome.locator(".pill.sent")).to_have_text("已发送")
    # twelve columns scroll inside their card; the page itself does not
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(SCREENSHOTS / "log.png"), full_page=True)
    page.check("input[name=status][value=failed]")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r"/log\?.*status=failed"))
    expect(page.locator(".log-table")).to_contain_text("没有符合条件的发送记录")
    expect(page.locator("input[name=status][value=failed]")).to_be_checked()

    page.click("nav a[href='/report']")
    page.click(f"a[href='/report/{template_id}']")
    expect(page.locator("nav a[aria-current=page]")).to_have_text("数据报表")
    expect(page.locator(".echart canvas")).to_have_count(2)  # drawn by the vendored ECharts
    expect(page.locator("[data-figure='reached'] .value")).to_have_text("1")
    page.click(".topbar a[lang=en]")  # the language switch, remembered in a cookie
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Reports")
    expect(page.locator(".topbar .who button")).to_have_text("Log out")
    expect(page.locator("h2").first).to_have_text("Touchpoint funnel")
    expect(page.locator(".echart canvas")).to_have_count(2)
    expect(page.locator("[data-figure='send-rate'] .label").first).to_have_text("Send success rate")
    page.screenshot(path=str(SCREENSHOTS / "report-en.png"), full_page=True)
    page.click("nav a[href='/log']")
    expect(page.locator("th").nth(1)).to_have_text("Due")
    page.click(".topbar a[lang=zh-CN]")
    expect(page.locator("th").nth(1)).to_have_text("计划时间")

    page.goto(f"{live.url}/")
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SCREENSHOTS / "dashboard-phone.png"), full_page=True)
    page.goto(f"{live.url}/templates/{template_id}")
    page.screenshot(path=str(SCREENSHOTS / "editor-phone.png"), full_page=False)
