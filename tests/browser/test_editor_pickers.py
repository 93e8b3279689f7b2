"""An operator builds the README's three SOPs with the pickers and the material
library only (no typed code: the menu image, the questionnaire link and the mall
mini-program come from 素材库) and the stored timings are the README's; shorthand
typed instead gives the same. Chinese UI, 1366 px; screenshots in
test-output/screenshots/."""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

import pytest
from auth_helpers import PASSWORD, make_user
from browser_kit import shot
from sqlmodel import Session

from sop_templates import service as templates_service
from sop_templates.timing import parse_timing

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

README = {
    "新好友 SOP": ["+0m", "+3h", "day 2 20:00"],
    "客户标签 SOP": ["day 1 20:00", "day 2 19:30", "day 3 09:00"],
    "群聊 SOP": ["cron 0 11 * * *", "cron 0 18 * * *"],
}


def stored_timings(engine, name: str) -> list[dict]:
    with Session(engine) as session:
        template = next(t for t in templates_service.list_templates(session) if t.name == name)
        spec = templates_service.parse_spec(template.draft)
    return [tp.timing.model_dump(mode="json") for tp in spec.touchpoints]


def readme_timings(name: str) -> list[dict]:
    out = []
    for text in README[name]:
        spec = templates_service.parse_spec(
            {"name": "x", "touchpoints": [{"name": "a", "timing": text, "content": "hi"}]}
        )
        out.append(spec.touchpoints[0].timing.model_dump(mode="json"))
    assert all(parse_timing(t) for t in README[name])
    return out


def login(page: Any, live: Any, engine, clock) -> None:
    make_user(engine, clock.now(), "wang", ["admin"])
    page.goto(f"{live.url}/login")
    page.fill("#username", "wang")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/$|/templates|/setup"))


def post(page: Any, selector: str) -> None:
    """Click a button that posts the editor with htmx and wait for the swap."""
    with page.expect_response(lambda r: r.request.method == "POST" and "/live" not in r.url):
        page.click(selector)
    page.wait_for_selector("#editor")


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + b"\xe0\x60\x20" * 8 for _ in range(8))
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + (chunk(b"IEND", b""))
    )


def fill_library(page: Any, live: Any) -> None:
    """素材库: the menu picture, the questionnaire link and the mall mini-program."""
    page.goto(f"{live.url}/materials")
    page.set_input_files(
        "#material-file", files=[{"name": "菜单.png", "mimeType": "image/png", "buffer": png()}]
    )
    page.click("#upload-button")
    page.wait_for_url(re.compile(r"/materials\?done=1"))
    for kind, fields in (
        ("link", {"title": "问卷", "url": "https://example.com/q"}),
        (
            "miniprogram",
            {"title": "商城小程序", "appid": "wx0123456789abcdef", "page": "pages/mall/index.html"},
        ),
    ):
        page.select_option("#card-kind", kind)
        for name, value in fields.items():
            page.fill(f"#card-{name}", value)
        page.click("form[action='/materials/card'] button[type=submit]")
        page.wait_for_url(re.compile(r"/materials\?done=1"))
    assert page.locator("#materials figure").count() == 3


def add_part(page: Any, step: int, kind: str) -> None:
    page.select_option(f"#tp-{step}-new-part", kind)
    post(page, f"button[name=action][value='add_part:{step}']")


def stored_parts(engine, name: str) -> list[list[dict]]:
    with Session(engine) as session:
        template = next(t for t in templates_service.list_templates(session) if t.name == name)
        spec = templates_service.parse_spec(template.draft)
    return [[p.model_dump(exclude_none=True) for p in tp.content] for tp in spec.touchpoints]


def save(page: Any) -> None:
    page.click("#save")
    page.wait_for_url(re.compile(r"/templates/\d+\?done=created"))


