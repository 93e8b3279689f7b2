"""Every page at 390 px and 1366 px, in Chinese and English: no horizontal
overflow, no English error text in Chinese, no Chinese in English outside user
data; the calendar shows tomorrow's 11:00 group send with its group count.
Screenshots in test-output/screenshots/."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from auth_helpers import token_headers
from browser_kit import no_horizontal_overflow, shot
from test_editor_pickers import login, post

from sop_templates import library

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

CJK = re.compile(r"[\u3400-\u9fff]")
ENGLISH_ERRORS = re.compile(
    r"Input should|String should|Field required|dict object|pydantic|Value error|"
    r"is not a duration|needs 5 fields|must be unique|undefined variable|already past|"
    r"\d+ per \d+[dhm]\b|Traceback|Internal Server Error|has no attribute|Not Found|"
    r"Method Not Allowed|cannot make it|already exists"
)


def ascii_store_groups() -> dict:
    spec = library.load("store_groups")
    spec.update(name="Store groups daily", description="menu at 11, tip at 18")
    spec["touchpoints"][0].update(name="Lunch menu", content=["Menu of {{ group.name }}"])
    spec["touchpoints"][1].update(name="Evening tip", content=["Tip of the day"])
    return spec


def ascii_new_friends() -> dict:
    spec = library.load("new_friend")
    spec.update(name="New friends", description="welcome, coupon, reminder")
    for n, tp in enumerate(spec["touchpoints"]):
        tp.update(name=f"Step {n + 1}", content=["Hello {{ contact.name }}"])
    return spec


def seed(live: Any, engine, clock) -> dict[str, int]:
    user_id = 1
    ids: dict[str, int] = {}
    with httpx.Client(
        base_url=live.url, headers=token_headers(engine, clock.now(), user_id)
    ) as api:
        for n in range(4):
            answer = api.post(
                "/api/groups",
                json={"external_id": f"wr_{n}", "name": f"Store {n}", "tags": ["store"]},
            )
            assert answer.status_code == 201, answer.text
        api.post("/api/contacts", json={"external_id": "wm_li", "name": "Li Lei"})
        for key, spec in (("groups", ascii_store_groups()), ("friends", ascii_new_friends())):
            created = api.post("/api/templates", json=spec)
            assert created.status_code == 201, created.text
            ids[key] = created.json()["id"]
            assert api.post(f"/api/templates/{ids[key]}/publish", json={}).status_code == 200
    return ids


def pages(ids: dict[str, int]) -> list[str]:
    return [
        "/",
        "/templates",
        "/templates/new",
        "/templates/new?start=new_friend",
        "/templates/new?start=blank-group",
        f"/templates/{ids['groups']}",
        f"/templates/{ids['friends']}",
        "/contacts",
        "/contacts/1",
        "/groups",
        "/groups/1",
        "/segments",
        "/channels",
        "/channels/mock",
        "/users",
        "/account",
        "/audit",
        "/settings",
        "/log",
        "/report",
        f"/report/{ids['groups']}",
        "/calendar",
        "/calendar?view=day&day=2027-03-03",
        "/calendar?view=month",
        "/materials",
        "/no-such-page",  # an unknown address: an error page in words
    ]


def visible_text(page: Any) -> str:
    """The page's text without the language switch (it names the other language)
    and without message content (what recipients get, rendered with sample data)."""
    return page.evaluate(
        "(() => { const b = document.body.cloneNode(true);"
        " b.querySelectorAll('[lang], #preview .bubble').forEach(e => e.remove());"
        " return b.innerText; })()"
    )


def test_every_page_fits_390_px_and_speaks_one_language(live, page, engine, clock):
    expect = sync_api.expect
    login(page, live, engine, clock)
    ids = seed(live, engine, clock)

    # the calendar: tomorrow (Wed) 11:00, the lunch menu to 4 groups, before any planning
    page.goto(f"{live.url}/calendar")
    tomorrow = page.locator(".calendar-day[data-day='2027-03-03']")
    expect(tomorrow.locator("h2")).to_contain_text("明天")
    lunch = tomorrow.locator("li.send[data-touchpoint='Lunch menu']")
    expect(lunch.locator(".when")).to_have_text("11:00")
    expect(lunch.locator(".who")).to_have_text("4 个群")
    shot(page, "calendar-week")
    lunch.locator(".who").click()
    expect(page.locator("#recipients tr")).to_have_count(5)  # header + 4 groups
    page.goto(f"{live.url}/templates")
    expect(page.locator("body")).to_contain_text("下次发送：明天 11:00，4 个群")

    for width in (1366, 390):
        page.set_viewport_size({"width": width, "height": 844})
        for lang in ("zh", "en"):
            if lang == "en":
                page.goto(f"{live.url}/lang?to=en&next=/")
            else:
                page.goto(f"{live.url}/lang?to=zh_CN&next=/")
            for path in pages(ids):
                page.goto(f"{live.url}{path}")
                assert page.locator("h1").count() >= 1, path
                text = visible_text(page)
                assert not ENGLISH_ERRORS.search(text), (lang, path, ENGLISH_ERRORS.search(text))
                if lang == "en" and "start=new_friend" not in path:  # a scenario's own text
                    found = CJK.findall(text)
                    assert not found, (path, "".join(found)[:80])
                assert no_horizontal_overflow(page), (width, lang, path)
                if width == 390 and lang == "zh":
                    name = re.sub(r"[^a-z0-9]+", "-", path.strip("/") or "dashboard")
                    shot(page, f"phone-{name}", full_page=False)

    # at 390 px the menu folds behind a button, the log's filters fold
    page.goto(f"{live.url}/lang?to=zh_CN&next=/log")
    expect(page.locator("#main-nav")).to_be_hidden()
    page.click("[data-nav-toggle]")
    expect(page.locator("#main-nav")).to_be_visible()
    expect(page.locator("#f-template_id")).to_be_hidden()


def test_editor_errors_in_chinese_and_english(live, page, engine, clock):
    expect = sync_api.expect
    login(page, live, engine, clock)
    for lang, bad_offset, expected in (
        ("zh_CN", "soon", "不是一段时长"),
        ("en", "soon", "is not a duration: pick a number"),
    ):
        page.goto(f"{live.url}/lang?to={lang}&next=/templates/new?start=new_friend")
        page.fill("#name", "")
        page.fill("#tp-0-part-0-text", "{{ contact.nmae }}")
        page.fill("#tp-1-shorthand", bad_offset)
        page.fill("#tp-2-name", page.input_value("#tp-1-name"))
        post(page, "button[name=action][value='check']")
        errors = page.locator("#editor .field-error, #editor-errors")
        expect(page.locator("[data-error-for='tp-1-shorthand']")).to_contain_text(expected)
        text = " ".join(errors.all_inner_texts())
        assert not ENGLISH_ERRORS.search(text) or lang == "en", text
        if lang == "zh_CN":
            assert "名称不能为空" in text
        else:
            assert not CJK.search(text.replace(page.input_value("#tp-1-name"), "")), text
        shot(page, f"editor-errors-{lang}")
