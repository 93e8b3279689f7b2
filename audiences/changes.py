"""The one way audience data changes: a unit of work that applies events and
runs the SOP reactions.

Every source — ``POST /api/events``, WeCom callbacks (``audiences.inbox``), the
CSV import (``audiences.importer``), ``POST /api/contacts`` / ``POST
/api/groups``, the CLI, the UI and the demo — turns what it was given into
audience events and calls :func:`apply`. It writes the rows
(``audiences.applying``), then hands what changed to ``react``: the SOP
reactions (enroll, exit, re-entry) are the scheduler's, which this package may
not import, so they are a required argument. ``scheduler.flows.changes`` binds
them once; the entry points call that module, never the writers below.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from audiences import applying, target_states
from audiences import service as audiences_service
from audiences.applying import Applied
from audiences.events import BaseEvent, InvalidEvent, ItemError, TagAdded, parse_event
from audiences.models import Contact, GroupChat, Tag
from audiences.schemas import ContactIn, GroupIn


@dataclass
class Reaction:
    """What the SOPs did about a change."""

    enrolled: int = 0  # new enrollments
    exited: int = 0  # enrollments ended by an exit condition
    cancelled: int = 0  # pending deliveries cancelled by those exits
    deliveries: int = 0  # delivery rows written for the new enrollments
    excluded: int = 0  # not enrolled: already in a mutually exclusive SOP (互斥)
    # templates that could not react (each failed alone): template_id, template, error
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: Reaction) -> None:
        self.enrolled += other.enrolled
        self.exited += other.exited
        self.cancelled += other.cancelled
        self.deliveries += other.deliveries
        self.excluded += other.excluded
        self.failures += other.failures


Reactor = Callable[[Session, Applied, datetime], Reaction]


class EventsRejected(ValueError):
    """A batch with at least one bad event; nothing of it was applied."""

    def __init__(self, total: int, errors: Sequence[ItemError]) -> None:
        self.total = total
        self.errors = list(errors)
        bad = len({e.index for e in self.errors})
        super().__init__(
            f"{bad} of {total} event{'s' if total != 1 else ''} rejected; nothing was applied"
        )

    def detail(self) -> str:
        return "; ".join(f"{e.loc}: {e.msg}" for e in self.errors) or str(self)

    def report(self) -> dict[str, Any]:
        by_index: dict[int, list[dict[str, str]]] = defaultdict(list)
        for error in self.errors:
            by_index[error.index].append({"loc": error.loc, "msg": error.msg})
        return {
            "message": str(self),
            "errors": [{"index": e.index, "loc": e.loc, "msg": e.msg} for e in self.errors],
            "results": [
                {"index": i, "status": "rejected", "errors": by_index[i]}
                if i in by_index
                else {"index": i, "status": "not_applied"}
                for i in range(self.total)
            ],
        }


@dataclass
class Changes:
    applied: Applied
    reaction: Reaction


def parse_all(items: Sequence[Any]) -> list[Any]:
    """Validate raw events (parsed ones pass through); ``EventsRejected`` names
    every bad field of every bad event."""
    parsed: list[Any] = []
    errors: list[ItemError] = []
    for index, item in enumerate(items):
        try:
            parsed.append(item if isinstance(item, BaseEvent) else parse_event(item))
        except InvalidEvent as exc:
            errors += [ItemError(index, loc, msg) for loc, msg in exc.problems]
    if errors:
        raise EventsRejected(len(items), errors)
    return parsed


def apply(session: Session, events: Sequence[Any], now: datetime, *, react: Reactor) -> Changes:
    """Apply events (raw or parsed) in order and let the SOPs react, all or
    nothing: any bad event, or one naming an unknown account / contact / group,
    raises ``EventsRejected`` before anything is written."""
    parsed = parse_all(events)
    applied, problems = applying.apply(session, parsed, now)
    if problems:
        raise EventsRejected(len(parsed), problems)
    return Changes(applied, react(session, applied, now))


def set_tag_group(
    session: Session,
    tags: Sequence[str],
    group: str | None,
    now: datetime,
    *,
    react: Reactor,
) -> Changes:
    """Put tags (by name) in a tag group (标签组), or in none (``group`` empty):
    a ``tag_group_set`` event through the one write path. A tag not known yet
    is created in the group (a WeCom tag catalogue names tags nobody carries
    yet). ``EventsRejected`` for a bad name or group; nothing is written then."""
    event = {"kind": "tag_group_set", "tags": list(tags), "group": group}
    return apply(session, [event], now, react=react)


def rename_tag_group(
    session: Session, old: str, new: str, now: datetime, *, react: Reactor
) -> tuple[int, Changes]:
    """Rename a tag group: every tag in ``old`` moves to ``new`` (an existing
    group of that name: the two are merged). Returns how many tags moved."""
    names = list(session.execute(select(col(Tag.name)).where(col(Tag.group_name) == old)).scalars())
    if not names:
        raise EventsRejected(1, [ItemError(0, "group", f"no tag group named {old!r}")])
    return len(names), set_tag_group(session, names, new, now, react=react)


def tag_targets(
    session: Session,
    target_kind: str,
    target_ids: Sequence[int],
    tags: Sequence[str],
    now: datetime,
) -> Applied:
    """Tag rows sopbot knows by id (an exit action's tags), without reacting:
    the reaction that asked for it decides what follows."""
    states = target_states.load_states(session, [(target_kind, i) for i in target_ids])
    events = [
        TagAdded(
            kind="tag_added",
            target=target_kind,  # type: ignore[arg-type]
            account=state.account if target_kind == "contact" else None,
            external_id=state.external_id,
            tags=list(tags),
        )
        for state in states.values()
    ]
    applied, problems = applying.apply(session, events, now)
    if problems:  # only if a target vanished underneath us
        raise EventsRejected(len(events), problems)
    return applied


def target_events(
    session: Session,
    target_kind: str,
    target_ids: Sequence[int],
    action: str,
    tags: Sequence[str] = (),
) -> list[Any]:
    """Events for an operator's action on rows known by id: ``tag`` / ``untag``
    (``tags``) or ``remove`` (a contact becomes ``deleted``, a group
    ``dissolved``). Applied like any event (:func:`apply`), so SOPs enroll and
    exit as they would for a webhook's event. Unknown ids are skipped."""
    states = target_states.load_states(session, [(target_kind, i) for i in target_ids])
    events: list[Any] = []
    for state in states.values():
        ref: dict[str, Any] = {"external_id": state.external_id}
        if target_kind == "contact":
            ref["account"] = state.account
        if action in ("tag", "untag"):
            kind = "tag_added" if action == "tag" else "tag_removed"
            events.append({"kind": kind, "target": target_kind, **ref, "tags": list(tags)})
        elif action == "remove":
            if target_kind == "contact":
                events.append({"kind": "contact_updated", **ref, "status": "deleted"})
            else:
                events.append({"kind": "group_dissolved", **ref})
        else:
            raise ValueError(f"unknown action {action!r}")
    return events


# -- forms: a contact or group as one body (API, UI, CLI, demo) ------------------------


def contact_events(data: ContactIn) -> list[dict[str, Any]]:
    """A contact body as events: created if unknown (not as a new friend), its
    name, attributes and zone merged, its tags added. Validated as events are
    (``apply``), so a form can never store what an event could not."""
    ref = {"account": data.account, "external_id": data.external_id}
    events: list[dict[str, Any]] = [
        {
            "kind": "contact_updated",
            **ref,
            "name": data.name or None,
            "attributes": data.attributes or None,
            "timezone": data.timezone,
            "joined_at": data.joined_at,
            "create_missing": True,
        }
    ]
    if data.tags:
        events.append({"kind": "tag_added", **ref, "tags": data.tags})
    return events


def group_events(data: GroupIn) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "kind": "group_updated",
            "external_id": data.external_id,
            "name": data.name or None,
            "owner": data.owner,
            "member_count": data.member_count or None,
            "attributes": data.attributes or None,
            "occurred_at": data.joined_at,  # the join time of a group created here
            "create_missing": True,
        }
    ]
    if data.tags:
        events.append(
            {
                "kind": "tag_added",
                "target": "group",
                "external_id": data.external_id,
                "tags": data.tags,
            }
        )
    return events


