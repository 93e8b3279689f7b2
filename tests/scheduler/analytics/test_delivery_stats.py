"""Template statistics agree with a brute-force recount of the same rows —
before any roll-up, after one, and after rows arrive below the watermark."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from analytics_world import Row, World, build_world
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import update
from sqlmodel import Session

from scheduler.analytics import log, stats
from scheduler.analytics.retention import roll_up
from scheduler.analytics.stats import StatsFilter, lateness_bucket
from scheduler.outbox.models import DeliveryStatus, Enrollment

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2027, 3, 20, 4, 0, tzinfo=UTC)
S = DeliveryStatus


# -- the brute force ------------------------------------------------------------------


def counts(rows: list[Row], now: datetime) -> dict[str, Any]:
    by = Counter(r.status for r in rows)
    due = sum(1 for r in rows if r.due_at <= now)
    return {
        "deliveries": len(rows),
        "due": due,
        "pending": sum(by[s] for s in S.PENDING),
        **{s: by[s] for s in S.TERMINAL},
        "send_rate": round(by[S.SENT] / due, 4) if due else None,
    }


def lateness(rows: list[Row]) -> dict[str, Any]:
    ms = [(r.sent_at - r.due_at) // timedelta(milliseconds=1) for r in rows if r.status == S.SENT]
    buckets = sorted(lateness_bucket(max(m, 0)) for m in ms)

    def pct(p: int) -> float | None:
        return buckets[max(1, math.ceil(p / 100 * len(buckets))) - 1] / 1000 if buckets else None

    return {
        "count": len(ms),
        "mean_seconds": round(sum(ms) / len(ms) / 1000, 3) if ms else None,
        "max_seconds": max(ms) / 1000 if ms else None,
        "p50_seconds": pct(50),
        "p95_seconds": pct(95),
        "p99_seconds": pct(99),
    }


def grouped(rows: list[Row], key: Any, now: datetime) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return {k: counts(v, now) for k, v in groups.items()}


def recount(rows: list[Row], now: datetime) -> dict[str, Any]:
    reasons = Counter(
        (r.status, r.reason)
        for r in rows
        if r.status in S.TERMINAL and r.status not in (S.SENT, S.DONE)
    )
    hours: dict[int, Counter[str]] = defaultdict(Counter)
    for r in rows:
        hours[int(r.due_at.timestamp()) // 3600][r.status] += 1
    series = []
    if hours:
        for n in range(min(hours), max(hours) + 1):
            c = hours.get(n, Counter())
            series.append(
                (
                    datetime.fromtimestamp(n * 3600, UTC),
                    sum(c.values()),
                    *(c[s] for s in S.TERMINAL),
                    sum(c[s] for s in S.PENDING),
                )
            )
    return {
        "totals": counts(rows, now),
        "lateness": lateness(rows),
        "touchpoints": {k: v for k, v in grouped(rows, lambda r: r.touchpoint_id, now).items()},
        "touchpoint_lateness": {
            tp: lateness([r for r in rows if r.touchpoint_id == tp])
            for tp in {r.touchpoint_id for r in rows}
        },
        "channels": grouped(rows, lambda r: r.channel, now),
        "accounts": grouped(rows, lambda r: r.target.account_id, now),
        "reasons": sorted(((s, r, n) for (s, r), n in reasons.items()), key=str),
        "series": series,
    }


def reported(report: stats.TemplateStats) -> dict[str, Any]:
    def c(x: stats.Counts) -> dict[str, Any]:
        return dict(x.__dict__)

    touched = [t for t in report.touchpoints if t.counts.deliveries]
    return {
        "totals": c(report.totals),
        "lateness": dict(report.lateness.__dict__),
        "touchpoints": {t.touchpoint_id: c(t.counts) for t in touched},
        "touchpoint_lateness": {t.touchpoint_id: dict(t.lateness.__dict__) for t in touched},
        "channels": {ch.channel: c(ch.counts) for ch in report.channels},
        "accounts": {a.account_id: c(a.counts) for a in report.accounts},
        "reasons": sorted(((r.status, r.reason, r.count) for r in report.reasons), key=str),
        "series": [
            (
                p.start.astimezone(UTC),
                p.deliveries,
                p.sent,
                p.failed,
                p.skipped,
                p.cancelled,
                p.missed,
                p.unknown,
                p.done,
                p.skipped_by_staff,
                p.pending,
            )
            for p in report.series
        ],
    }


def check(world: World, template_id: int, now: datetime) -> None:
    with Session(log.read_snapshot(world.engine)) as session:
        report = stats.template_stats(
            session, StatsFilter(template_id, interval="hour"), now=now, zone=SH
        )
    rows = [r for r in world.rows if r.template_id == template_id]
    assert reported(report) == recount(rows, now)


# -- the property -----------------------------------------------------------------------


deliveries = st.lists(
    st.tuples(
        st.integers(0, 6),  # target: five contacts, two groups
        st.integers(0, 2),  # touchpoint (groups have one)
        st.sampled_from(S.ALL),
        st.integers(-72 * 60, 12 * 60),  # due, minutes from NOW
        # and its fraction of a second, the edges included: SQLite rounds
        # fractions to milliseconds when it parses a time (.999999 → next second)
        st.one_of(st.integers(0, 999_999), st.sampled_from([0, 999_499, 999_500, 999_999])),
        st.one_of(st.integers(0, 12_000), st.integers(0, 30 * 3600 * 1000)),  # lateness ms
        st.integers(0, 999),  # and microseconds
        st.sampled_from(
            [None, "frequency cap", "frequency cap", "contact deleted", '原因，带"逗号"']
        ),
        st.sampled_from(["mock", "wecom-a"]),
        st.integers(0, 6 * 3600),  # finished this many seconds after due/sent
    ),
    max_size=30,
)


def write(world: World, specs: list[tuple[Any, ...]], created_at: datetime) -> None:
    targets = world.contacts + world.groups
    for target_i, tp, status, due_min, due_us, late_ms, late_us, reason, channel, finish_s in specs:
        target = targets[target_i]
        due = NOW + timedelta(minutes=due_min, seconds=due_min % 7, microseconds=due_us)
        late = timedelta(milliseconds=late_ms, microseconds=late_us)
        finished = None
        if status in S.TERMINAL:
            finished = (
                due + (late if status == S.SENT else timedelta()) + timedelta(seconds=finish_s)
            )
        world.add(
            target,
            status=status,
            due_at=due,
            touchpoint=tp if target.kind == "contact" else 0,
            late=late,
            reason=None if status in (S.SENT, *S.PENDING) else reason,
            channel=channel,
            finished_at=finished,
            created_at=created_at,
        )


@pytest.fixture
def world(engine, clock) -> World:
    clock.set(NOW)
    return build_world(engine, NOW)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=deliveries,
    later=deliveries,
    roll_after=st.integers(0, 96),
    second_roll_after=st.integers(0, 48),
)
def test_stats_agree_with_a_brute_force_recount(
    world, clock, settings, first, later, roll_after, second_roll_after
):
    world.forget_deliveries()
    clock.set(NOW)
    write(world, first, NOW - timedelta(days=4))
    for template_id in (world.friend_template, world.group_template):
        check(world, template_id, NOW)

    # roll up: finished rows move into the rollups, the rest stays live or held
    clock.set(NOW + timedelta(hours=roll_after))
    rolled = roll_up(world.engine, clock, settings)
    event(f"first roll-up settled some: {rolled.settled > 0}, held some: {rolled.held > 0}")
    for template_id in (world.friend_template, world.group_template):
        check(world, template_id, clock.now())

    # rows arriving below the watermark (late enrollments, catch-up), then roll again
    write(world, later, clock.now())
    for template_id in (world.friend_template, world.group_template):
        check(world, template_id, clock.now())
    clock.advance(timedelta(hours=second_roll_after))
    rolled = roll_up(world.engine, clock, settings)
    event(f"second roll-up settled some: {rolled.settled > 0}")
    for template_id in (world.friend_template, world.group_template):
        check(world, template_id, clock.now())


# -- specifics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("due_us", "late", "want_ms"),
    [
        (999_999, timedelta(microseconds=1), 0),  # sent at the next whole second
        (999_999, timedelta(milliseconds=999), 999),
        (0, timedelta(microseconds=999_999), 999),
        (999_500, timedelta(seconds=59, microseconds=500), 59_000),
    ],
)
def test_lateness_is_exact_across_second_boundaries(world, clock, settings, due_us, late, want_ms):
    due = NOW - timedelta(hours=3) + timedelta(microseconds=due_us)
    world.add(world.contacts[0], due_at=due, late=late)
    check(world, world.friend_template, NOW)
    roll_up(world.engine, clock, settings)  # and from the rollups
    check(world, world.friend_template, NOW)
    with Session(log.read_snapshot(world.engine)) as session:
        report = stats.template_stats(session, StatsFilter(world.friend_template), now=NOW, zone=SH)
    assert report.lateness.max_seconds == want_ms / 1000


def test_roll_up_is_idempotent_and_holds_what_is_not_final(world, clock, settings):
    backlog = world.add(world.contacts[0], status="scheduled", due_at=NOW - timedelta(days=2))
    world.add(world.contacts[1], due_at=NOW - timedelta(days=2), late=timedelta(seconds=1))
    just_done = world.add(
        world.contacts[2],
        status="failed",
        due_at=NOW - timedelta(days=2),
        finished_at=NOW - timedelta(minutes=5),
    )
    first = roll_up(world.engine, clock, settings)
    assert first.settled == 1 and first.held == 2
    assert first.settled_before == NOW - timedelta(hours=1)
    assert roll_up(world.engine, clock, settings).settled == 0  # nothing new: no double counting
    check(world, world.friend_template, NOW)

    clock.advance(timedelta(hours=2))
    assert roll_up(world.engine, clock, settings).settled == 1  # the failure is final now
    assert {backlog.id} == _held(world)
    check(world, world.friend_template, clock.now())
    assert just_done.id not in _held(world)


def _held(world: World) -> set[int]:
    from sqlalchemy import select

    from scheduler.analytics.stats import HOLDS

    with world.engine.connect() as conn:
        return set(conn.execute(select(HOLDS.c.delivery_id)).scalars())


def test_stats_api_answers_the_analysts_questions(world, client, engine):
    tp = world.friend_touchpoints
    day = NOW - timedelta(days=1)
    for i, contact in enumerate(world.contacts):
        world.add(contact, due_at=day, touchpoint=0, late=timedelta(seconds=i))
        world.add(
            contact,
            status="failed" if i < 3 else "sent",
            reason="channel mock returned 400" if i < 3 else None,
            due_at=day + timedelta(hours=3),
            touchpoint=1,
        )
    with engine.begin() as conn:  # two converted (tag purchased) after the coupon
        conn.execute(
            update(Enrollment.__table__)  # type: ignore[attr-defined]
            .where(
                Enrollment.__table__.c.target_id.in_([world.contacts[3].id, world.contacts[4].id])
            )  # type: ignore[attr-defined]
            .where(Enrollment.__table__.c.target_kind == "contact")  # type: ignore[attr-defined]
            .values(status="exited", exit_reason="tag purchased", exited_at=NOW)
        )
    report = client.get(f"/api/stats/templates/{world.friend_template}").json()
    assert report["enrolled"] == 5 and report["active"] == 3
    assert report["totals"]["sent"] == 7 and report["totals"]["failed"] == 3
    assert report["totals"]["send_rate"] == 0.7
    funnel = [
        (t["name"], t["counts"]["deliveries"], t["counts"]["sent"]) for t in report["touchpoints"]
    ]
    assert funnel == [("welcome", 5, 5), ("coupon", 5, 2), ("reminder", 0, 0)]
    worst = max(report["touchpoints"], key=lambda t: t["counts"]["failed"])
    assert (
        worst["touchpoint_id"] == tp[1]
        and worst["reasons"][0]["reason"] == "channel mock returned 400"
    )
    assert report["touchpoints"][0]["lateness"]["p50_seconds"] == 2.0
    assert report["exits"] == [
        {
            "status": "exited",
            "reason": "tag purchased",
            "after_touchpoint_id": tp[1],
            "after_touchpoint_name": "coupon",
            "count": 2,
        }
    ]
    accounts = {a["account_name"]: a["counts"]["deliveries"] for a in report["accounts"]}
    assert accounts == {"客服小王": 6, "客服小李": 4}
    assert report["interval"] == "hour" and report["zone"] == "Asia/Shanghai"
    assert [p["start"] for p in report["series"]][:1] == ["2027-03-19T12:00:00+08:00"]
    assert [p["sent"] for p in report["series"]] == [5, 0, 0, 2]

    by_day = client.get(
        f"/api/stats/templates/{world.friend_template}", params={"interval": "day"}
    ).json()
    assert [(p["start"], p["deliveries"]) for p in by_day["series"]] == [
        ("2027-03-19T00:00:00+08:00", 10)
    ]

    overview = {
        t["template_name"]: t["counts"]["deliveries"]
        for t in client.get("/api/stats/templates").json()
    }
    assert overview == {"新好友 SOP": 10, "门店群每日菜单": 0}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"interval": "week"}, "interval"),
        ({"due_from": "2027-03-10", "due_to": "2027-03-01"}, "due_to"),
        ({"due_from": "soon"}, "due_from"),
    ],
)
def test_stats_api_rejects_bad_filters_by_name(world, client, params, param):
    response = client.get(f"/api/stats/templates/{world.friend_template}", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", param]


def test_unknown_template_is_404_and_an_impossible_id_422(client):
    assert client.get("/api/stats/templates/999").status_code == 404
    assert client.get(f"/api/stats/templates/{2**63}").status_code == 422


def test_rollup_histograms_add_up_whatever_their_json_spacing():
    """Settled histograms arrive as their JSON texts joined by commas (group_concat
    / string_agg); empty ones and JSON null add nothing."""
    total: Counter[int] = Counter()
    stats.add_histograms(
        total,
        ",".join(
            [
                '{"0": 1, "100": 2}',
                '{"100":3,"60000":1}',
                "{}",
                "null",
                '{\n  "3600000": 4,\t"0": 5\n}',
            ]
        ),
    )
    assert total == {0: 6, 100: 5, 60000: 1, 3600000: 4}
