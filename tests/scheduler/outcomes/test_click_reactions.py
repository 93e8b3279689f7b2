"""Clicks feed segments and exit conditions: a click on a tracked link arrives
as a ``link_clicked`` audience event through the one audience write path, so
"clicked in the last N days" enrolls, ``exit.clicked`` ends an enrollment the
way any exit condition does, and a link preview does neither."""

from __future__ import annotations

import io
import re
from csv import reader as csv_reader
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from auth_helpers import make_user
from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from audiences import segment_queries, segments
from audiences.clicks import ClickCondition, load_clicks
from audiences.target_states import load_states
from scheduler.flows import changes
from scheduler.outbox.models import Enrollment
from scheduler.outcomes.models import LinkClick
from sopbot.db import session_scope

SH = ZoneInfo("Asia/Shanghai")
SHORT = re.compile(r"http://127\.0\.0\.1:8000/l/([A-Za-z0-9_-]{22})")
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) wxwork/4.1.20"
JOINED = datetime(2027, 3, 1, 10, 0, tzinfo=SH)


async def _welcome_link(engine, clock, runtime, **overrides) -> tuple[int, int, str]:
    """A new-friend SOP whose welcome (with a tracked link card) was sent to 张三:
    (template id, contact id, the short link's path)."""
    clock.set(JOINED)
    template_id = publish(engine, new_friend_spec(tracking={"links": True}, **overrides), JOINED)
    contact_id = add_contact(engine, "wm_zhang", "张三", JOINED)
    enroll(engine, template_id, [(contact_id, JOINED)], clock.now())
    clock.advance(timedelta(minutes=1))
    await runtime.dispatch_tick()
    [sent] = mock_sends(engine)
    token = SHORT.fullmatch(str(sent.parts[1]["url"])).group(1)  # type: ignore[union-attr]
    return template_id, contact_id, f"/l/{token}"


def _open(client, path: str, agent: str = BROWSER) -> None:
    answer = client.get(path, headers={"user-agent": agent}, follow_redirects=False)
    assert answer.status_code == 302
    client.app.state.link_clicks.flush()


def _enrollment(engine, template_id: int) -> Enrollment | None:
    with session_scope(engine) as session:
        return session.execute(
            select(Enrollment).where(Enrollment.template_id == template_id)
        ).scalar_one_or_none()


async def test_a_click_exits_the_sop_through_the_exit_path_and_a_preview_does_not(
    engine, clock, runtime, client
):
    template_id, _, path = await _welcome_link(engine, clock, runtime, exit={"clicked": True})

    _open(client, path, agent="Slackbot-LinkExpanding 1.0")
    assert _enrollment(engine, template_id).status == "active"  # type: ignore[union-attr]

    clock.advance(timedelta(minutes=5))
    _open(client, path)
    enrollment = _enrollment(engine, template_id)
    assert enrollment is not None and enrollment.status == "exited"
    assert enrollment.exit_reason == "exit condition: link clicked in 'welcome'"
    # what was still to come is cancelled with the reason, as for any exit condition
    pending = [d for d in deliveries(engine) if d.status != "sent"]
    assert [d.status for d in pending] == ["cancelled", "cancelled"]
    assert {d.reason for d in pending} == {"exit condition: link clicked in 'welcome'"}


async def test_exit_on_clicks_of_named_steps_only(engine, clock, runtime, client):
    template_id, _, path = await _welcome_link(engine, clock, runtime, exit={"clicked": ["coupon"]})
    _open(client, path)  # the welcome's link: not a step that ends it
    assert _enrollment(engine, template_id).status == "active"  # type: ignore[union-attr]


async def test_clicked_in_the_last_7_days_enrolls_and_lapses(engine, clock, runtime, client):
    source_id, contact_id, path = await _welcome_link(engine, clock, runtime)
    follow_up = publish(
        engine,
        new_friend_spec(
            name="点击过问卷的跟进",
            anchor="tag",
            anchor_tag="vip",
            segment={
                "kind": "tagged",
                "tags": "vip",
                "clicked": {"days": 7, "template_id": source_id},
            },
        ),
        clock.now(),
    )
    with session_scope(engine) as session:
        changes.apply_events(
            session,
            [{"kind": "tag_added", "external_id": "wm_zhang", "tags": ["vip"]}],
            clock.now(),
        )
    assert _enrollment(engine, follow_up) is None  # tagged, but has not clicked

    clock.advance(timedelta(hours=1))
    _open(client, path)  # the click arrives as an audience event: the SOP starts
    enrollment = _enrollment(engine, follow_up)
    assert enrollment is not None and enrollment.status == "active"

    # Python (events) and SQL (publish, previews) agree, and the window lapses
    segment = segments.TaggedSegment.model_validate(
        {"tags": "vip", "clicked": {"days": 7, "template_id": source_id, "step": "welcome"}}
    )
    for later, expected in ((timedelta(days=6), 1), (timedelta(days=8), 0)):
        at = clock.now() + later
        with session_scope(engine) as session:
            states = load_states(session, [("contact", contact_id)])
            load_clicks(session, states, at)
            state = states[("contact", contact_id)]
            state.as_of = at
            found = segment_queries.preview(session, "contact", segment, now=at).count
        assert (found, int(segment.matches(state.facts()))) == (expected, expected)


