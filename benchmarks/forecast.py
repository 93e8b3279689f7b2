"""Forecast benchmark: the forecast of a draft over a large tagged segment, then
the publish it forecasts, compared.

* ``forecast_s`` -- seconds for ``scheduler.flows.forecast.forecast`` of a
  fixed-start draft whose segment is a tag carried by N contacts (10% also carry
  the exit tag and stay out), 3 day-at touchpoints, a 10% holdout, quiet hours
  and a WeCom daily cap, while another live SOP already has one delivery
  scheduled to every contact on day 1 (overlap). Target <= 5 s at 100,000.
* ``forecast_matches_publish`` -- the counts the forecast gave (targets,
  held out, deliveries, skipped) equal what ``lifecycle.publish`` then wrote.

Run from the repository root::

    python -m benchmarks.forecast --json              # 100,000 contacts
    python -m benchmarks.forecast --quick --json      # 10,000

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from audiences import service as audiences_service
from audiences.models import Contact, Tag, TagAssignment
from benchmarks.machine import describe
from scheduler.flows import fan_out, lifecycle
from scheduler.flows import forecast as forecasting
from scheduler.outbox import policies
from scheduler.outbox.models import Delivery, DeliveryStatus, Enrollment
from sop_templates import service as templates_service
from sopbot.db import make_engine, session_scope
from sopbot.migrate import upgrade

NOW = datetime(2027, 3, 1, 1, 0, tzinfo=UTC)
ACTOR = lifecycle.Actor(require_approval=False, audit=lambda *entry: None)
TARGET_S = 5.0


def _log(msg: str) -> None:
    print(f"[forecast] {msg}", file=sys.stderr, flush=True)


def draft_spec(name: str = "春季班（固定开课）", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "target": "contact",
        "anchor": "fixed",
        "start_at": "2027-03-02T09:00:00",
        "segment": {"tags": "spring-class-2027"},
        "exit": {"tags_added": ["purchased"]},
        "holdout": "10%",
        "quiet_hours": {"start": "22:00", "end": "08:00"},
        "frequency_cap": "wecom_daily",
        "touchpoints": [
            {
                "name": "上课提醒",
                "timing": "day 1 20:00",
                "content": "{{ contact.name }}，今晚上课",
            },
            {"name": "预习", "timing": "day 2 19:30", "content": "预习资料"},
            {"name": "回访", "timing": "day 3 09:00", "content": "课后回访"},
        ],
    }
    spec.update(overrides)
    return spec


def seed(engine: Engine, contacts: int, *, overlap: bool = True) -> int:
    """N tagged contacts (every tenth with the exit tag), optionally another live
    SOP with a delivery to each on day 1; returns the draft template's id."""
    with session_scope(engine) as session:
        account_id = audiences_service.ensure_account(session, "bench-account").id
    with engine.begin() as conn:
        conn.execute(insert(Tag), [{"name": "spring-class-2027"}, {"name": "purchased"}])
        tags = dict(conn.execute(select(Tag.name, Tag.id)).all())  # type: ignore[call-overload]
        conn.execute(
            insert(Contact),
            [
                {
                    "external_id": f"wm{i:07d}",
                    "account_id": account_id,
                    "name": f"学员{i}",
                    "joined_at": NOW,
                    "status": "active",
                    "attributes": {},
                }
                for i in range(contacts)
            ],
        )
        ids = list(conn.execute(select(Contact.id).order_by(Contact.id)).scalars())  # type: ignore[call-overload]
        conn.execute(
            insert(TagAssignment),
            [
                {"tag_id": tags["spring-class-2027"], "target_kind": "contact", "target_id": c, "tagged_at": NOW}
                for c in ids
            ]
            + [
                {"tag_id": tags["purchased"], "target_kind": "contact", "target_id": c, "tagged_at": NOW}
                for c in ids[::10]
            ],
        )  # fmt: skip
    if overlap:
        other = draft_spec(
            "已上线的提醒",
            holdout=0,
            start_at="2027-03-02T12:00:00",
            exit={},
            touchpoints=[{"name": "午间提醒", "timing": "day 1 12:00", "content": "午间提醒"}],
        )
        with session_scope(engine) as session:
            other_id = templates_service.create_template(session, other, NOW).id
            lifecycle.publish(session, other_id, NOW, ACTOR)  # type: ignore[arg-type]
    with session_scope(engine) as session:
        return templates_service.create_template(session, draft_spec(), NOW).id  # type: ignore[return-value]


def published_counts(engine: Engine, template_id: int) -> dict[str, int]:
    with session_scope(engine) as session:

        def count(*where: Any, model: Any = Delivery) -> int:
            return int(
                session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
            )

        return {
            "targets": count(Enrollment.template_id == template_id, model=Enrollment),  # type: ignore[arg-type]
            "held_out": count(
                Enrollment.template_id == template_id,  # type: ignore[arg-type]
                Enrollment.holdout,  # type: ignore[arg-type]
                model=Enrollment,
            ),
            "deliveries": count(Delivery.template_id == template_id),  # type: ignore[arg-type]
            "skipped": count(
                Delivery.template_id == template_id,  # type: ignore[arg-type]
                Delivery.status == DeliveryStatus.SKIPPED,  # type: ignore[arg-type]
            ),
        }


def forecast_counts(result: forecasting.Forecast) -> dict[str, int]:
    return {
        "targets": result.targets,
        "held_out": result.held_out,
        "deliveries": result.deliveries,
        "skipped": result.skipped,
    }


@contextlib.contextmanager
def _database() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="sopbot-bench-forecast-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'sopbot.db'}")
        upgrade(engine)
        try:
            yield engine
        finally:
            engine.dispose()


def run(contacts: int) -> dict[str, Any]:
    with _database() as engine:
        _log(f"seeding {contacts:,} contacts and an overlapping live SOP")
        template_id = seed(engine, contacts)
        workspace = policies.WorkspaceDefaults()
        with session_scope(engine) as session:
            started = time.perf_counter()
            result = forecasting.forecast(session, template_id, NOW, workspace=workspace)
            seconds = time.perf_counter() - started
            session.rollback()  # it wrote nothing; make sure of it
        _log(f"forecast: {seconds:.2f}s; publishing to compare")
        with session_scope(engine) as session:
            lifecycle.publish(session, template_id, NOW, ACTOR)
            fan_out.plan_each_when_due(session)  # the rows the planner writes later
        published = published_counts(engine, template_id)
        predicted = forecast_counts(result)
        capped = sum(r.count for r in result.capped)
        return {
            "contacts": contacts,
            "forecast_s": round(seconds, 3),
            "forecast_targets": result.targets,
            "forecast_deliveries": result.deliveries,
            "forecast_capped": capped,
            "forecast_matches_publish": predicted == published,
            "published": published,
            "target_s": TARGET_S,
            "day_1_local": (NOW + timedelta(days=1)).date().isoformat(),
            "machine": describe(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 contacts instead of 100,000")
    parser.add_argument("--contacts", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    contacts = args.contacts or (10_000 if args.quick else 100_000)
    result = run(contacts)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0 if result["forecast_matches_publish"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
