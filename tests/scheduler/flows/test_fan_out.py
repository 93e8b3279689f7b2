"""A fixed start's later touchpoints: publishing writes the enrollments, the
planner writes each touchpoint's rows ``FIXED_PLAN_AHEAD`` before it falls due
(``scheduler.flows.fan_out``) -- to whoever is still enrolled then, once, in
chunks that survive a crash, late but never silently not at all."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from factories import add_contact, add_group, enroll, publish, store_menu_spec
from sqlalchemy import select, text, update
from sqlmodel import Session, col

from scheduler.analytics import calendar
from scheduler.flows import fan_out, lifecycle, membership
from scheduler.flows.jobs import JOB_FAN_OUT, JOBS
from scheduler.outbox import service as scheduler_service
from scheduler.outbox import set_enroll
from scheduler.outbox.models import Delivery, Enrollment, EnrollmentStatus
from sop_templates import service as templates_service
from sop_templates.models import TemplateStatus, Touchpoint
from sop_templates.timing import get_zone
from sopbot.db import session_scope

ACTOR = lifecycle.Actor(require_approval=False, audit=lambda *entry: None)
NOW = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
START = datetime(2027, 3, 3, 1, 0, tzinfo=UTC)  # 2027-03-03 09:00 in Shanghai
AHEAD = set_enroll.FIXED_PLAN_AHEAD


def _spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "春季班（固定开课）",
        "target": "contact",
        "timezone": "Asia/Shanghai",
        "anchor": "fixed",
        "start_at": "2027-03-03T09:00:00",
        "segment": {"tags": "春季班"},
        "touchpoints": [
            {"name": "开课", "timing": "+0", "content": "{{ contact.name }}，开课了"},
            {"name": "当晚", "timing": "day 1 20:00", "content": "今晚复习"},
            {"name": "次日", "timing": "day 2 19:30", "content": "预习"},
        ],
    }
    spec.update(overrides)
    return spec


def _publish(engine, count: int = 10, **overrides: Any) -> tuple[int, list[int]]:
    ids = [add_contact(engine, f"wm_{i}", f"学员{i}", NOW, tags=["春季班"]) for i in range(count)]
    with session_scope(engine) as session:
        template = templates_service.create_template(session, _spec(**overrides), NOW)
        outcome = lifecycle.publish(session, template.id, NOW, ACTOR)
        assert (outcome.enrolled, outcome.deliveries, outcome.planned_later) == (count, 0, 3)
        return template.id, ids  # type: ignore[return-value]


def _rows(engine, template_id: int) -> dict[str, list[Any]]:
    with session_scope(engine) as session:
        names = dict(session.execute(select(Touchpoint.id, Touchpoint.name)).all())
        out: dict[str, list[Any]] = {}
        for d in session.execute(
            select(Delivery).where(Delivery.template_id == template_id).order_by(Delivery.id)
        ).scalars():
            out.setdefault(names[d.touchpoint_id], []).append(d)
        return out


def _pending(engine, template_id: int) -> dict[str, datetime]:
    with session_scope(engine) as session:
        return {
            name: at
            for name, at in session.execute(
                select(Touchpoint.name, Touchpoint.fan_out_at).where(
                    Touchpoint.template_id == template_id, col(Touchpoint.fan_out_at).is_not(None)
                )
            ).all()
        }


def _plan(engine, now: datetime, **kw: Any) -> fan_out.FanOutResult:
    with session_scope(engine) as session:
        return fan_out.plan_fixed(session, now, **kw)


def test_publish_writes_the_enrollments_and_the_planner_each_touchpoint_before_it_is_due(engine):
    template_id, _ = _publish(engine)
    assert _rows(engine, template_id) == {}
    evening = datetime(2027, 3, 3, 12, 0, tzinfo=UTC)
    assert _pending(engine, template_id) == {
        "开课": START,
        "当晚": evening,
        "次日": datetime(2027, 3, 4, 11, 30, tzinfo=UTC),
    }
    assert _plan(engine, START - AHEAD - timedelta(seconds=1)).deliveries == 0
    assert _plan(engine, START - AHEAD).deliveries == 10
    rows = _rows(engine, template_id)
    assert list(rows) == ["开课"]
    assert {(d.status, d.due_at, d.run_at, d.created_at) for d in rows["开课"]} == {
        ("scheduled", START, START, START - AHEAD)
    }
    assert "开课" not in _pending(engine, template_id)
    assert _plan(engine, START).deliveries == 0  # written once
    assert _plan(engine, evening).deliveries == 10
    assert sorted(_rows(engine, template_id)) == ["开课", "当晚"]


def test_only_those_still_enrolled_get_rows_and_a_later_enrollee_keeps_its_own(engine):
    template_id, ids = _publish(engine)
    late = add_contact(engine, "wm_late", "插班生", NOW, tags=["春季班"])
    with session_scope(engine) as session:
        session.execute(
            update(Enrollment)
            .where(col(Enrollment.target_id).in_(ids[:3]))
            .values(status=EnrollmentStatus.EXITED, exited_at=NOW, exit_reason="已购买")
        )
        template = templates_service.get_template(session, template_id)
        # enrolled by hand after the publish: its rows are written at once
        scheduler_service.enroll(session, template, [(late, START)], NOW + timedelta(hours=1))
    before = {d.id for ds in _rows(engine, template_id).values() for d in ds}
    assert len(before) == 3
    assert _plan(engine, START + timedelta(days=2)).deliveries == 3 * 7
    rows = _rows(engine, template_id)
    for name in ("开课", "当晚", "次日"):
        assert sorted(d.target_id for d in rows[name]) == sorted([*ids[3:], late])
    assert before <= {d.id for ds in rows.values() for d in ds}


def test_chunks_commit_as_they_go_and_a_crash_leaves_the_rest_for_the_next_tick(
    engine, monkeypatch
):
    template_id, ids = _publish(engine)
    write = set_enroll._write_deliveries
    calls = []

    def crash_on_third(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker killed")
        return write(*args, **kwargs)

    monkeypatch.setattr(set_enroll, "_write_deliveries", crash_on_third)
    assert _plan(engine, START, chunk=4).failed == 1
    assert len(_rows(engine, template_id)["开课"]) == 8  # two chunks committed
    assert "开课" in _pending(engine, template_id)
    monkeypatch.setattr(set_enroll, "_write_deliveries", write)
    assert _plan(engine, START, chunk=4).deliveries == 2
    assert sorted(d.target_id for d in _rows(engine, template_id)["开课"]) == ids
    assert "开课" not in _pending(engine, template_id)


def test_a_planner_that_was_down_writes_each_row_with_its_outcome_then(engine):
    template_id, _ = _publish(engine)
    # 20:10 on day 1: 09:00's passed its grace period, 20:00's is late but in it
    down_until = datetime(2027, 3, 3, 12, 10, tzinfo=UTC)
    assert _plan(engine, down_until).deliveries == 20
    rows = _rows(engine, template_id)
    assert {(d.status, d.reason, d.finished_at) for d in rows["开课"]} == {
        ("missed", "occurrence passed while no scheduler was running", down_until)
    }
    evening = datetime(2027, 3, 3, 12, 0, tzinfo=UTC)
    assert {(d.status, d.run_at, d.expires_at > down_until) for d in rows["当晚"]} == {
        ("scheduled", evening, True)
    }
    assert "次日" in _pending(engine, template_id)


def test_an_archived_template_is_not_planned_a_paused_one_is(engine):
    archived, _ = _publish(engine, count=2)
    with session_scope(engine) as session:
        scheduler_service.archive_template(session, archived, NOW)
    assert _pending(engine, archived) == {}
    paused, _ = _publish(engine, count=0, name="暂停的班", segment={"tags": "秋季班"})
    with session_scope(engine) as session:
        templates_service.set_status(session, paused, TemplateStatus.PAUSED, NOW)
        first = session.execute(
            select(Touchpoint.id).where(Touchpoint.template_id == paused, Touchpoint.name == "开课")
        ).scalar_one()
        assert fan_out.due_fan_outs(session, START) == [first]


def test_the_calendar_counts_a_touchpoint_the_planner_has_yet_to_write_once(engine):
    template_id, ids = _publish(engine)
    window = (NOW, START + timedelta(hours=1))

    def sends() -> list[tuple[str, int, bool]]:
        with session_scope(engine) as session:
            return [
                (s.touchpoint_name, s.count, s.planned)
                for s in calendar.upcoming(session, *window, NOW, template_id=template_id)
            ]

    assert sends() == [("开课", 10, False)]
    with session_scope(engine) as session:
        first = calendar.upcoming(session, *window, NOW, template_id=template_id)[0]
        assert sorted(i for _, i in calendar.recipients(session, first.touchpoint_id, START)) == ids
    _plan(engine, START)
    assert sends() == [("开课", 10, True)]


def test_the_planner_runs_as_a_background_job():
    assert JOB_FAN_OUT in {job.id for job in JOBS}


def test_moving_to_a_new_version_moves_runs_whose_rows_are_not_written_yet(engine):
    template_id, ids = _publish(engine, count=3)
    spec = _spec()
    spec["touchpoints"][0]["content"] = "{{ contact.name }}，开课了（新版）"
    with session_scope(engine) as session:
        templates_service.update_draft(session, template_id, spec, NOW)
        outcome = lifecycle.publish(session, template_id, NOW, ACTOR, migrate="move")
        v2 = outcome.version.id
    assert outcome.moved.enrollments == 3
    _plan(engine, START + timedelta(days=2))
    rows = _rows(engine, template_id)
    for name in ("开课", "当晚", "次日"):
        assert sorted((d.target_id, d.version_id) for d in rows[name]) == [(i, v2) for i in ids]


def test_a_touchpoint_another_worker_is_writing_is_left_to_it(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writers take turns: nothing to hold")
    template_id, ids = _publish(engine)
    with session_scope(engine) as other:
        other.execute(
            select(Touchpoint.id)
            .where(Touchpoint.template_id == template_id, Touchpoint.name == "开课")
            .with_for_update()
        ).scalar_one()  # another worker's chunk transaction holds it
        assert _plan(engine, START).deliveries == 0
        assert "开课" in _pending(engine, template_id)
    assert _plan(engine, START).deliveries == 10
    assert "开课" not in _pending(engine, template_id)


def test_a_touchpoint_that_cannot_be_written_fails_alone(engine, monkeypatch, caplog):
    template_id, ids = _publish(engine)
    write = set_enroll._write_deliveries

    def poison_first(session, spec, part, *args: Any, **kwargs: Any) -> int:
        if part[0][1].touchpoint_id == first:
            raise ValueError("a template the planner cannot read")
        return write(session, spec, part, *args, **kwargs)

    with session_scope(engine) as session:
        first = session.execute(
            select(Touchpoint.id).where(
                Touchpoint.template_id == template_id, Touchpoint.name == "开课"
            )
        ).scalar_one()
    monkeypatch.setattr(set_enroll, "_write_deliveries", poison_first)
    result = _plan(engine, START + timedelta(days=2))
    assert (result.failed, result.touchpoints, result.deliveries) == (1, 2, 20)
    assert "could not write the deliveries of touchpoint" in caplog.text
    assert sorted(_rows(engine, template_id)) == ["当晚", "次日"]
    assert "开课" in _pending(engine, template_id)  # tried again next tick


def test_the_api_says_how_many_rows_are_still_to_be_written(engine, settings, clock, auth_headers):
    from fastapi.testclient import TestClient

    from api.app import create_app

    template_id, _ = _publish(engine)
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as client:
        before = client.get(f"/api/templates/{template_id}").json()
        _plan(engine, START)
        after = client.get(f"/api/templates/{template_id}").json()
    assert (before["counts"], before["planned_later"]) == ({}, 30)
    assert (after["counts"], after["planned_later"]) == ({"scheduled": 10}, 20)


def test_a_touchpoint_on_a_dst_night_is_planned_for_the_instant_enrolling_gives(engine):
    """New York springs forward at 02:00 on 2027-03-14: day 2's 02:30 does not
    exist and is moved forward by the gap (03:30 EDT), once."""
    spec = _spec(
        timezone="America/New_York",
        start_at="2027-03-13T09:00:00",
        touchpoints=[
            {"name": "夜里", "timing": "day 2 02:30", "content": "夜里"},
            {"name": "早上", "timing": "day 2 09:00", "content": "早上"},
        ],
    )
    ids = [add_contact(engine, f"ny_{i}", f"学员{i}", NOW, tags=["春季班"]) for i in range(3)]
    with session_scope(engine) as session:
        template = templates_service.create_template(session, spec, NOW)
        outcome = lifecycle.publish(session, template.id, NOW, ACTOR)
        template_id = template.id
        assert outcome.planned_later == 2
        # what enrolling one more target from the start writes, row by row
        reference = scheduler_service._deliveries_for(
            [Enrollment(id=0, target_id=0, anchor_at=datetime(2027, 3, 13, 14, 0, tzinfo=UTC))],
            [p for p in scheduler_service._plans(session, outcome.version)],
            template,
            outcome.version,
            "mock",
            get_zone("America/New_York"),
            NOW,
        )
    night, morning = (
        datetime(2027, 3, 14, 7, 30, tzinfo=UTC),
        datetime(2027, 3, 14, 13, 0, tzinfo=UTC),
    )
    assert sorted(r["due_at"] for r in reference) == [night, morning]
    assert _pending(engine, template_id) == {"夜里": night, "早上": morning}
    with session_scope(engine) as session:  # each 10 minutes before it falls due
        assert fan_out.plan_each_when_due(session) == 6
    rows = _rows(engine, template_id)
    assert {(d.status, d.due_at, d.run_at) for d in rows["夜里"]} == {("scheduled", night, night)}
    assert {(d.status, d.due_at, d.run_at) for d in rows["早上"]} == {
        ("scheduled", morning, morning)
    }
    assert sorted(d.target_id for d in rows["夜里"]) == ids


def _wait_for_a_lock_wait(engine) -> None:
    """Until a backend of this database waits for a row lock (polled, not timed)."""
    for _ in range(2000):
        with engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
            return
        threading.Event().wait(0.01)
    raise AssertionError("nothing waited for the chunk's lock")


def _while_written(engine, write: Callable[[Session], None], end: Callable[[Session], Any]) -> Any:
    """``write`` in a transaction of its own, ``end`` in another thread while
    that transaction is open; once ``end`` waits for a lock, ``write``
    commits. Returns what ``end`` returned."""
    done: list[Any] = []

    def run_end() -> None:
        with session_scope(engine) as session:
            done.append(end(session))

    writing = Session(engine)
    try:
        write(writing)  # not committed
        ending = threading.Thread(target=run_end)
        ending.start()
        _wait_for_a_lock_wait(engine)
        writing.commit()
    finally:
        writing.close()
    ending.join(timeout=30)
    assert done, "the other transaction did not finish"
    return done[0]


@pytest.mark.parametrize("ending", ["exit", "archive", "move"])
def test_an_exit_archive_or_move_while_a_chunk_is_written_takes_its_rows_in(engine, ending):
    """PostgreSQL: the exit (or archiving the SOP) waits for the chunk to
    commit, then cancels its rows (without waiting, it would cancel what it
    could see -- nothing -- and the chunk's row for the exited contact would
    stay scheduled)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writers take turns: an exit never overlaps a chunk")
    template_id, ids = _publish(engine)
    with session_scope(engine) as session:
        first = session.execute(
            select(Touchpoint.id).where(
                Touchpoint.template_id == template_id, Touchpoint.name == "开课"
            )
        ).scalar_one()
        leaving = session.execute(
            select(Enrollment.id).where(Enrollment.target_id == ids[0])
        ).scalar_one()

    def chunk(session: Session) -> None:
        assert fan_out.fan_out(session, first, START - AHEAD, commit=False) == 10

    def end(session: Session) -> Any:
        if ending == "exit":
            return membership.exit_enrollments(session, {leaving: "已购买"}, START)
        if ending == "archive":
            return scheduler_service.archive_template(session, template_id, START)
        # a new version, everyone moved to it
        templates_service.update_draft(session, template_id, _spec(), START - AHEAD)
        published = lifecycle.publish(session, template_id, START - AHEAD, ACTOR, migrate="move")
        return published.version.id

    outcome = _while_written(engine, chunk, end)
    rows = {d.target_id: d for d in _rows(engine, template_id)["开课"]}
    if ending == "exit":
        assert outcome.cancelled == 1
        assert (rows[ids[0]].status, rows[ids[0]].reason) == ("cancelled", "已购买")
        assert {rows[i].status for i in ids[1:]} == {"scheduled"}
    elif ending == "archive":
        assert outcome == 10
        assert {(d.status, d.reason) for d in rows.values()} == {("cancelled", "template archived")}
    else:  # the chunk's rows were moved, not left behind beside new ones
        moved = _rows(engine, template_id)["开课"]
        assert sorted(d.target_id for d in moved) == ids
        assert {(d.status, d.version_id) for d in moved} == {("scheduled", outcome)}


