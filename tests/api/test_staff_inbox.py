"""The staff inbox through HTTP: a staff member opens the signed link from
their digest, marks 20 tasks sent, skips 5 with a reason and lets 5 expire;
the execution report counts exactly that. Another staff member's link cannot
see or change those tasks; an expired or tampered link is refused."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from auth_helpers import make_auth_headers
from factories import deliveries
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session
from staff_world import T0, FakeWeCom, add_wecom, build

from api.app import create_app
from scheduler.runtime import SchedulerRuntime
from scheduler.staff.models import StaffTask


@pytest.fixture
def wecom(engine) -> FakeWeCom:
    add_wecom(engine)
    return FakeWeCom()


@pytest.fixture
async def rt(engine, clock, settings, wecom):
    settings.render_budget_ms = 10_000  # a shared, busy machine must not fail a render
    http = httpx.AsyncClient(transport=httpx.MockTransport(wecom))
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


@pytest.fixture
def client(engine, clock, settings):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers={"accept-language": "zh-CN"}) as c:
        yield c


def _link(wecom: FakeWeCom, staff: str) -> str:
    text = wecom.to(staff)[-1]
    url = text.split("打开任务列表：", 1)[1].strip()
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _token(link: str) -> str:
    return parse_qs(urlsplit(link).query)["t"][0]


def _task_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'id="task-(\d+)"', html)]


async def _world(engine, clock, rt):
    clock.set(T0)
    world = build(engine)
    await rt.dispatch_tick()
    assert (await rt.staff_tick()).digests == 3
    return world


async def test_a_staff_member_works_through_their_inbox_and_the_report_counts_it(
    engine, clock, settings, wecom, rt, client
):
    world = await _world(engine, clock, rt)
    link_a = _link(wecom, "staff_a")
    token_a = _token(link_a)

    page = client.get(link_a)
    assert page.status_code == 200
    assert "img-src 'self' data: https:" in page.headers["content-security-policy"]
    html = page.text
    assert "我的 SOP 任务" in html and "新客户跟进" in html and "问候" in html
    assert "staff_a客户0" in html and "您好，我是您的专属顾问" in html
    assert "https://example.com/card.png" in html
    ids = _task_ids(html)
    assert len(ids) == 30
    assert "staff_b客户" not in html  # only their own customers

    clock.advance(minutes=20)
    for task_id in ids[:20]:
        answer = client.post(
            "/staff/inbox/done", data={"t": token_a, "ids": task_id}, follow_redirects=False
        )
        assert answer.status_code == 303
    answer = client.post(
        "/staff/inbox/skip",
        data={"t": token_a, "ids": ids[20:25], "reason": "客户已联系过"},
    )
    assert "已跳过：5" in answer.text
    assert len(_task_ids(answer.text)) == 5

    # the other 5 expire at the deadline (the +0m step's 6 h grace)
    clock.set(T0 + timedelta(hours=6, seconds=1))
    assert (await rt.staff_tick()).expired == 90 - 25

    by_id = {d.id: d for d in deliveries(engine)}
    assert [by_id[i].status for i in ids] == ["done"] * 20 + ["skipped_by_staff"] * 5 + [
        "missed"
    ] * 5
    with Session(engine) as session:
        tasks = {t.delivery_id: t for t in session.execute(select(StaffTask)).scalars()}
    assert [tasks[i].on_time for i in ids] == [True] * 20 + [None] * 5 + [False] * 5
    assert {tasks[i].skip_reason for i in ids[20:25]} == {"客户已联系过"}
    assert by_id[ids[0]].sent_at == T0 + timedelta(minutes=20)

    api = TestClient(client.app, headers=make_auth_headers(engine, clock.now()))
    report = api.get("/api/staff/execution").json()
    (a,) = [r for r in report["by_account"] if r["account_id"] == world.accounts["staff_a"]]
    assert (a["assigned"], a["done"], a["done_on_time"], a["skipped"], a["missed"]) == (
        30,
        20,
        20,
        5,
        5,
    )
    assert a["completion_rate"] == pytest.approx(0.6667, abs=1e-4)
    assert a["skip_reasons"] == [{"reason": "客户已联系过", "count": 5}]
    assert report["by_account"][0]["account_id"] == world.accounts["staff_a"]  # ranked first
    (step,) = report["by_step"]
    assert (step["step"], step["assigned"], step["done"], step["missed"]) == ("问候", 90, 20, 65)

    csv = api.get("/api/staff/execution.csv", params={"account_id": world.accounts["staff_a"]})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "66.7%" in csv.text and "完成率" in csv.text

    page = api.get(f"/report/{world.template_id}")
    assert page.status_code == 200
    assert "员工执行" in page.text and "66.7%" in page.text and "20 / 30" in page.text


async def test_another_staff_member_cannot_see_or_change_those_tasks(
    engine, clock, wecom, rt, client
):
    await _world(engine, clock, rt)
    ids_a = _task_ids(client.get(_link(wecom, "staff_a")).text)
    link_b = _link(wecom, "staff_b")
    html_b = client.get(link_b).text
    assert not set(ids_a) & set(_task_ids(html_b))
    answer = client.post("/staff/inbox/done", data={"t": _token(link_b), "ids": ids_a[:3]})
    assert "不是你的待执行任务" in answer.text
    answer = client.post(
        "/staff/inbox/skip", data={"t": _token(link_b), "ids": ids_a[0], "reason": "x"}
    )
    assert "不是你的待执行任务" in answer.text
    assert {d.status for d in deliveries(engine) if d.id in ids_a} == {"awaiting_staff"}


async def test_an_expired_or_tampered_link_is_refused(engine, clock, settings, wecom, rt, client):
    await _world(engine, clock, rt)
    link = _link(wecom, "staff_a")
    token = _token(link)
    account, expiry, signature = token.split(".")
    other = int(account) + 1
    for forged in (
        f"{other}.{expiry}.{signature}",  # someone else's inbox
        f"{account}.{int(expiry) + 86400}.{signature}",  # a longer life
        f"{account}.{expiry}.{signature[:-2]}xx",
        "garbage",
    ):
        page = client.get("/staff/inbox", params={"t": forged})
        assert page.status_code == 403
        assert "链接无效" in page.text and "staff_a客户" not in page.text
        answer = client.post("/staff/inbox/done", data={"t": forged, "ids": 1})
        assert answer.status_code == 403
    assert client.get("/staff/inbox").status_code == 400
    clock.advance(hours=settings.staff_link_hours, seconds=1)
    page = client.get(link)
    assert page.status_code == 403 and "链接已过期" in page.text
    assert {d.status for d in deliveries(engine)} == {"awaiting_staff"}


async def test_the_chat_s_customer_comes_first_and_postponing_stays_within_the_deadline(
    engine, clock, wecom, rt, client
):
    world = await _world(engine, clock, rt)
    link = _link(wecom, "staff_a")
    html = client.get(link + "&external_userid=wm_staff_a_7").text
    first = _task_ids(html)[0]
    assert first == next(
        d.id for d in deliveries(engine) if d.target_id == world.contacts["staff_a"][7]
    )
    assert "当前聊天客户的任务排在最前" in html
    answer = client.post(
        "/staff/inbox/postpone", data={"t": _token(link), "ids": first, "minutes": 60}
    )
    assert "稍后再次提醒：1" in answer.text
    clock.set(T0 + timedelta(hours=5, minutes=30))
    answer = client.post(
        "/staff/inbox/postpone", data={"t": _token(link), "ids": first, "minutes": 60}
    )
    assert "提醒时间必须早于任务截止时间" in answer.text


async def test_operator_reassigns_open_tasks_extends_a_deadline_and_sees_overdue_staff(
    engine, clock, settings, wecom, rt, client
):
    world = await _world(engine, clock, rt)
    a, b = world.accounts["staff_a"], world.accounts["staff_b"]
    api = TestClient(client.app, headers=make_auth_headers(engine, clock.now()))
    ids_a = _task_ids(client.get(_link(wecom, "staff_a")).text)

    # staff_a leaves: their 30 open tasks go to staff_b, who hears in the next digest
    answer = api.post("/api/staff/tasks/reassign", json={"from_account_id": a, "to_account_id": b})
    assert answer.json() == {"moved": 30}
    bad = api.post("/api/staff/tasks/reassign", json={"from_account_id": a, "to_account_id": a})
    assert bad.status_code == 422
    assert _task_ids(client.get(_link(wecom, "staff_a")).text) == []
    assert len(_task_ids(client.get(_link(wecom, "staff_b")).text)) == 60
    clock.advance(minutes=settings.staff_digest_minutes)
    assert (await rt.staff_tick()).digests == 1
    assert wecom.to("staff_b")[-1].startswith(
        "【SOP 待执行】今天有 60 个客户 SOP 待执行（新增 30 个）"
    )

    # one task gets a day more; the rest are missed at the grace deadline
    new_deadline = (T0 + timedelta(days=1)).isoformat()
    answer = api.post(
        "/api/staff/tasks/deadline", json={"delivery_ids": ids_a[:1], "deadline": new_deadline}
    )
    assert answer.json() == {"extended": 1}
    past = api.post(
        "/api/staff/tasks/deadline",
        json={"delivery_ids": ids_a[:1], "deadline": T0.isoformat()},
    )
    assert past.status_code == 422 and "future" in past.json()["detail"]
    clock.set(T0 + timedelta(hours=6, seconds=1))
    await rt.staff_tick()
    status = {d.id: d.status for d in deliveries(engine)}
    assert status[ids_a[0]] == "awaiting_staff" and status[ids_a[1]] == "missed"

    overdue = api.get("/api/staff/overdue").json()
    assert overdue[0]["account_id"] == b and overdue[0]["missed"] == 59
    dashboard = api.get("/")
    assert "员工逾期任务" in dashboard.text


async def test_a_step_deadline_set_by_the_operator_replaces_the_grace_period(
    engine, clock, settings, wecom, rt, client
):
    clock.set(T0)
    api = TestClient(client.app, headers=make_auth_headers(engine, clock.now()))
    world = build(engine, per_staff=1)
    answer = api.put(
        "/api/staff/step-deadlines",
        json={"template_id": world.template_id, "touchpoint": "问候", "hours": 2},
    )
    assert answer.status_code == 200
    assert (
        api.put(
            "/api/staff/step-deadlines",
            json={"template_id": world.template_id, "touchpoint": "问候", "hours": -1},
        ).status_code
        == 422
    )
    await rt.dispatch_tick()
    with Session(engine) as session:
        deadlines = {t.deadline_at for t in session.execute(select(StaffTask)).scalars()}
    assert deadlines == {T0 + timedelta(hours=2)}
