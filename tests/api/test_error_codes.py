"""Every error code renders in both languages, naming the field in words; the
validators' own texts are read into codes; the API carries code and params."""

from __future__ import annotations

import re

import pytest

from api import editor_errors, editor_forms, error_codes
from sop_templates import library
from sop_templates.service import TemplateValidationError, parse_spec

CJK = re.compile(r"[\u3400-\u9fff\uff00-\uffef\u3000-\u303f]")
ASCII_WORD = re.compile(r"[A-Za-z]{3,}")
SAMPLE = {
    "min": 2,
    "max": 100,
    "value": "x",
    "day": 0,
    "names": "A",
    "name": "coupon",
    "line": 1,
    "size": 5000,
    "channel": "wx",
    "limit": 4000,
    "key": "7",
    "adapter": "wx",
    "roles": "x",
    "status": "draft",
    "to": "paused",
}
# English words a Chinese message may carry as they are (formats, examples, names)
ZH_ALLOWED = {"Asia", "Shanghai", "AppID", "https", "pages", "index", "SOP", "coupon", "abcdef"}
ZH_ALLOWED |= {"API", "JSON"}
ZH_ALLOWED |= {"PNG", "JPG", "GIF", "WEBP", "PDF", "Word", "Excel", "PPT", "TXT", "ZIP"}


@pytest.mark.parametrize("code", sorted(error_codes.MESSAGES))
def test_every_code_renders_in_both_languages(code):
    location = "touchpoints[1].content[0].url"
    zh = error_codes.render(code, SAMPLE, "zh_CN", location)
    en = error_codes.render(code, SAMPLE, "en", location)
    assert zh and en and zh != en
    assert "{" not in zh.replace("{{", "").replace("}}", "") or "{{" in zh
    assert not set(ASCII_WORD.findall(zh)) - ZH_ALLOWED, zh
    assert not CJK.search(en), en


def test_fields_are_named_in_words():
    assert (
        error_codes.field_name("touchpoints[1].content[0].url") == "第 2 个触达点 · 内容 1 · 链接"
    )
    assert error_codes.field_name("touchpoints[1].content[0].url", "en") == (
        "touchpoint 2 · content 1 · link"
    )
    assert error_codes.render("required", {}, "zh_CN", "name") == "名称不能为空"
    assert error_codes.render("required", {}, "en", "name") == "name is required"


def _problems(spec):
    with pytest.raises(TemplateValidationError) as caught:
        parse_spec(spec)
    return caught.value.problems


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda s: s.update(name=""), "required"),
        (lambda s: s["touchpoints"][0].update(timing="soon"), "offset_invalid"),
        (lambda s: s["touchpoints"][0].update(timing="day 0 20:00"), "day_invalid"),
        (lambda s: s["touchpoints"][0].update(timing="day 2 25:00"), "time_invalid"),
        (lambda s: s["touchpoints"][0].update(timing="cron 0 11 * *"), "repeat_invalid"),
        (lambda s: s["touchpoints"][0].update(timing="cron 0 11 31 2 *"), "repeat_never"),
        (
            lambda s: s["touchpoints"][1].update(name=s["touchpoints"][0]["name"]),
            "names_not_unique",
        ),
        (lambda s: s["touchpoints"][0].update(content="{{ contact.nmae }}"), "variable_unknown"),
        (lambda s: s["touchpoints"][0].update(content="{{ nope }}"), "variable_unknown"),
        (lambda s: s["touchpoints"][0].update(content="{% if %}"), "template_syntax"),
        (lambda s: s["touchpoints"][0].update(content=[]), "content_empty"),
        (lambda s: s.update(segment=[1]), "not_a_mapping"),
        (lambda s: s.update(timezone="Mars/Base"), "timezone_unknown"),
        (lambda s: s.update(quiet_hours="late"), "quiet_invalid"),
        (lambda s: s.update(anchor="fixed", start_at="2027-03-01 10:00"), "new_friends_needs_join"),
        (lambda s: s.update(bogus=1), "unknown_field"),
    ],
)
def test_validator_texts_are_read_into_codes(change, code):
    spec = library.load("new_friend")
    change(spec)
    codes = [error_codes.classify(loc, msg)[0] for loc, msg in _problems(spec)]
    assert code in codes, _problems(spec)


def test_no_validator_text_reaches_the_editor_in_either_language():
    form = editor_forms.form_from_spec(library.load("new_friend"))
    form["name"] = ""
    form["touchpoints"][0]["parts"][0]["text"] = "{{ contact.nmae }}"
    form["touchpoints"][1].update(offset_n="soon")
    form["touchpoints"][2]["name"] = form["touchpoints"][1]["name"]
    with pytest.raises(TemplateValidationError) as caught:
        parse_spec(editor_forms.spec_from_form(form))
    zh = editor_errors.map_problems(caught.value.problems, form, "zh_CN")
    en = editor_errors.map_problems(caught.value.problems, form, "en")
    zh_all = [*zh.general, *(m for ms in zh.by_field.values() for m in ms)]
    en_all = [*en.general, *(m for ms in en.by_field.values() for m in ms)]
    assert zh_all and len(zh_all) == len(en_all)
    for message in zh_all:
        assert not set(ASCII_WORD.findall(message)) - ZH_ALLOWED - {"nmae", "contact", "soon"}
        assert "pydantic" not in message and "dict object" not in message
    for message in en_all:
        # only user data (the touchpoint names) may be Chinese
        assert not CJK.search(message.replace("小程序和优惠券", "")), message


