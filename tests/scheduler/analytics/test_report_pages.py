"""The analyst pages: the delivery log with shareable filter URLs and a CSV
button, and the template report with its funnel and sends-per-hour chart —
server-rendered pages of the operator UI (its top bar, both languages), nothing
loaded from elsewhere."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from analytics_world import build_world
from auth_helpers import PASSWORD, make_user
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


def links(html: str, label: str) -> list[str]:
    return [unescape(h) for h in re.findall(rf'href="([^"]+)"[^>]*>{label}<', html)]


def nothing_from_elsewhere(html: str) -> None:
    """Only the app's own stylesheet and scripts (htmx, ECharts vendored): no CDN."""
    assert "cdn" not in html.lower()
    scripts = re.findall(r"<script[^>]*>", html)
    assert '<script src="/static/vendor/htmx-2.0.11.min.js" defer>' in scripts
    assert all(re.fullmatch(r'<script src="/static/[^"]+" defer>', s) for s in scripts)
    assert re.findall(r'<link[^>]*href="([^"]+)"', html) == [
        "/static/favicon.svg",
        "/static/app.css",
    ]


def test_log_page_filters_from_the_url_and_offers_the_same_rows_as_csv(world, client):
    url = f"/log?template_id={world.friend_template}&status=failed&limit=50&due_from=&tag="
    page = client.get(url)
    assert page.status_code == 200
    html = page.text
    assert "发送记录" in html and "失败" in html and "channel mock returned 400" in html
    assert html.count('<span class="pill failed">') == 2  # the two failures, nothing else
    nothing_from_elsewhere(html)
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
    [alert] = re.findall(r'<div class="flash error" role="alert">(.*?)</div>', page.text)
    assert "筛选条件有误" in alert and "<code>status</code>" in alert and "lost" in alert
    english = client.get("/log?status=lost&lang=en")
    assert english.status_code == 422
    assert "The filters are wrong (parameter <code>status</code>)" in english.text


def test_report_pages(world, client):
    index = client.get("/report")
    assert index.status_code == 200 and "新好友 SOP" in index.text
    page = client.get(f"/report/{world.friend_template}")
    assert page.status_code == 200
    html = page.text
    assert "触达节点漏斗" in html and "每小时发送量" in html
    assert html.count('class="echart"') == 2 and "/static/vendor/echarts-6.1.0.min.js" in html
    nothing_from_elsewhere(html)
    funnel, chart = (
        json.loads(unescape(data)) for data in re.findall(r'data-chart="([^"]+)"', html)
    )
    # welcome: all five sent; coupon: three of five
    assert funnel["categories"][:2] == ["welcome", "coupon"]
    planned, sent = (s["data"] for s in funnel["series"])
    assert planned[:2] == [5, 5] and sent[:2] == [5, 3]
    assert funnel["labels"][:2] == ["5 / 5 · 100.0%", "3 / 5 · 60.0%"]
    nonzero = {s["css"] for s in chart["series"] if any(s["data"])}
    assert nonzero == {"sent", "failed"}
    # business figures first: people reached, send success rate, exits
    assert html.index("触达人数") < html.index("触达节点漏斗")
    assert "发送成功率" in html and "退出 / 完成" in html
    assert "客服小王" in html and "channel mock returned 400" in html
    [csv_link] = links(html, "下载 CSV")
    assert parse_qs(urlsplit(csv_link).query) == {"template_id": [str(world.friend_template)]}
    by_day = client.get(f"/report/{world.friend_template}?interval=day")
    assert "每天发送量" in by_day.text
    bad = client.get(f"/report/{world.friend_template}?interval=week")
    assert bad.status_code == 422 and "interval" in bad.text


@pytest.fixture
def analyst(engine, clock, settings):
    """A browser-like client logged in (session cookie) as an analyst."""
    make_user(engine, clock.now(), "li", ["analyst"])
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app) as c:
        token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
        c.post("/login", data={"username": "li", "password": PASSWORD, "csrf_token": token})
        yield c


def headers_of(html: str) -> list[str]:
    first_table = re.search(r"<table>.*?</tr>", html, re.S).group(0)
    return [unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", first_table)]


def test_the_analyst_pages_are_pages_of_the_app_in_both_languages(world, analyst):
    for path, current in (
        ("/log", "发送记录"),
        ("/report", "数据报表"),
        (f"/report/{world.friend_template}", "数据报表"),
    ):
        page = analyst.get(path)
        assert page.status_code == 200, path
        html = page.text
        # the app's top bar: the nav with this page marked, the user, log out, English
        assert re.findall(r'<a href="([^"]+)" class="current" aria-current="page">', html) == [
            "/" + path.split("/")[1]
        ]
        assert f'aria-current="page">{current}</a>' in html
        assert ">li</a>" in html and "退出登录</button>" in html
        assert 'lang="en">English</a>' in html and '<html lang="zh-CN">' in html
        assert '<link rel="stylesheet" href="/static/app.css">' in html
        assert "<style" not in html and "style=" not in html  # the look is app.css's

    log_zh = analyst.get("/log").text
    assert "<title>发送记录 · sopbot</title>" in log_zh and "<h1>发送记录</h1>" in log_zh
    assert headers_of(log_zh)[:4] == ["#", "计划时间", "对象", "SOP 模板 · 触达节点"]
    assert "筛选条件都在网址里，复制网址即可分享" in log_zh
    assert 'type="datetime-local" id="f-due_from" name="due_from"' in log_zh

    # in English (?lang=, then the cookie the language switch sets)
    log_en = analyst.get("/log?lang=en").text
    assert '<html lang="en">' in log_en and "<h1>Delivery log</h1>" in log_en
    assert headers_of(log_en) == [
        "#",
        "Due",
        "Recipient",
        "SOP template · Touchpoint",
        "Channel",
        "Status",
        "Reason",
        "Sent at",
        "Lateness",
        "Attempts",
        "Channel message id",
        "Outcome",
        "Content",
    ]
    assert 'aria-current="page">Delivery log</a>' in log_en and "Log out</button>" in log_en
    assert '<span class="pill failed">Failed</span>' in log_en and "Group chat" in log_en
    assert links(log_en, "Download CSV") and "Group chat id" in log_en
    data = r"<td.*?</td>|<option.*?</option>|<a [^>]*lang=\"zh-CN\">.*?</a>"
    labels = re.sub(data, "", log_en, flags=re.S)
    assert not re.search(r"[\u4e00-\u9fff]", labels), "only the data is in Chinese"

    analyst.get("/lang?to=en&next=/report")
    index_en = analyst.get("/report").text
    assert "<h1>Reports</h1>" in index_en and "Send rate" in headers_of(index_en)
    report_en = analyst.get(f"/report/{world.friend_template}").text
    assert "Touchpoint funnel" in report_en and "Sends per hour (by due time)" in report_en
    assert "&#34;name&#34;: &#34;Planned&#34;" in report_en  # the charts' legends, too
    analyst.get("/lang?to=zh_CN&next=/report")
    report_zh = analyst.get(f"/report/{world.friend_template}").text
    funnel_zh = json.loads(unescape(re.search(r'data-chart="([^"]+)"', report_zh).group(1)))
    assert [s["name"] for s in funnel_zh["series"]] == ["计划发送", "已发送"]
    assert "<h2>触达节点漏斗</h2>" in report_zh and "触达节点明细" in report_zh
