"""The audit log speaks the operator's language: actions, object kinds and
sopbot's own summaries in words (Chinese or English), on the audit page, the
dashboard and the editor's history; user data shown as it is."""

from __future__ import annotations

import re

import pytest
from auth_helpers import make_auth_headers
from fastapi.testclient import TestClient

from api.app import create_app
from api.users import audit_words
from sop_templates import library

CJK = re.compile(r"[\u3400-\u9fff]")
CODES = re.compile(r"\btemplate\.\w+|\buser\.\w+|require_approval|\d+ enrolled\b|\(keep\)")


@pytest.fixture
def client(engine, clock, settings):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=make_auth_headers(engine, clock.now())) as c:
        yield c


def _text(html: str) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    body = re.sub(r'\s(title|href|value|class|id|name|for|aria-\w+|data-[\w-]+)="[^"]*"', " ", body)
    return re.sub(r"<[^>]+>", " ", body)


def test_the_audit_log_in_chinese_and_english(client):
    spec = library.load("new_friend")
    spec["name"] = "Welcome series"
    for n, tp in enumerate(spec["touchpoints"]):
        tp.update(name=f"Step {n + 1}", content=["Hello {{ contact.name }}"])
    template_id = client.post("/api/templates", json=spec).json()["id"]
    for step in ("publish", "pause", "resume", "archive"):
        answer = client.post(f"/api/templates/{template_id}/{step}", json={})
        assert answer.status_code == 200, answer.text
    answer = client.put("/api/settings/workspace", json={"require_approval": True})
    assert answer.status_code == 200, answer.text

    zh = _text(client.get("/audit?lang=zh_CN").text)
    for words in ("新建 SOP", "发布", "版本 1（已加入的保留原版本）", "暂停", "恢复", "归档"):
        assert words in zh, words
    assert "取消了 0 条待发送" in zh and "发布前需审批：是" in zh and "SOP 模板" in zh
    assert not CODES.search(zh), CODES.search(zh)

    en = _text(client.get("/audit?lang=en").text)
    assert "published it" in en and "version 1 (enrolled keep theirs)" in en
    assert "approval before publishing: yes" in en and "0 pending sends cancelled" in en
    assert not CODES.search(en), CODES.search(en)
    assert not CJK.search(en.replace("中文", "")), CJK.findall(en)[:20]  # but the switch

    for path in ("/", f"/templates/{template_id}"):  # the dashboard, the editor's history
        page = _text(client.get(f"{path}?lang=zh_CN").text)
        assert "发布" in page and not re.search(r"\btemplate\.\w+", page), path


@pytest.mark.parametrize("action", sorted(audit_words.ACTIONS))
def test_every_action_has_words_in_both_languages(action):
    zh, en = audit_words.action_text(action, "zh_CN"), audit_words.action_text(action, "en")
    assert CJK.search(zh) and not CJK.search(en) and "." not in en


def test_summaries_keep_user_data():
    assert audit_words.summary_text("template.enroll", "contact 5: 3 enrolled") == (
        "contact 5: 加入 3 个"
    )
    assert audit_words.summary_text("user.create", "li (operator,analyst)") == "li（运营、分析师）"
    assert audit_words.summary_text("user.update", "li: roles admin, active False", "en") == (
        "li: roles admin, active no"
    )
    assert audit_words.summary_text("contact.upsert", "wm_小李") == "wm_小李"
