"""The outcome report: funnel per step and variant, conversions, the lift over
the holdout, the z-test stated plainly, and the CSV export."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from factories import enroll, publish
from sqlalchemy import select
from test_experiments import _variant_spec

from audiences.schemas import ContactIn
from scheduler.analytics import outcomes
from scheduler.flows import changes
from scheduler.outbox.models import Delivery
from scheduler.outcomes.models import LinkClick
from sopbot.db import session_scope

SH = ZoneInfo("Asia/Shanghai")


def test_two_proportion_test_stated_plainly():
    comparison = outcomes.compare("A", 100, 1000, "B", 131, 1000)
    assert comparison.difference_points == 3.1
    assert comparison.statement == "B 转化率高 3.1 个百分点，置信度 97%"
    assert outcomes.compare("A", 5, 10, "B", 5, 10).confidence == 0.0
    assert outcomes.compare("A", 0, 0, "B", 1, 2).confidence == 0.0
    lower = outcomes.compare("A", 50, 100, "B", 40, 100)
    assert lower.statement.startswith("B 转化率低 10.0 个百分点")


async def test_funnel_variants_and_lift(engine, clock, runtime, client):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    spec = _variant_spec(goal={"tags_added": ["purchased"]}, holdout=20)
    template_id = publish(engine, spec, clock.now())
    with session_scope(engine) as session:
        ids = [
            changes.upsert_contact(
                session, ContactIn(external_id=f"wm_{i}", name=f"客户{i}", joined_at=joined), joined
            )[0].id
            for i in range(50)
        ]
    enroll(engine, template_id, [(i, joined) for i in ids], clock.now())
    for _ in range(8):  # welcome and coupon go out
        clock.advance(timedelta(minutes=30))
        await runtime.dispatch_tick()
    with session_scope(engine) as session:
        sent = list(session.execute(select(Delivery).where(Delivery.status == "sent")).scalars())
        coupon = [d for d in sent if d.variant]
        # one person's click on the coupon step, recorded as the redirect does
        first = coupon[0]
        session.add(
            LinkClick(
                token="t" * 22,
                delivery_id=first.id,  # type: ignore[arg-type]
                enrollment_id=first.enrollment_id,
                template_id=template_id,
                touchpoint_name="coupon",
                target_kind="contact",
                target_id=first.target_id,
                clicked_at=clock.now(),
                user_agent="Mozilla/5.0",
            )
        )
    # every contact buys, held out or not
    with session_scope(engine) as session:
        changes.apply_events(
            session,
            [
                {"kind": "tag_added", "external_id": f"wm_{i}", "tags": ["purchased"]}
                for i in range(50)
            ],
            clock.now(),
        )

    answer = client.get(f"/api/templates/{template_id}/outcomes")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    [version] = report["versions"]
    assert version["enrolled"] == 50 and version["converted"] == 50
    treated = 50 - version["held_out"]
    assert version["converted_held_out"] == version["held_out"] > 0
    assert version["lift"]["statement"].startswith("SOP 转化率")
    steps = {s["touchpoint"]: s for s in report["funnel"]}
    assert steps["welcome"]["reached"] == treated and steps["coupon"]["reached"] == treated
    assert steps["reminder"]["reached"] == 0
    assert steps["coupon"]["clicked"] == 1 and steps["coupon"]["clicks"] == 1
    assert steps["coupon"]["attributed"] == treated and steps["welcome"]["converted"] == treated
    variants = {v["variant"]: v for v in report["variants"]}
    assert set(variants) == {"A", "B"}
    assert variants["A"]["reached"] + variants["B"]["reached"] == treated
    assert variants["A"]["converted"] == variants["A"]["reached"]
    [comparison] = report["comparisons"]
    assert comparison["label_b"] == "coupon · B" and "置信度" in comparison["statement"]

    csv_answer = client.get(f"/api/templates/{template_id}/outcomes.csv")
    assert csv_answer.status_code == 200
    lines = csv_answer.content.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("version,position,touchpoint,variant,reached")
    assert len(lines) == 1 + 3 + 2
    assert client.get("/api/templates/999/outcomes").status_code == 404