async def test_clicks_are_audience_events_in_order_with_repeats(engine, clock, runtime, client):
    _, contact_id, path = await _welcome_link(engine, clock, runtime)
    client.get(path, headers={"user-agent": BROWSER}, follow_redirects=False)
    client.get(path, headers={"user-agent": ""}, follow_redirects=False)
    client.get(path, headers={"user-agent": BROWSER}, follow_redirects=False)
    assert client.app.state.link_clicks.pending == 3  # answered before written
    assert client.app.state.link_clicks.flush() == 3
    with session_scope(engine) as session:
        rows = list(session.execute(select(LinkClick).order_by(LinkClick.id)).scalars())
    assert [(r.bot, r.repeat) for r in rows] == [(False, False), (True, False), (False, True)]
    assert {r.target_id for r in rows} == {contact_id}


def test_click_conditions_read_plainly():
    assert ClickCondition.model_validate("7d").days == 7
    assert ClickCondition.model_validate(30).days == 30
    for bad in ("soon", 0, 400, True):
        try:
            ClickCondition.model_validate(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")


async def test_the_delivery_log_shows_clicks_and_the_conversion_of_each_delivery(
    engine, clock, runtime, client
):
    goal = {"event": "link_clicked", "where": {"touchpoint": "welcome"}}
    template_id, _, path = await _welcome_link(engine, clock, runtime, goal=goal)
    first = clock.advance(timedelta(minutes=5))
    _open(client, path)
    clock.advance(timedelta(minutes=5))
    _open(client, path)
    _open(client, path, agent="Slackbot 1.0")  # a preview is no click

    log = client.get("/api/deliveries", params={"template_id": template_id}).json()
    by_step = {e["touchpoint_name"]: e for e in log}
    welcome = by_step["welcome"]
    assert welcome["clicks"] == 2
    assert welcome["first_clicked_at"] == first.isoformat().replace("+00:00", "Z")
    assert welcome["converted_at"] == welcome["first_clicked_at"]
    assert (by_step["coupon"]["clicks"], by_step["coupon"]["converted_at"]) == (0, None)

    for params, expected in (
        ({"clicked": "true"}, ["welcome"]),
        ({"converted": "true"}, ["welcome"]),
        ({"clicked": "false"}, ["coupon", "reminder"]),
    ):
        found = client.get("/api/deliveries", params={"template_id": template_id, **params})
        assert sorted(e["touchpoint_name"] for e in found.json()) == expected
    bad = client.get("/api/deliveries", params={"clicked": "maybe"})
    assert bad.status_code == 422

    csv = client.get("/api/deliveries/export.csv", params={"clicked": "true"}).text
    header, line = list(csv_reader(io.StringIO(csv.lstrip("\ufeff"))))[:2]
    assert header[-3:] == [
        "点击次数",
        "首次点击时间 (Asia/Shanghai)",
        "转化时间 (Asia/Shanghai)",
    ]
    assert line[-3:] == ["2", "2027-03-01 10:06:00", "2027-03-01 10:06:00"]


def test_the_segment_builder_offers_clicked_in_the_last_n_days(engine, clock, settings):
    clock.set(JOINED)
    for i, clicked_days_ago in enumerate((2, 10, None)):
        contact_id = add_contact(engine, f"wm_{i}", f"客户{i}", JOINED, tags=["vip"])
        if clicked_days_ago is not None:
            with session_scope(engine) as session:
                session.add(
                    LinkClick(
                        token=f"token-{i}",
                        delivery_id=i + 1,
                        enrollment_id=i + 1,
                        template_id=1,
                        touchpoint_name="welcome",
                        target_kind="contact",
                        target_id=contact_id,
                        clicked_at=JOINED - timedelta(days=clicked_days_ago),
                        user_agent=BROWSER,
                    )
                )
    with TestClient(create_app(settings, engine=engine, clock=clock, run_scheduler=False)) as ui:
        make_user(engine, clock.now(), "wang", ["operator"])
        page = ui.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        done = ui.post(
            "/login", data={"username": "wang", "password": "test-password", "csrf_token": token}
        )
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', done.text).group(1)  # type: ignore[union-attr]

        page = ui.get("/segments/build?all=vip")
        assert re.search(r'id="seg-live-count">当前 3 个客户<', page.text)
        assert "点击过链接" in page.text and "最近 7 天内" in page.text
        page = ui.get("/segments/build?all=vip&clicked=7")
        assert re.search(r'id="seg-live-count">当前 1 个客户<', page.text)

        page = ui.post(
            "/segments/build",
            data={"csrf_token": csrf, "all": "vip", "clicked": "14", "name": "两周内点过"},
        )
        assert "人群已保存" in page.text and '<option value="14" selected>' in page.text
        assert re.search(r'id="seg-live-count">当前 2 个客户<', page.text)