@pytest.fixture
def client(engine, clock, settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app) as c:
        yield c


def test_the_api_answers_with_codes(client, engine, clock):
    from auth_helpers import make_auth_headers

    headers = make_auth_headers(engine, clock.now())
    spec = library.load("new_friend")
    spec["touchpoints"][0]["timing"] = "soon"
    answer = client.post(
        "/api/templates", json=spec, headers={**headers, "Accept-Language": "zh-CN"}
    )
    assert answer.status_code == 422
    problem = answer.json()["errors"][0]
    assert problem["code"] == "offset_invalid" and problem["params"] == {"value": "soon"}
    assert problem["message"].startswith("「soon」不是一段时长")
    english = client.post(
        "/api/templates", json=spec, headers={**headers, "Accept-Language": "en-US"}
    ).json()["errors"][0]
    assert english["message"].startswith("“soon” is not a duration")
    # no language asked for: the workspace's (Chinese)
    plain = client.post("/api/templates", json=spec, headers=headers).json()["errors"][0]
    assert plain["message"].startswith("「soon」不是一段时长")


def _assert_coded(answer, status: int, code: str, chinese: str) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == code, body
    assert isinstance(body["params"], dict)
    assert chinese in body["message"], body
    assert (
        not set(ASCII_WORD.findall(body["message"])) - ZH_ALLOWED - {"nope", "missing", "mock"}
    ), body
    assert "detail" in body  # the domain's own text, as before
    return body


def test_404_and_409_answers_are_coded_in_the_callers_language(client, engine, clock):
    from auth_helpers import make_auth_headers

    headers = make_auth_headers(engine, clock.now())
    zh = {**headers, "Accept-Language": "zh-CN,zh;q=0.9"}
    cases = [
        (
            client.get("/api/templates/999", headers=zh),
            404,
            "template_not_found",
            "找不到 SOP 模板",
        ),
        (client.get("/api/contacts/nope", headers=zh), 404, "contact_not_found", "找不到客户 nope"),
        (client.get("/api/groups/missing", headers=zh), 404, "group_not_found", "找不到客户群"),
        (client.get("/api/channels/nope", headers=zh), 404, "channel_not_found", "找不到渠道"),
        (client.patch("/api/users/999", json={}, headers=zh), 404, "user_not_found", "找不到用户"),
        (client.delete("/api/tokens/999", headers=zh), 404, "token_not_found", "找不到 API 令牌"),
        (client.get("/api/no-such-route", headers=zh), 404, "resource_not_found", "找不到"),
    ]
    for answer, status, code, chinese in cases:
        body = _assert_coded(answer, status, code, chinese)
        if code == "template_not_found":
            assert body["params"] == {"key": "999"}

    spec = library.load("new_friend")
    created = client.post("/api/templates", json=spec, headers=zh)
    assert created.status_code == 201, created.text
    template_id = created.json()["id"]
    again = client.post("/api/templates", json=spec, headers=zh)
    body = _assert_coded(again, 409, "name_taken", "已有同名的 SOP")
    assert body["params"] == {"name": spec["name"]}
    never = client.post(f"/api/templates/{template_id}/resume", headers=zh)
    body = _assert_coded(never, 409, "status_not_allowed", "当前为草稿，不能改为已发布")
    assert body["params"]["status"] == "draft"
    channel = {"name": "mock", "adapter": "mock", "config": {}}
    _assert_coded(
        client.post("/api/channels", json=channel, headers=zh), 409, "channel_exists", "已有名为"
    )

    # the same answers in English when asked, with no Chinese in them
    english = client.get("/api/templates/999", headers={**headers, "Accept-Language": "en"})
    assert english.json()["message"] == "there is no SOP template 999"
    # 401 and 403 too
    anonymous = client.get("/api/templates", headers={"Accept-Language": "zh-CN"})
    _assert_coded(anonymous, 401, "not_authenticated", "请先登录")
    analyst = make_auth_headers(engine, clock.now(), username="ana", roles=["analyst"])
    refused = client.post("/api/templates", json=spec, headers=analyst)  # no language: Chinese
    _assert_coded(refused, 403, "forbidden", "你的角色不能")


def test_an_unknown_page_is_an_error_page_in_words(client):
    page = client.get("/no-such-page", headers={"accept": "text/html"})
    assert page.status_code == 404
    assert "找不到所请求的内容" in page.text and "Not Found" not in page.text


def test_malformed_requests_are_coded_in_the_callers_language(client, engine, clock):
    from auth_helpers import make_auth_headers

    headers = make_auth_headers(engine, clock.now())
    for lang, words in (("zh-CN", "请求内容不是有效的 JSON"), ("en-US", "not valid JSON")):
        answer = client.post(
            "/api/templates",
            content=b'{"name": ',
            headers={**headers, "Accept-Language": lang, "Content-Type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["code"] == "json_invalid" and body["params"] == {}
        assert words in body["message"]
        assert body["detail"][0]["type"] == "json_invalid"  # FastAPI's list, as before
    for lang, words in (
        ("zh-CN", "请求中有 1 处无效"),
        ("en-US", "1 invalid value(s) in the request"),
    ):
        answer = client.get(
            "/api/templates/not-a-number", headers={**headers, "Accept-Language": lang}
        )
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["code"] == "request_invalid", body
        assert body["params"]["count"] == 1 and body["params"]["name"]
        assert words in body["message"]
        assert isinstance(body["detail"], list) and body["detail"][0]["loc"]
