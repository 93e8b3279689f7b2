"""The analyst pages: the delivery log with shareable filter URLs and a CSV
button, and the template report with its funnel and sends-per-hour chart —
server-rendered, Chinese labels, nothing loaded from elsewhere."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest
from analytics_world import build_world
from fastapi.testclient import TestClient

from api.app import create_app

NOW = datetime(2027, 3, 20, 4, 0, tzinfo=UTC)


@pytest.fixture
def world(engine, clock):
    clock.set(NOW)
    world = build_world(engine, NOW)
    for i, contact in enumerate(world.contacts):
        world.add(contact, due_at=NOW - timedelta(hours=i + 1), late=timedelta(seconds=i))
        world.add(
            contact,
            touchpoint=1,
            status="failed" if i % 2 else "sent",
            reason="channel mock returned 400" if i % 2 else None,
            due_at=NOW - timedelta(hours=i + 1, minutes=30),
        )
    return world


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def links(html: str, label: str) -> list[str]:
    return [unescape(h) for h in re.findall(rf'href="([^"]+)"[^>]*>{label}<', html)]


def test_log_page_filters_from_the_url_and_offers_the_same_rows_as_csv(world, client):
    url = f"/log?template_id={world.friend_template}&status=failed&limit=50&due_from=&tag="
    page = client.get(url)
    assert page.status_code == 200
    html = page.text
    assert "发送记录" in html and "失败" in html and "channel mock returned 400" in html
    assert html.count('<span class="pill failed">') == 2  # the two failures, nothing else
    assert "<script" not in html and "cdn" not in html.lower()
    [csv_link] = links(html, "下载 CSV")
    query = parse_qs(urlsplit(csv_link).query)
    assert query == {"template_id": [str(world.friend_template)], "status": ["failed"]}
    csv = client.get(csv_link)
    assert csv.status_code == 200 and csv.text.count("失败") == 2
    # the checkbox of the chosen status is ticked, so the form re-submits the same view
    assert re.search(r'value="failed" checked', html)


def test_log_page_pages_with_a_next_link(world, client):
    html = client.get("/log?limit=4").text
    [next_link] = links(html, "下一页")
    assert "cursor=" in next_link and "limit=4" in next_link
    second = client.get(next_link).text
    assert "回到第一页" in second
    first_ids = set(re.findall(r"<tr>\s*<td>(\d+)</td>", html))
    second_ids = set(re.findall(r"<tr>\s*<td>(\d+)</td>", second))
    assert len(first_ids) == 4 and first_ids.isdisjoint(second_ids)


def test_log_page_explains_a_bad_filter(client):
    page = client.get("/log?status=lost&due_from=2027-03-02&due_to=2027-03-01")
    assert page.status_code == 422
    assert "筛选条件有误" in page.text and "status" in page.text and "lost" in page.text


def test_report_pages(world, client):
    index = client.get("/report")
    assert index.status_code == 200 and "新好友 SOP" in index.text
    page = client.get(f"/report/{world.friend_template}")
    assert page.status_code == 200
    html = page.text
    assert "触达节点漏斗" in html and "每小时发送量" in html
    assert html.count("<svg") == 2 and "<script" not in html and "cdn" not in html.lower()
    funnel, chart = (
        ElementTree.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", html, re.S)
    )
    bars = {
        css: [float(r.get("width")) for r in funnel.iter("rect") if r.get("class") == css]
        for css in ("planned", "sent")
    }
    # welcome: all five sent; coupon: three of five — bar lengths say so
    assert bars["sent"][0] == bars["planned"][0] > 0
    assert bars["sent"][1] == pytest.approx(bars["planned"][1] * 0.6, rel=0.01)
    assert {r.get("class") for r in chart.iter("rect")} == {"sent", "failed"}
    assert "v1 · welcome" in html and "v1 · coupon" in html
    assert "5 / 5 · 100.0%" in html and "3 / 5 · 60.0%" in html  # the funnel's labels
    assert "客服小王" in html and "channel mock returned 400" in html
    [csv_link] = links(html, "下载 CSV")
    assert parse_qs(urlsplit(csv_link).query) == {"template_id": [str(world.friend_template)]}
    by_day = client.get(f"/report/{world.friend_template}?interval=day")
    assert "每天发送量" in by_day.text
    bad = client.get(f"/report/{world.friend_template}?interval=week")
    assert bad.status_code == 422 and "interval" in bad.text
