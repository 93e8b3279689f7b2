"""The staff inbox on a phone (390 px) in a real browser: a staff member opens
the link from their digest, copies the text, marks one task sent, skips one
with a reason, postpones one; a changed link is refused in Chinese.
Screenshots: test-output/screenshots/staff-inbox-*.png."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from browser_kit import no_horizontal_overflow, shot
from staff_world import T0, FakeWeCom, add_wecom, build, remind_spec

from scheduler.runtime import SchedulerRuntime

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


def _deliver(live, engine, clock, settings, wecom: FakeWeCom) -> None:
    async def run() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(wecom))
        rt = SchedulerRuntime(engine, clock, settings, http=http)
        await rt.dispatch_tick()
        await rt.staff_tick()
        await http.aclose()

    live.run(run())  # in the server's loop: Playwright's runs in this thread


def test_the_staff_inbox_at_390_px(live, page: Any, engine, clock, settings):
    expect = sync_api.expect
    settings.render_budget_ms = 10_000
    settings.public_url = live.url
    clock.set(T0)
    add_wecom(engine)
    image = "https://img.example.com/spring-class.png"  # content addresses are https
    spec = remind_spec()
    spec["touchpoints"][0]["content"] = [
        "{{ contact.name }}您好，我是您的专属顾问小王，春季课程今晚 8 点开讲，点击下方链接预约座位。",
        {"image": image},
        {"link": {"title": "预约座位", "url": "https://example.com/booking?from=sop"}},
    ]
    spec["touchpoints"].append(
        {
            "name": "课后回访",
            "timing": "+0m",
            "mode": "remind",
            "content": "{{ contact.name }}，今天的课感觉怎么样？",
        }
    )
    build(engine, per_staff=3, spec=spec)
    wecom = FakeWeCom()
    _deliver(live, engine, clock, settings, wecom)
    text = wecom.to("staff_a")[0]
    assert "今天有 6 个客户 SOP 待执行" in text
    link = text.split("打开任务列表：", 1)[1].strip()

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(link + "&external_userid=wm_staff_a_2")
    expect(page.locator("h1")).to_have_text("我的 SOP 任务")
    expect(page.locator("article.task")).to_have_count(6)
    expect(page.locator("article.task").first).to_contain_text("staff_a客户2")
    expect(page.locator(".hint")).to_contain_text("当前聊天客户的任务排在最前")
    assert page.locator("section.step h2").first.inner_text().startswith("新客户跟进 · 问候")
    # the image is offered to save (the address is not reachable from the test)
    expect(page.locator("article.task img").first).to_have_attribute("src", image)
    assert no_horizontal_overflow(page)
    shot(page, "staff-inbox-390")
    shot(page, "staff-inbox-390-screen", full_page=False)

    # copy the text part (the button confirms)
    first = page.locator("article.task").first
    first.locator("button.copy").first.click()
    expect(first.locator("button.copy").first).to_have_text("✓")

    # 已发送
    first.locator("button.primary").click()
    expect(page.locator(".flash.ok")).to_have_text("已标记为已发送：1")
    expect(page.locator("article.task")).to_have_count(5)

    # 跳过（原因）
    task = page.locator("article.task").first
    task.locator("summary", has_text="跳过（原因）").click()
    task.locator("input[name=other]").fill("客户说这周出差")
    task.locator("form.skip button").click()
    expect(page.locator(".flash.ok")).to_have_text("已跳过：1")

    # 稍后提醒 (within the 6 h deadline: 30 / 60 / 120 minutes)
    task = page.locator("article.task").first
    task.locator("summary", has_text="稍后提醒").click()
    expect(task.locator("form.later button")).to_have_count(3)
    task.locator("form.later button", has_text="60 分钟后").click()
    expect(page.locator(".flash.ok")).to_have_text("稍后再次提醒：1")
    expect(page.locator("section.finished li")).to_have_count(2)
    expect(page.locator("section.finished")).to_contain_text("客户说这周出差")
    assert no_horizontal_overflow(page)
    shot(page, "staff-inbox-390-after")

    page.set_viewport_size({"width": 1366, "height": 900})
    assert no_horizontal_overflow(page)

    # a changed link: refused, in Chinese, nothing shown
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(link[:-3] + "abc")
    expect(page.locator(".refused")).to_contain_text("链接无效")
    expect(page.locator("article.task")).to_have_count(0)
    shot(page, "staff-inbox-refused")
