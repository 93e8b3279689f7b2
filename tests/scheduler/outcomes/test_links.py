"""Tracked links: link cards (and text URLs when ticked) go out as short links;
opening one records one click and redirects at once; a second click is a
repeat, a link preview is counted apart, and a click can reach the goal."""

from __future__ import annotations

import re
import statistics
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from factories import add_contact, enroll, mock_sends, new_friend_spec, publish
from sqlalchemy import select

from scheduler.outcomes import links
from scheduler.outcomes.models import Conversion, LinkClick, TrackedLink
from sopbot.db import session_scope

SH = ZoneInfo("Asia/Shanghai")
SHORT = re.compile(r"http://127\.0\.0\.1:8000/l/([A-Za-z0-9_-]{22})")
BROWSER = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) wxwork/4.1.20 MicroMessenger/7.0.1"
)


async def _sent_welcome(engine, clock, runtime, **overrides) -> list[str]:
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    spec = new_friend_spec(**overrides)
    spec["touchpoints"][0]["content"].append("详情见 https://example.com/detail?id=1 ，欢迎咨询")
    template_id = publish(engine, spec, clock.now())
    contact_id = add_contact(engine, "wm_zhang", "张三", joined)
    enroll(engine, template_id, [(contact_id, joined)], clock.now())
    clock.advance(timedelta(minutes=1))
    await runtime.dispatch_tick()
    [sent] = mock_sends(engine)
    return [str(p.get("url") or p.get("text")) for p in sent.parts]


def _clicks(engine) -> list[LinkClick]:
    with session_scope(engine) as session:
        return list(session.execute(select(LinkClick).order_by(LinkClick.id)).scalars())


async def test_link_cards_go_out_as_short_links_and_text_urls_only_when_ticked(
    engine, clock, runtime
):
    parts = await _sent_welcome(engine, clock, runtime, tracking={"links": True})
    assert SHORT.fullmatch(parts[1])  # the link card
    assert "https://example.com/detail?id=1" in parts[2]  # text left alone
    with session_scope(engine) as session:
        [link] = session.execute(select(TrackedLink)).scalars()
    assert link.url == "https://example.com/q" and link.touchpoint_name == "welcome"
    assert "wm_zhang" not in link.token and "张三" not in parts[1]


async def test_text_urls_are_tracked_when_ticked(engine, clock, runtime):
    parts = await _sent_welcome(
        engine, clock, runtime, tracking={"links": False, "text_urls": True}
    )
    assert parts[1] == "https://example.com/q"
    assert SHORT.search(parts[2]) and "example.com/detail" not in parts[2]
    assert parts[2].startswith("详情见 ") and parts[2].endswith(" ，欢迎咨询")


async def test_a_click_records_once_redirects_302_and_a_second_is_a_repeat(
    engine, clock, runtime, client
):
    parts = await _sent_welcome(engine, clock, runtime, tracking={"links": True})
    path = "/l/" + SHORT.fullmatch(parts[1]).group(1)  # type: ignore[union-attr]

    timings = []
    for _ in range(5):
        started = time.perf_counter()
        answer = client.get(path, headers={"user-agent": BROWSER}, follow_redirects=False)
        timings.append(time.perf_counter() - started)
        assert answer.status_code == 302
        assert answer.headers["location"] == "https://example.com/q"
        # never a cached answer (every click counts), and the app's security headers
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-frame-options"] == "DENY"
    assert statistics.median(timings) < 0.05

    assert client.app.state.link_clicks.flush() == 5  # written in one batch
    clicks = _clicks(engine)
    assert len(clicks) == 5
    assert [c.repeat for c in clicks] == [False, True, True, True, True]
    first = clicks[0]
    assert first.touchpoint_name == "welcome" and first.user_agent == BROWSER
    assert first.clicked_at == clock.now() and not first.bot


async def test_link_previews_are_counted_apart(engine, clock, runtime, client):
    parts = await _sent_welcome(engine, clock, runtime, tracking={"links": True})
    path = "/l/" + SHORT.fullmatch(parts[1]).group(1)  # type: ignore[union-attr]
    for agent in ("facebookexternalhit/1.1", "Slackbot-LinkExpanding 1.0", "python-httpx/0.27", ""):
        answer = client.get(path, headers={"user-agent": agent}, follow_redirects=False)
        assert answer.status_code == 302
    client.get(path, headers={"user-agent": BROWSER}, follow_redirects=False)
    client.app.state.link_clicks.flush()
    clicks = _clicks(engine)
    assert [c.bot for c in clicks] == [True, True, True, True, False]
    assert clicks[-1].repeat is False  # previews do not make a person's click a repeat


def test_unknown_or_malformed_tokens_are_404_in_chinese(client):
    for path in ("/l/AAAAAAAAAAAAAAAAAAAAAA", "/l/x", "/l/" + "%00" * 20):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 404
        assert "链接无效" in answer.text


async def test_a_click_reaches_a_link_goal(engine, clock, runtime, client):
    parts = await _sent_welcome(
        engine,
        clock,
        runtime,
        tracking={"links": True},
        goal={"event": "link_clicked", "where": {"touchpoint": "welcome"}, "exit": True},
    )
    path = "/l/" + SHORT.fullmatch(parts[1]).group(1)  # type: ignore[union-attr]
    client.get(path, headers={"user-agent": "Slackbot 1.0"}, follow_redirects=False)
    client.app.state.link_clicks.flush()
    with session_scope(engine) as session:
        assert session.execute(select(Conversion)).first() is None  # a preview is no click
    clock.advance(timedelta(minutes=5))
    client.get(path, headers={"user-agent": BROWSER}, follow_redirects=False)
    clock.advance(timedelta(seconds=1))  # written a moment later: dated when clicked
    client.app.state.link_clicks.flush()
    with session_scope(engine) as session:
        [conversion] = session.execute(select(Conversion)).scalars()
    assert conversion.converted_at == clock.now() - timedelta(seconds=1)
    assert conversion.touchpoint_name == "welcome"


def test_bot_detection():
    assert links.is_bot("")
    assert links.is_bot("Mozilla/5.0 (compatible; Googlebot/2.1)")
    assert not links.is_bot(BROWSER)