def test_an_exit_while_a_cron_occurrence_is_fanned_out_cancels_its_row(engine):
    """The same for a cron occurrence (``service.plan_cron`` holds its touchpoint)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writers take turns: an exit never overlaps a fan-out")
    template_id = publish(engine, store_menu_spec(), NOW)
    groups = [add_group(engine, f"wr_{i}", f"群{i}", NOW) for i in range(3)]
    enroll(engine, template_id, [(g, NOW) for g in groups], NOW)
    with session_scope(engine) as session:
        leaving = session.execute(
            select(Enrollment.id).where(Enrollment.target_id == groups[0])
        ).scalar_one()

    def plan(session: Session) -> None:
        planned = scheduler_service.plan_cron(
            session, NOW, lookahead=timedelta(hours=2), catch_up=timedelta(days=1)
        )
        assert planned.deliveries == 3  # 11:00 in Shanghai

    _while_written(
        engine,
        plan,
        lambda session: membership.exit_enrollments(session, {leaving: "群已解散"}, NOW),
    )
    rows = {d.target_id: d for d in _rows(engine, template_id)["menu"]}
    assert (rows[groups[0]].status, rows[groups[0]].reason) == ("cancelled", "群已解散")
    assert {rows[g].status for g in groups[1:]} == {"scheduled"}