def _written(session: Session, changes: Changes, kind: str, external_id: str) -> Any:
    for (target_kind, target_id), state in changes.applied.after.items():
        if target_kind == kind and state.external_id == external_id:
            model: Any = Contact if kind == "contact" else GroupChat
            return session.get(model, target_id, populate_existing=True)
    raise AssertionError(f"{kind} {external_id!r} was not written")


def upsert_contact(
    session: Session, data: ContactIn, now: datetime, *, react: Reactor
) -> tuple[Contact, Changes]:
    """Create or update a contact by (account, external id); its tags start
    tagged SOPs like any tag. The account is registered if new. A value an
    event would refuse (an unknown zone, an empty tag) raises ``EventsRejected``."""
    if data.account:
        # the account as the UI shows it (display name) or by its external id
        data = data.model_copy(
            update={"account": audiences_service.account_key(session, data.account)}
        )
    events = parse_all(contact_events(data))
    if data.account:
        audiences_service.ensure_account(session, data.account)
    changes = apply(session, events, now, react=react)
    return _written(session, changes, "contact", data.external_id), changes


def upsert_group(
    session: Session, data: GroupIn, now: datetime, *, react: Reactor
) -> tuple[GroupChat, Changes]:
    """Create or update a group chat by external id; its tags start group SOPs."""
    if data.owner:
        data = data.model_copy(update={"owner": audiences_service.account_key(session, data.owner)})
    events = parse_all(group_events(data))
    if data.owner:
        audiences_service.ensure_account(session, data.owner)
    changes = apply(session, events, now, react=react)
    return _written(session, changes, "group", data.external_id), changes
