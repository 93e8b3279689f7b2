"""Segments: tag expressions, attribute filters, Python and SQL agreeing, previews,
and how a template spec validates its segment / exit / re-entry fields."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from audience_helpers import register_account, send_events
from factories import new_friend_spec, store_menu_spec
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlalchemy import text

from api.app import create_app
from audiences.segment_queries import segment_query
from audiences.segments import Segment, parse_tag_expr
from audiences.target_states import load_states
from sop_templates import service as templates_service
from sopbot.db import session_scope

NOW = datetime(2027, 3, 1, 1, 0, tzinfo=UTC)
SEGMENT = TypeAdapter(Segment)


@pytest.mark.parametrize(
    ("text", "canonical", "tags", "expected"),
    [
        ("vip", "vip", {"vip"}, True),
        ("vip and not purchased", "vip and not purchased", {"vip", "purchased"}, False),
        ("vip & !purchased", "vip and not purchased", {"vip"}, True),
        ("a or b and c", "a or b and c", {"a"}, True),  # and binds tighter
        ("(a or b) and c", "(a or b) and c", {"a"}, False),
        ("NOT (a | b)", "not (a or b)", set(), True),
        (
            '"spring class" and 春季班',
            '"spring class" and 春季班',
            {"spring class", "春季班"},
            True,
        ),
        ('"and"', '"and"', {"and"}, True),
        ({"all": ["a", {"not": "b c"}]}, 'a and not "b c"', {"a"}, True),
        ({"any": ["a", {"all": ["b", "c"]}]}, "a or b and c", {"b", "c"}, True),
    ],
)
def test_tag_expressions(text, canonical, tags, expected):
    expr = parse_tag_expr(text)
    assert str(expr) == canonical
    assert parse_tag_expr(str(expr)) == expr  # the stored form reads back the same
    assert expr.matches(tags) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("a and", "ends too early"),
        ("(a or b", "missing ')'"),
        ("a b", "unexpected 'b'"),
        (["a", "b"], "ambiguous"),
        ({"xor": ["a"]}, "unknown tag operator"),
        ({"all": []}, "non-empty list"),
    ],
)
def test_bad_tag_expressions_say_why(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_tag_expr(text)


def _population(engine):
    register_account(engine, "staff_a")
    register_account(engine, "staff_b")
    people = [
        ("wm1", "staff_a", ["vip"], {"city": "上海", "child_age": 2}),
        ("wm2", "staff_a", ["vip", "purchased"], {"city": "上海", "child_age": 5}),
        ("wm3", "staff_b", ["vip"], {"city": "北京", "child_age": "2"}),
        ("wm4", "staff_b", [], {"city": "上海", "vip_level": True}),
        ("wm5", "staff_a", ["spring class"], {}),
    ]
    send_events(
        engine,
        NOW,
        [
            {
                "kind": "friend_added",
                "account": account,
                "external_id": ext,
                "name": ext,
                "tags": tags,
                "attributes": attrs,
            }
            for ext, account, tags, attrs in people
        ]
        + [
            {
                "kind": "group_created",
                "external_id": "wr1",
                "name": "徐汇店福利群",
                "tags": ["store"],
            },
            {
                "kind": "group_created",
                "external_id": "wr2",
                "name": "Jing'an VIP",
                "owner": "staff_b",
            },
            {"kind": "group_created", "external_id": "wr3", "name": "静安店_群", "tags": ["store"]},
            {"kind": "friend_deleted", "account": "staff_a", "external_id": "wm5"},
        ],
    )


SEGMENT_CASES = [
    ("contact", {"kind": "tagged", "tags": "vip"}, ["wm1", "wm2", "wm3"]),
    ("contact", {"kind": "tagged", "tags": "vip and not purchased"}, ["wm1", "wm3"]),
    ("contact", {"kind": "tagged", "tags": "not vip"}, ["wm4"]),  # wm5 is deleted
    ("contact", {"kind": "tagged", "tags": "vip", "accounts": ["staff_b"]}, ["wm3"]),
    ("contact", {"kind": "tagged", "tags": "vip", "attributes": {"city": "上海"}}, ["wm1", "wm2"]),
    ("contact", {"kind": "new_friends", "attributes": {"child_age": {"lte": 3}}}, ["wm1"]),
    ("contact", {"kind": "new_friends", "attributes": {"child_age": 2}}, ["wm1"]),  # "2" is text
    ("contact", {"kind": "new_friends", "attributes": {"child_age": "2"}}, ["wm3"]),
    ("contact", {"kind": "new_friends", "attributes": {"city": ["北京", "深圳"]}}, ["wm3"]),
    ("contact", {"kind": "new_friends", "attributes": {"city": {"ne": "上海"}}}, ["wm3"]),
    (
        "contact",
        {"kind": "new_friends", "attributes": {"child_age": {"exists": False}}},
        ["wm4"],
    ),
    ("contact", {"kind": "new_friends", "attributes": {"vip_level": True}}, ["wm4"]),
    ("contact", {"kind": "tagged", "tags": "unknown-tag or vip", "accounts": ["nobody"]}, []),
    ("group", {"kind": "groups", "tags": "store"}, ["wr1", "wr3"]),
    ("group", {"kind": "groups", "name_pattern": "*店*"}, ["wr1", "wr3"]),
    ("group", {"kind": "groups", "name_pattern": "*_*"}, ["wr3"]),  # _ is literal, not LIKE's
    ("group", {"kind": "groups", "name_pattern": "jing'an*"}, ["wr2"]),  # case-insensitive
    ("group", {"kind": "groups", "owners": ["staff_b"]}, ["wr2"]),
    ("group", {"kind": "groups", "tags": "not store"}, ["wr2"]),
]


def test_python_and_sql_agree_on_every_case(engine):
    _population(engine)
    with session_scope(engine) as session:
        for target, raw, expected in SEGMENT_CASES:
            segment = SEGMENT.validate_python(raw)
            table_ids = session.execute(segment_query(session, target, segment)).scalars().all()
            model = "contacts" if target == "contact" else "group_chats"
            all_ids = session.execute(text(f"SELECT id FROM {model}"))
            states = load_states(session, [(target, i) for (i,) in all_ids])
            by_python = sorted(
                s.external_id for s in states.values() if s.active and segment.matches(s.facts())
            )
            by_sql = sorted(states[(target, i)].external_id for i in table_ids)
            assert by_sql == expected, raw
            assert by_python == expected, raw


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def test_preview_counts_and_lists_the_first_rows(engine, client):
    _population(engine)
    response = client.post(
        "/api/segments/preview",
        json={"segment": {"tags": "vip and not purchased or missing"}, "limit": 1},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2
    assert [r["external_id"] for r in body["rows"]] == ["wm1"]
    assert body["rows"][0]["tags"] == ["vip"] and body["rows"][0]["account"] == "staff_a"
    assert body["unknown_tags"] == ["missing"]
    assert body["segment"]["kind"] == "tagged"

    groups = client.post(
        "/api/segments/preview", json={"target": "group", "segment": {"tag": "store"}}
    ).json()
    assert groups["count"] == 2 and {r["name"] for r in groups["rows"]} == {
        "徐汇店福利群",
        "静安店_群",
    }

    bad = client.post(
        "/api/segments/preview", json={"segment": {"kind": "tagged", "tags": "a and"}}
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"][-1] == "tags"


def test_template_segment_preview(engine, client):
    _population(engine)
    created = client.post("/api/templates", json=store_menu_spec(segment={"tag": "store"})).json()
    preview = client.get(f"/api/segments/templates/{created['id']}").json()
    assert preview["count"] == 2


# -- the template spec's segment, exit and re-entry fields -----------------------


def _problems(spec):
    with pytest.raises(templates_service.TemplateValidationError) as info:
        templates_service.parse_spec(spec)
    return dict(info.value.problems)


def test_segment_short_forms_take_their_kind_from_the_target():
    group = templates_service.parse_spec(store_menu_spec(segment={"tag": "store"}))
    assert group.segment.kind == "groups" and str(group.segment.tags) == "store"
    tagged = templates_service.parse_spec(new_friend_spec(segment={"tags": "a and not b"}))
    assert tagged.segment.kind == "tagged"
    friends = templates_service.parse_spec(new_friend_spec(segment={"account": "staff_a"}))
    assert friends.segment.kind == "new_friends" and friends.segment.accounts == ["staff_a"]
    # what is stored reads back as the same spec
    again = templates_service.parse_spec(tagged.model_dump(mode="json"))
    assert again == tagged


@pytest.mark.parametrize(
    ("overrides", "loc", "message"),
    [
        ({"segment": {"kind": "tagged", "tags": "a and"}}, "segment.tags", "ends too early"),
        ({"segment": {"kind": "everyone"}}, "segment", "unknown segment kind 'everyone'"),
        ({"segment": {"kind": "tagged"}}, "segment.tags", "Field required"),
        ({"segment": {"tags": "a", "colour": "red"}}, "segment.colour", "Extra inputs"),
        (
            {"segment": {"kind": "new_friends", "attributes": {"age": {"gt": "x"}}}},
            "segment.attributes.age.gt",
            "number",
        ),
        ({"segment": {"kind": "groups", "tags": "store"}}, "template", "selects groups"),
        (
            {"segment": {"kind": "new_friends"}, "anchor": "tag", "anchor_tag": "x"},
            "template",
            "anchor 'join'",
        ),
        ({"exit": {"tags_added": [""]}}, "exit.tags_added", "empty tag name"),
        ({"exit": {"on_purchase": True}}, "exit.on_purchase", "Extra inputs"),
        ({"reentry": "sometimes"}, "reentry", "never"),
    ],
)
def test_spec_validation_names_the_field(overrides, loc, message):
    problems = _problems(new_friend_spec(**overrides))
    assert loc in problems, problems
    assert message in problems[loc]


@pytest.mark.parametrize(
    "tags",
    ["(" * 5000 + "vip" + ")" * 5000, "not " * 50000 + "vip", {"not": {"not": "vip"}}],
    ids=["5000 parentheses", "50000 nots", "nested objects"],
)
def test_a_deeply_nested_tag_expression_is_a_clear_422(client, tags):
    if isinstance(tags, dict):  # 150 nested {"not": ...} objects
        for _ in range(150):
            tags = {"not": tags}
    preview = client.post("/api/segments/preview", json={"segment": {"tags": tags}})
    assert preview.status_code == 422, preview.text
    assert "标签表达式嵌套过深" in preview.text and "100" in preview.text
    spec = new_friend_spec()
    spec["segment"] = {"kind": "tagged", "tags": tags}
    validated = client.post("/api/templates/validate", json=spec)
    assert validated.status_code == 422 and "嵌套过深" in validated.text


def test_nesting_up_to_the_limit_is_fine():
    assert str(parse_tag_expr("(" * 100 + "vip" + ")" * 100)) == "vip"
    assert str(parse_tag_expr("not not vip")) == "not not vip"