def test_the_three_readme_sops_with_pickers_only(live, page, engine, clock):
    expect = sync_api.expect
    login(page, live, engine, clock)
    fill_library(page, live)

    # 1 · 新好友 SOP: 加好友后 0 分钟 / 3 小时 / 第 2 天 20:00
    page.goto(f"{live.url}/templates/new?start=blank")
    page.fill("#name", "新好友 SOP")
    page.select_option("#segment_kind", "new_friends")
    expect(page.locator("label[for='tp-0-offset_n']")).to_have_text("加好友后")
    page.fill("#tp-0-name", "欢迎语")
    page.fill("#tp-0-part-0-text", "你好！")
    page.click("#tp-0-part-0 button[data-insert='{{ contact.name }}']")  # 插入客户昵称
    expect(page.locator("#tp-0-part-0-text")).to_have_value("你好！{{ contact.name }}")
    add_part(page, 0, "link")  # the questionnaire, from the library
    page.select_option("#tp-0-part-1-from-library", label="问卷")
    expect(page.locator("#tp-0-part-1-url")).to_have_value("https://example.com/q")
    post(page, "button[name=action][value='add_touchpoint']")
    expect(page.locator("#tp-1-name")).to_be_focused()  # focus kept on the new step
    expect(page.locator("#tp-1-name")).to_have_value("第 2 步")  # a new step starts valid
    page.fill("#tp-1-name", "小程序和优惠券")
    page.fill("#tp-1-offset_n", "3")
    page.select_option("#tp-1-offset_unit", "h")
    add_part(page, 1, "miniprogram")  # the mall mini-program, from the library
    page.select_option("#tp-1-part-1-from-library", label="商城小程序")
    post(page, "button[name=action][value='add_touchpoint']")
    page.fill("#tp-2-name", "第二天提醒")
    page.select_option("#tp-2-timing_kind", "day_at")
    page.fill("#tp-2-day", "2")
    page.fill("#tp-2-at", "20:00")
    page.press("#tp-2-name", "Enter")  # Enter does not submit
    assert "/templates/new" in page.url
    post(page, "button[name=action][value='check']")
    expect(page.locator("#check-passed")).to_contain_text("检查通过")
    # the live timeline follows the unsaved form, in words
    expect(page.locator("#timeline")).to_contain_text("加好友后 3 小时")
    expect(page.locator("#timeline")).to_contain_text("第 2 天 20:00")
    shot(page, "pickers-new-friend")
    # every button has an accessible name
    unnamed = page.evaluate(
        "[...document.querySelectorAll('#editor button')].filter(b => !b.getAttribute('aria-hidden')"
        " && !(b.getAttribute('aria-label') || b.innerText.trim())).length"
    )
    assert unnamed == 0
    # leaving with unsaved changes asks first
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))
    page.evaluate("document.querySelector('a[href=\"/templates\"]').click()")
    page.wait_for_timeout(300)
    assert asked == ["beforeunload"] and "/templates/new" in page.url
    save(page)
    assert stored_timings(engine, "新好友 SOP") == readme_timings("新好友 SOP")
    parts = stored_parts(engine, "新好友 SOP")
    assert parts[0][1] == {"kind": "link", "title": "问卷", "url": "https://example.com/q"}
    assert parts[1][1]["kind"] == "miniprogram" and parts[1][1]["appid"] == "wx0123456789abcdef"

    # 2 · 客户标签 SOP: 从打标签开始，第 1 天 20:00 / 第 2 天 19:30 / 第 3 天 09:00
    page.goto(f"{live.url}/templates/new?start=blank")
    page.fill("#name", "客户标签 SOP")
    page.select_option("#segment_kind", "tagged")
    page.fill("#segment_tags", "spring-class")
    page.select_option("#anchor", "tag")
    page.fill("#anchor_tag", "spring-class")
    expect(page.locator("label[for='tp-0-offset_n']")).to_have_text("打标签后")
    for i, (day, at) in enumerate((("1", "20:00"), ("2", "19:30"), ("3", "09:00"))):
        if i:
            post(page, "button[name=action][value='add_touchpoint']")
        page.fill(f"#tp-{i}-name", ["上课提醒", "预习", "课程回访"][i])
        page.fill(f"#tp-{i}-part-0-text", "今晚上课")
        page.select_option(f"#tp-{i}-timing_kind", "day_at")
        page.fill(f"#tp-{i}-day", day)
        page.fill(f"#tp-{i}-at", at)
    shot(page, "pickers-tagged")
    save(page)
    assert stored_timings(engine, "客户标签 SOP") == readme_timings("客户标签 SOP")

    # 3 · 群聊 SOP: 每天 11:00 和每天 18:00，发给打了 store 标签的群
    page.goto(f"{live.url}/templates/new?start=blank-group")
    page.fill("#name", "群聊 SOP")
    page.fill("#segment_tags", "store")
    expect(page.locator("#tp-0-timing_kind")).to_have_value("repeat")
    page.fill("#tp-0-name", "午市菜单")
    page.fill("#tp-0-part-0-text", "今日菜单")
    page.select_option("#tp-0-repeat_freq", "daily")
    page.fill("#tp-0-repeat_time", "11:00")
    add_part(page, 0, "image")  # the menu picture, from the library
    page.select_option("#tp-0-part-1-from-library", label="菜单.png")
    # the live preview shows the real picture, not its address
    expect(page.locator("#preview img[src^='/materials/']").first).to_be_visible()
    post(page, "button[name=action][value='add_touchpoint']")
    page.fill("#tp-1-name", "美食小贴士")
    page.fill("#tp-1-repeat_time", "18:00")
    body = page.locator("#editor").inner_text()
    assert "加好友" not in body  # group SOPs are worded for groups
    expect(page.locator("#timeline")).to_contain_text("每天 18:00")
    shot(page, "pickers-groups")
    save(page)
    assert stored_timings(engine, "群聊 SOP") == readme_timings("群聊 SOP")
    menu = stored_parts(engine, "群聊 SOP")[0]
    assert re.fullmatch(r"/materials/\d+/菜单\.png", menu[1]["url"]), menu
    # the saved group SOP shows its repeat in the picker, not as cron
    expect(page.locator("#tp-0-timing_kind")).to_have_value("repeat")
    expect(page.locator("#tp-1-repeat_time")).to_have_value("18:00")
    expect(page.locator("#timeline")).to_contain_text("每天 11:00")
    shot(page, "pickers-groups-saved")


