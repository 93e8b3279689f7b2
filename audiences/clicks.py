"""Clicks on tracked links as the audience sees them (``link_clicked``
events): the segment term "clicked in the last N days", each target's last
clicks loaded for a batch of events, and the ``link_clicks`` rows written.

A click names its template and step by id and name only: this package knows
nothing of templates (``scheduler.flows.clicks`` turns short-link requests into
these events).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import exists, func, select
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session

from audiences.tables import LINK_CLICKS
from sopbot.clock import SystemClock
from sopbot.sql import among, chunked, insert_rows, instant_param

ClickKey = tuple[int, str]  # (template id, touchpoint name) of a tracked link
CLICK_MEMORY_DAYS = 365  # the longest "clicked in the last N days"


class ClickCondition(BaseModel):
    """Clicked a tracked link in the last ``days`` days (点击过链接): of any
    SOP, or of one template (by id) and, optionally, one of its steps. Link
    previews and crawlers do not count. Short forms: ``clicked: 7`` or ``7d``."""

    model_config = ConfigDict(extra="forbid")

    days: int = Field(7, ge=1, le=CLICK_MEMORY_DAYS, description="the last N days")
    template_id: int | None = Field(None, ge=1, description="only links of this template")
    step: str | None = Field(
        None, min_length=1, max_length=100, description="only links of this step (触达节点)"
    )

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("write the number of days, e.g. clicked: 7d")
        if isinstance(value, int):
            return {"days": value}
        if isinstance(value, str):
            text = value.strip().lower().removesuffix("d").strip()
            if not text.isdigit():
                raise ValueError(f"{value!r} is not a number of days such as 7d")
            return {"days": int(text)}
        return value

    def since(self, now: datetime) -> datetime:
        return now - timedelta(days=self.days)

    def wants(self, key: ClickKey) -> bool:
        template_id, step = key
        if self.template_id is not None and template_id != self.template_id:
            return False
        return self.step is None or step == self.step

    def matches(self, clicks: Mapping[ClickKey, datetime], now: datetime | None) -> bool:
        """On a target's last clicks per (template, step), as of ``now``."""
        since = self.since(now or SystemClock().now())
        return any(at >= since for key, at in clicks.items() if self.wants(key))

    def to_sql(self, target: str, table: Any, now: datetime) -> ColumnElement[bool]:
        c = LINK_CLICKS.c
        where = [
            c.target_kind == target,
            c.target_id == table.c.id,
            c.bot.is_(False),
            c.clicked_at >= self.since(now),
        ]
        if self.template_id is not None:
            where.append(c.template_id == self.template_id)
        if self.step is not None:
            where.append(c.touchpoint_name == self.step)
        return exists().where(*where)


def load_clicks(session: Session, states: Mapping[tuple[str, int], Any], now: datetime) -> None:
    """Fill in each state's last person click per (template, step) within
    ``CLICK_MEMORY_DAYS``: one grouped query per chunk of targets."""
    c = LINK_CLICKS.c
    since = now - timedelta(days=CLICK_MEMORY_DAYS)
    for kind in ("contact", "group"):
        ids = sorted(i for k, i in states if k == kind)
        for chunk in chunked(ids):
            for target_id, template_id, step, last in session.execute(
                select(c.target_id, c.template_id, c.touchpoint_name, func.max(c.clicked_at))
                .where(
                    c.target_kind == kind,
                    among(c.target_id, chunk, session),
                    c.bot.is_(False),
                    c.clicked_at >= since,
                )
                .group_by(c.target_id, c.template_id, c.touchpoint_name)
            ).all():
                states[(kind, target_id)].clicks[(template_id, step)] = last  # UTC (UTCDateTime)


_CLICK_COLUMNS = (
    "token",
    "delivery_id",
    "enrollment_id",
    "template_id",
    "touchpoint_name",
    "target_kind",
    "target_id",
    "clicked_at",
    "user_agent",
    "bot",
    "repeat",
)


def write_clicks(session: Session, events: Sequence[Any], now: datetime) -> None:
    """The ``link_clicks`` rows of ``link_clicked`` events (previews included)."""
    if not events:
        return
    instant = instant_param(session)
    insert_rows(
        session,
        LINK_CLICKS,
        _CLICK_COLUMNS,
        [
            (
                e.token,
                e.delivery_id,
                e.enrollment_id,
                e.template_id,
                e.touchpoint_name,
                e.target,
                e.target_id,
                instant(e.occurred_at or now),  # events hold UTC instants
                e.user_agent,
                e.bot,
                e.repeat,
            )
            for e in events
        ],
    )
