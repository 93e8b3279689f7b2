"""Holdouts and A/B variants: decided by the enrollment's identity, so stable
across retries, resends and version moves; the control group never receives
a message, and its conversions are still measured."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from factories import deliveries, enroll, mock_sends, new_friend_spec, publish
from pydantic import ValidationError
from sqlalchemy import func, select

from audiences.schemas import ContactIn
from scheduler.flows import changes, versions
from scheduler.outbox.models import Enrollment
from scheduler.outcomes import experiments
from sop_templates import service as templates_service
from sop_templates.schemas import TemplateSpec
from sopbot.db import session_scope

SH = ZoneInfo("Asia/Shanghai")


def _contacts(engine, n: int, joined: datetime) -> list[int]:
    """``n`` contacts, written in one transaction (no template listens yet)."""
    ids = []
    with session_scope(engine) as session:
        for i in range(n):
            contact, _ = changes.upsert_contact(
                session, ContactIn(external_id=f"wm_{i}", name=f"客户{i}", joined_at=joined), joined
            )
            ids.append(contact.id)
    return ids


def test_holdout_of_ten_percent_over_a_thousand_enrollments(engine, clock):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    template_id = publish(engine, new_friend_spec(holdout="10%"), clock.now())
    ids = _contacts(engine, 1000, joined)
    enroll(engine, template_id, [(i, joined) for i in ids], clock.now())

    with session_scope(engine) as session:
        held = session.execute(
            select(func.count()).select_from(Enrollment).where(Enrollment.holdout)
        ).scalar_one()
    # binomial(1000, 0.1): sd ≈ 9.5; ±4 sd
    assert 62 <= held <= 138
    rows = deliveries(engine)
    held_rows = [d for d in rows if d.reason == "holdout"]
    assert len(held_rows) == held * 3
    assert {d.status for d in held_rows} == {"skipped"}
    assert all(d.finished_at is not None for d in held_rows)


async def test_nobody_held_out_receives_a_message(engine, clock, runtime):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    template_id = publish(engine, new_friend_spec(holdout=30), clock.now())
    ids = _contacts(engine, 60, joined)
    enroll(engine, template_id, [(i, joined) for i in ids], clock.now())
    with session_scope(engine) as session:
        held_targets = set(
            session.execute(select(Enrollment.target_id).where(Enrollment.holdout)).scalars()
        )
    assert held_targets
    for _ in range(12):
        clock.advance(timedelta(minutes=30))
        await runtime.dispatch_tick()
    sent_to = {d.target_id for d in deliveries(engine) if d.status == "sent"}
    assert sent_to and not (sent_to & held_targets)
    assert len(mock_sends(engine)) == 2 * (60 - len(held_targets))  # welcome and coupon


def test_holdout_is_a_percentage_up_to_half():
    assert TemplateSpec.model_validate(new_friend_spec(holdout="12.5%")).holdout == 12.5
    with pytest.raises(ValidationError, match="percentage"):
        TemplateSpec.model_validate(new_friend_spec(holdout="ten"))
    with pytest.raises(ValidationError):
        TemplateSpec.model_validate(new_friend_spec(holdout=60))


def _variant_spec(**overrides):
    spec = new_friend_spec(**overrides)
    spec["touchpoints"][1] = {
        "name": "coupon",
        "timing": "+3h",
        "variants": [
            {"name": "A", "weight": 1, "content": "{{ contact.name }}，送你一张 9 折券"},
            {"name": "B", "weight": 1, "content": "{{ contact.name }}，送你一张 8 折券"},
        ],
    }
    return spec


async def test_variant_is_stored_and_sent_and_the_same_on_a_retry(engine, clock, runtime):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    template_id = publish(engine, _variant_spec(), clock.now())
    ids = _contacts(engine, 40, joined)
    enroll(engine, template_id, [(i, joined) for i in ids], clock.now())
    coupon = [d for d in deliveries(engine) if d.variant]
    assert len(coupon) == 40 and {d.variant for d in coupon} == {"A", "B"}
    stored = {d.id: d.variant for d in coupon}
    # what the hash says for each enrollment, asked again (a retry, a resend)
    spec = TemplateSpec.model_validate(_variant_spec())
    variants = spec.touchpoints[1].variants
    assert variants is not None
    for d in coupon:
        again = experiments.pick_variant(
            variants, template_id, "contact", d.target_id, 0, "coupon"
        ).name
        assert again == stored[d.id]

    for _ in range(8):
        clock.advance(timedelta(minutes=30))
        await runtime.dispatch_tick()
    sends = {m.delivery_id: m.parts[0]["text"] for m in mock_sends(engine)}
    for delivery_id, variant in stored.items():
        assert ("9 折" if variant == "A" else "8 折") in sends[delivery_id]


def test_variant_assignment_survives_a_version_move(engine, clock):
    joined = datetime(2027, 3, 1, 10, 0, tzinfo=SH)
    clock.set(joined)
    template_id = publish(engine, _variant_spec(), clock.now())
    ids = _contacts(engine, 30, joined)
    enroll(engine, template_id, [(i, joined) for i in ids], clock.now())
    before = {d.enrollment_id: d.variant for d in deliveries(engine) if d.variant}

    # version 2: same variants, another text for the welcome; targets move
    new = _variant_spec()
    new["touchpoints"][0]["content"] = ["欢迎加入！"]
    with session_scope(engine) as session:
        templates_service.update_draft(session, template_id, new, clock.now())
        version = templates_service.freeze_draft(session, template_id, clock.now())
        moved = versions.move_to_version(session, template_id, version, clock.now())
    assert moved.enrollments == 30
    after = {d.enrollment_id: d.variant for d in deliveries(engine) if d.variant}
    assert after == before
    assert {d.version_id for d in deliveries(engine) if d.variant} == {version.id}


def test_weights_split_the_enrollments():
    spec = TemplateSpec.model_validate(_variant_spec())
    variants = spec.touchpoints[1].variants
    assert variants is not None
    variants[0].weight, variants[1].weight = 9, 1
    picks = [
        experiments.pick_variant(variants, 1, "contact", i, 0, "coupon").name for i in range(2000)
    ]
    assert 1700 <= picks.count("A") <= 1900


def test_variants_are_two_to_five_with_unique_names():
    spec = _variant_spec()
    spec["touchpoints"][1]["variants"] = spec["touchpoints"][1]["variants"][:1]
    with pytest.raises(ValidationError, match="2 to 5"):
        TemplateSpec.model_validate(spec)
    spec = _variant_spec()
    spec["touchpoints"][1]["variants"][1]["name"] = "A"
    with pytest.raises(ValidationError, match="unique"):
        TemplateSpec.model_validate(spec)


def test_held_out_cron_occurrences_are_written_skipped(engine, clock):
    from factories import add_group, store_menu_spec

    from scheduler.outbox import service as scheduler_service

    start = datetime(2027, 3, 1, 9, 0, tzinfo=SH)
    clock.set(start)
    template_id = publish(engine, store_menu_spec(holdout=50), clock.now())
    groups = [add_group(engine, f"wr_{i}", f"门店{i}群", start) for i in range(20)]
    enroll(engine, template_id, [(g, start) for g in groups], clock.now())
    with session_scope(engine) as session:
        scheduler_service.plan_cron(
            session, clock.now(), lookahead=timedelta(hours=3), catch_up=timedelta(hours=1)
        )
        held = set(
            session.execute(select(Enrollment.target_id).where(Enrollment.holdout)).scalars()
        )
    rows = deliveries(engine)
    assert len(rows) == 20 and held
    for d in rows:
        if d.target_id in held:
            assert (d.status, d.reason) == ("skipped", "holdout")
        else:
            assert d.status == "scheduled"
    assert all(d.due_at == datetime(2027, 3, 1, 3, 0, tzinfo=UTC) for d in rows)