SHORTHAND = {
    "新好友 SOP": ["0分钟", "3小时", "第2天 20:00"],
    "客户标签 SOP": ["20点", "第二天 晚上7点半", "第3天 9:00"],
    "群聊 SOP": ["每天 11:00", "每天18点"],
}


def test_typed_shorthand_normalises_to_the_readme_timings(live, page, engine, clock):
    expect = sync_api.expect
    login(page, live, engine, clock)
    for name, typed in SHORTHAND.items():
        start = "blank-group" if name == "群聊 SOP" else "blank"
        page.goto(f"{live.url}/templates/new?start={start}")
        page.fill("#name", name)
        if name == "客户标签 SOP":
            page.select_option("#segment_kind", "tagged")
            page.fill("#segment_tags", "spring-class")
            page.select_option("#anchor", "tag")
            page.fill("#anchor_tag", "spring-class")
        elif name == "群聊 SOP":
            page.fill("#segment_tags", "store")
        for i, text in enumerate(typed):
            if i:
                post(page, "button[name=action][value='add_touchpoint']")
            page.fill(f"#tp-{i}-name", f"步骤{i}")
            page.fill(f"#tp-{i}-part-0-text", "你好")
            page.fill(f"#tp-{i}-shorthand", text)
        post(page, "button[name=action][value='check']")  # normalised into the pickers
        expect(page.locator("#check-passed")).to_be_visible()
        expect(page.locator("#tp-0-shorthand")).to_have_value("")
        save(page)
        assert stored_timings(engine, name) == readme_timings(name), name
    # shorthand that is not understood is named, in Chinese, next to the field
    page.goto(f"{live.url}/templates/new?start=blank")
    page.fill("#name", "x")
    page.fill("#tp-0-name", "a")
    page.fill("#tp-0-part-0-text", "你好")
    page.fill("#tp-0-shorthand", "下周")
    post(page, "button[name=action][value='check']")
    expect(page.locator("[data-error-for='tp-0-shorthand']")).to_contain_text("不是一段时长")
    expect(page.locator("#tp-0-shorthand")).to_have_value("下周")
    shot(page, "shorthand-error")
