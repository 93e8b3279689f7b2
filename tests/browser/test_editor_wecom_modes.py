"""An operator authors a new-friend SOP on a WeCom channel in the editor: a
欢迎语 step (with what to do without a welcome code) and a 朋友圈 video step
(with who sees it). The stored template equals the same SOP written as YAML.
Chinese UI, 1366 px and 390 px; screenshots in test-output/screenshots/."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from browser_kit import no_horizontal_overflow, shot
from sqlmodel import Session
from test_editor_pickers import login, post

from channels.registry import ensure_instance
from sop_templates import service as templates_service
from sopbot.db import session_scope

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

CONFIG = {"corp_id": "ww_corp", "corp_secret": "corp-secret", "agent_id": 1000002}

YAML = """
name: 新好友欢迎（企业微信）
target: contact
timezone: Asia/Shanghai
anchor: join
channel: wecom-a
segment: {kind: new_friends}
touchpoints:
  - name: 欢迎语
    timing: +0m
    mode: welcome
    fallback: remind
    content:
      - 你好，欢迎加入！
      - {link: {title: 新人问卷, url: "https://example.com/q"}}
  - name: 新品视频
    timing: +1d
    mode: moment
    visible_to: {accounts: [staff_li], tags: [vip]}
    content:
      - 新品开箱视频
      - {video: "wecom-media:VIDEO_1"}
"""


def stored_draft(engine, name: str) -> dict[str, Any]:
    with Session(engine) as session:
        template = next(t for t in templates_service.list_templates(session) if t.name == name)
        return templates_service.parse_spec(template.draft).model_dump(mode="json")


def test_a_new_friend_sop_with_a_welcome_and_a_video_moment(live, page, engine, clock):
    expect = sync_api.expect
    with session_scope(engine) as session:
        ensure_instance(session, "wecom-a", "wecom", CONFIG)
    login(page, live, engine, clock)
    page.goto(f"{live.url}/templates/new?start=blank")
    page.fill("#name", "新好友欢迎（企业微信）")
    page.select_option("#segment_kind", "new_friends")
    # on the mock channel there is no 欢迎语 or 朋友圈 to choose
    expect(page.locator("#tp-0-mode option[value=welcome]")).to_be_hidden()
    assert page.locator("#tp-0-mode option[value=welcome]").is_disabled()
    page.select_option("#channel", "wecom-a")
    assert page.locator("#tp-0-mode option[value=welcome]").is_enabled()

    # 1 · 欢迎语 at +0, falling back to a reminder without a welcome code
    page.fill("#tp-0-name", "欢迎语")
    page.select_option("#tp-0-mode", "welcome")
    expect(page.locator("#tp-0-fallback")).to_be_visible()
    expect(page.locator("#tp-0-visible_tags")).to_be_hidden()
    expect(page.locator("label[for='tp-0-fallback']")).to_have_text("没有欢迎语凭证时")
    page.select_option("#tp-0-fallback", "remind")
    page.fill("#tp-0-part-0-text", "你好，欢迎加入！")
    page.select_option("#tp-0-new-part", "link")
    post(page, "button[name=action][value='add_part:0']")
    page.fill("#tp-0-part-1-title", "新人问卷")
    page.fill("#tp-0-part-1-url", "https://example.com/q")

    # 2 · 朋友圈 a day later: one video, seen by staff_li's customers and vip
    post(page, "button[name=action][value='add_touchpoint']")
    page.fill("#tp-1-name", "新品视频")
    page.select_option("#tp-1-mode", "moment")
    expect(page.locator("#tp-1-fallback")).to_be_hidden()
    page.fill("#tp-1-visible_accounts", "staff_li")
    page.fill("#tp-1-visible_tags", "vip")
    page.fill("#tp-1-part-0-text", "新品开箱视频")
    page.select_option("#tp-1-new-part", "video")
    post(page, "button[name=action][value='add_part:1']")
    expect(page.locator("#tp-1-part-1")).to_contain_text("视频")
    page.fill("#tp-1-part-1-url", "wecom-media:VIDEO_1")

    # a second video is refused, in Chinese, next to the content
    page.select_option("#tp-1-new-part", "image")
    post(page, "button[name=action][value='add_part:1']")
    page.fill("#tp-1-part-2-url", "wecom-media:IMG_1")
    post(page, "button[name=action][value='check']")
    expect(page.locator("[data-error-for='tp-1-content']")).to_contain_text(
        "朋友圈只能是：文字加最多 9 张图片，或 1 个视频，或 1 个链接，不能混用"
    )
    shot(page, "wecom-modes-moment-mixed")
    post(page, "button[name=action][value='remove_part:1:2']")

    post(page, "button[name=action][value='check']")
    expect(page.locator("#check-passed")).to_contain_text("检查通过")
    expect(page.locator("#tp-0-mode")).to_have_value("welcome")
    expect(page.locator("#tp-1-mode")).to_have_value("moment")
    expect(page.locator("#live-panels")).to_contain_text("wecom-media:VIDEO_1")  # the preview
    shot(page, "wecom-modes-1366")
    page.set_viewport_size({"width": 390, "height": 844})
    assert no_horizontal_overflow(page)
    shot(page, "wecom-modes-390")
    for i in (0, 1):  # the mode fields, as a phone shows them
        page.evaluate(f"document.getElementById('tp-{i}-mode').scrollIntoView()")
        shot(page, f"wecom-modes-390-step-{i + 1}", full_page=False)
    page.set_viewport_size({"width": 1366, "height": 900})

    page.click("#save")
    page.wait_for_url(re.compile(r"/templates/\d+\?done=created"))
    expected = templates_service.parse_spec(yaml.safe_load(YAML)).model_dump(mode="json")
    assert stored_draft(engine, "新好友欢迎（企业微信）") == expected
    # the saved SOP opens with its modes as chosen
    expect(page.locator("#tp-0-fallback")).to_have_value("remind")
    expect(page.locator("#tp-1-visible_tags")).to_have_value("vip")


def test_a_welcome_later_than_plus_0_is_refused_in_chinese(live, page, engine, clock):
    expect = sync_api.expect
    with session_scope(engine) as session:
        ensure_instance(session, "wecom-a", "wecom", CONFIG)
    login(page, live, engine, clock)
    page.goto(f"{live.url}/templates/new?start=blank")
    page.fill("#name", "迟到的欢迎语")
    page.select_option("#segment_kind", "new_friends")
    page.select_option("#channel", "wecom-a")
    page.fill("#tp-0-name", "欢迎语")
    page.select_option("#tp-0-mode", "welcome")
    page.fill("#tp-0-offset_n", "3")
    page.select_option("#tp-0-offset_unit", "h")
    page.fill("#tp-0-part-0-text", "你好")
    post(page, "button[name=action][value='check']")
    expect(page.locator("[data-error-for='tp-0-mode']")).to_contain_text("欢迎语只能用于新好友 SOP")
    shot(page, "wecom-modes-welcome-refused")
