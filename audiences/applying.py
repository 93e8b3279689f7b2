"""Applying audience events to contacts, groups and tags, set-based.

``apply`` applies a batch as one unit of work: it loads every contact, group and
tag the batch refers to in a few queries, applies the events in order in memory,
and writes the differences set-based. It returns each touched target's state
(``audiences.target_states``) before and after the batch, which is what the SOP
reactions need to decide who starts or stops matching a template's segment. Nothing here knows about
templates or enrollments; callers go through ``audiences.changes``, which also
runs the reactions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlmodel import Session, col

from audiences.clicks import load_clicks, write_clicks
from audiences.events import (
    ContactUpdated,
    FriendAdded,
    FriendDeleted,
    GroupCreated,
    GroupDissolved,
    GroupMemberJoined,
    GroupMemberLeft,
    GroupUpdated,
    ItemError,
    LinkClicked,
    TagAdded,
    TagGroupSet,
    TagRemoved,
    _ContactRef,
    _GroupRef,
)
from audiences.models import Account, ContactStatus, GroupStatus, Tag
from audiences.tables import (
    CONTACTS,
    GROUPS,
    TAG_ASSIGNMENTS,
    TAGS,
    owner_account,
    target_table,
)
from audiences.target_states import TargetKey, TargetState, load_states
from sopbot.sql import chunked, insert_ignore

# ------------------------------------------------------------------ unit of work


@dataclass
class Applied:
    """What a batch changed: every touched target before (None: did not exist)
    and after, plus the contacts whose friendship began in it."""

    before: dict[TargetKey, TargetState | None] = field(default_factory=dict)
    after: dict[TargetKey, TargetState] = field(default_factory=dict)
    joined: list[TargetKey] = field(default_factory=list)
    created: int = 0
    updated: int = 0


class _EventError(Exception):
    def __init__(self, loc: str, msg: str) -> None:
        self.loc = loc
        self.msg = msg


class _Batch:
    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now
        self.accounts: dict[str, int] = {}
        self.contacts_by_key: dict[tuple[int | None, str], TargetState] = {}
        self.contacts_by_ext: dict[str, list[TargetState]] = {}
        self.groups: dict[str, TargetState] = {}
        self.before: dict[int, TargetState | None] = {}  # keyed by id(state)
        self.touched: dict[int, TargetState] = {}
        self.joined: dict[int, TargetState] = {}
        self.tag_groups: dict[str, str] = {}
        self.group_moves: dict[str, str | None] = {}  # tag_group_set: tag -> group
        self.by_key: dict[TargetKey, TargetState] = {}
        self.clicks: list[LinkClicked] = []

    # -- loading -----------------------------------------------------------------

    def load(self, events: Sequence[Any]) -> None:
        account_ids: set[str] = set()
        contact_ext: set[str] = set()
        group_ext: set[str] = set()
        by_target_id: set[TargetKey] = set()
        for event in events:
            if isinstance(event, LinkClicked):
                by_target_id.add((event.target, event.target_id))
            elif (
                isinstance(event, _ContactRef) and getattr(event, "target", "contact") == "contact"
            ):
                contact_ext.add(event.external_id)
                if event.account:
                    account_ids.add(event.account)
            elif isinstance(event, _ContactRef | _GroupRef):
                group_ext.add(event.external_id)
            owner = getattr(event, "owner", None)
            if owner:
                account_ids.add(owner)
        for chunk in chunked(sorted(account_ids)):
            for account_id, external_id in self.session.execute(
                select(col(Account.id), col(Account.external_id)).where(
                    col(Account.external_id).in_(chunk)
                )
            ).all():
                self.accounts[external_id] = account_id
        account_names = {v: k for k, v in self.accounts.items()}
        by_id: dict[TargetKey, TargetState] = {}
        for kind, keys in (("contact", contact_ext), ("group", group_ext)):
            table, owner = target_table(kind), owner_account(kind)
            for chunk in chunked(sorted(keys)):
                rows = self.session.execute(
                    select(table, Account.external_id.label("account_ext"))  # type: ignore[arg-type,attr-defined]
                    .outerjoin(Account, col(Account.id) == owner)
                    .where(table.c.external_id.in_(chunk))
                ).all()
                for row in rows:
                    account_id = row.account_id if kind == "contact" else row.owner_account_id
                    state = TargetState(
                        kind=kind,
                        id=row.id,
                        external_id=row.external_id,
                        account_id=account_id,
                        account=row.account_ext or account_names.get(account_id),
                        joined_at=row.joined_at,
                        name=row.name,
                        status=row.status,
                        attributes=dict(row.attributes or {}),
                        **(
                            {"timezone": row.timezone}
                            if kind == "contact"
                            else {"member_count": row.member_count}
                        ),
                    )
                    if kind == "contact":
                        self._index_contact(state)
                    else:
                        self.groups[state.external_id] = state
                    by_id[state.key] = state
        for kind in ("contact", "group"):
            ids = sorted(i for k, i in by_id if k == kind)
            for chunk in chunked(ids):
                for target_id, name, tagged_at in self.session.execute(
                    select(TAG_ASSIGNMENTS.c.target_id, col(Tag.name), TAG_ASSIGNMENTS.c.tagged_at)
                    .join(Tag, col(Tag.id) == TAG_ASSIGNMENTS.c.tag_id)
                    .where(
                        TAG_ASSIGNMENTS.c.target_kind == kind,
                        TAG_ASSIGNMENTS.c.target_id.in_(chunk),
                    )
                ).all():
                    by_id[(kind, target_id)].tags[name] = tagged_at
        missing = by_target_id - set(by_id)
        if missing:  # clicks name their target by id
            for key, state in load_states(self.session, missing).items():
                if key[0] == "contact":
                    self._index_contact(state)
                else:
                    self.groups[state.external_id] = state
                by_id[key] = state
        load_clicks(self.session, by_id, self.now)
        for state in by_id.values():
            state.as_of = self.now
            self.before[id(state)] = state.snapshot()
        self.by_key = by_id

    def _index_contact(self, state: TargetState) -> None:
        self.contacts_by_key[(state.account_id, state.external_id)] = state
        self.contacts_by_ext.setdefault(state.external_id, []).append(state)

    # -- applying ------------------------------------------------------------------

    def _touch(self, state: TargetState) -> TargetState:
        self.touched.setdefault(id(state), state)
        return state

    def _account(self, external_id: str, loc: str = "account") -> int:
        account_id = self.accounts.get(external_id)
        if account_id is None:
            raise _EventError(
                loc, f"unknown account {external_id!r}; register it first (POST /api/accounts)"
            )
        return account_id

    def _contacts(self, event: _ContactRef) -> list[TargetState]:
        if event.account:
            account_id = self._account(event.account)
            found = self.contacts_by_key.get((account_id, event.external_id))
            states = [found] if found else []
            where = f" of account {event.account!r}"
        else:
            states = list(self.contacts_by_ext.get(event.external_id, []))
            where = ""
        if not states:
            raise _EventError("external_id", f"unknown contact {event.external_id!r}{where}")
        return states

    def _group(self, event: _GroupRef, create: bool = False) -> TargetState:
        state = self.groups.get(event.external_id)
        if state is None:
            if not create:
                raise _EventError("external_id", f"unknown group chat {event.external_id!r}")
            state = self._new_group(event.external_id, event.occurred_at or self.now)
        return state

    def _new_contact(
        self, account: str | None, external_id: str, joined_at: datetime
    ) -> TargetState:
        state = TargetState(
            kind="contact",
            id=None,
            external_id=external_id,
            account_id=self.accounts[account] if account else None,
            account=account,
            joined_at=joined_at,
        )
        self.before[id(state)] = None
        self._index_contact(state)
        return state

    def _new_group(self, external_id: str, joined_at: datetime) -> TargetState:
        state = TargetState(
            kind="group", id=None, external_id=external_id, account_id=None, account=None,
            joined_at=joined_at,
        )  # fmt: skip
        self.before[id(state)] = None
        self.groups[external_id] = state
        return state

    def apply(self, event: Any) -> None:
        getattr(self, "_on_" + event.kind)(event, event.occurred_at or self.now)

    def _on_link_clicked(self, e: LinkClicked, at: datetime) -> None:
        self.clicks.append(e)
        state = self.by_key.get((e.target, e.target_id))
        if state is None or e.bot:
            return  # recorded, but a preview is no person's click (or the target is gone)
        self._touch(state)
        key = (e.template_id, e.touchpoint_name)
        if key not in state.clicks or state.clicks[key] < at:
            state.clicks[key] = at
        state.clicked.append(e)

    def _on_friend_added(self, e: FriendAdded, at: datetime) -> None:
        account_id = self._account(e.account)
        state = self.contacts_by_key.get((account_id, e.external_id))
        if state is None:
            state = self._new_contact(e.account, e.external_id, at)
            self.joined[id(state)] = state
        elif not state.active:
            # re-added after being deleted: a new friendship, so a new join time
            state.status = ContactStatus.ACTIVE
            state.joined_at = at
            self.joined[id(state)] = state
        self._touch(state)
        if e.name:
            state.name = e.name
        state.attributes.update(e.attributes)
        if e.timezone:
            state.timezone = e.timezone
        for tag in e.tags:
            state.tags.setdefault(tag, at)

    def _on_friend_deleted(self, e: FriendDeleted, at: datetime) -> None:
        for state in self._contacts(e):
            self._touch(state).status = ContactStatus.DELETED

    def _on_contact_updated(self, e: ContactUpdated, at: datetime) -> None:
        try:
            states = self._contacts(e)
        except _EventError:
            if not e.create_missing:
                raise
            if e.account:
                self._account(e.account)
            states = [self._new_contact(e.account, e.external_id, e.joined_at or at)]
        for state in states:
            self._touch(state)
            if e.name is not None:
                state.name = e.name
            for key, value in (e.attributes or {}).items():
                if value is None:
                    state.attributes.pop(key, None)
                else:
                    state.attributes[key] = value
            if e.timezone:
                state.timezone = e.timezone
            if e.status:
                state.status = e.status

    def _tag_targets(self, e: TagAdded | TagRemoved) -> list[TargetState]:
        if e.target == "group":
            if e.account:
                raise _EventError("account", "a group is named by its external_id alone")
            return [self._group(e)]  # type: ignore[arg-type]
        return self._contacts(e)

    def _on_tag_added(self, e: TagAdded, at: datetime) -> None:
        for state in self._tag_targets(e):
            self._touch(state)
            for tag in e.tags:
                state.tags.setdefault(tag, at)
                if e.tag_group:
                    self.tag_groups.setdefault(tag, e.tag_group)

    def _on_tag_group_set(self, e: TagGroupSet, at: datetime) -> None:
        for tag in e.tags:
            self.group_moves[tag] = e.group

    def _on_tag_removed(self, e: TagRemoved, at: datetime) -> None:
        for state in self._tag_targets(e):
            self._touch(state)
            for tag in e.tags:
                state.tags.pop(tag, None)

    def _set_owner(self, state: TargetState, owner: str | None) -> None:
        if owner:
            state.account_id = self._account(owner, "owner")
            state.account = owner

    def _on_group_created(self, e: GroupCreated, at: datetime) -> None:
        if e.owner:
            self._account(e.owner, "owner")
        state = self.groups.get(e.external_id)
        if state is None:
            state = self._new_group(e.external_id, at)
        elif state.status != GroupStatus.ACTIVE:
            state.status = GroupStatus.ACTIVE
            state.joined_at = at
        self._touch(state)
        self._set_owner(state, e.owner)
        if e.name:
            state.name = e.name
        if e.member_count is not None:
            state.member_count = e.member_count
        state.attributes.update(e.attributes)
        for tag in e.tags:
            state.tags.setdefault(tag, at)

    def _on_group_updated(self, e: GroupUpdated, at: datetime) -> None:
        if e.owner:
            self._account(e.owner, "owner")
        state = self._touch(self._group(e, create=e.create_missing))
        self._set_owner(state, e.owner)
        if e.name is not None:
            state.name = e.name
        if e.member_count is not None:
            state.member_count = e.member_count
        for key, value in (e.attributes or {}).items():
            if value is None:
                state.attributes.pop(key, None)
            else:
                state.attributes[key] = value

    def _on_group_dissolved(self, e: GroupDissolved, at: datetime) -> None:
        self._touch(self._group(e)).status = GroupStatus.DISSOLVED

    def _on_group_member_joined(self, e: GroupMemberJoined, at: datetime) -> None:
        state = self._touch(self._group(e, create=e.create_missing))
        state.member_count = (
            e.member_count if e.member_count is not None else state.member_count + e.delta
        )

    def _on_group_member_left(self, e: GroupMemberLeft, at: datetime) -> None:
        state = self._touch(self._group(e, create=e.create_missing))
        state.member_count = (
            e.member_count if e.member_count is not None else max(0, state.member_count - e.delta)
        )

    # -- writing ---------------------------------------------------------------------

    def flush(self) -> Applied:
        session = self.session
        applied = Applied()
        states = list(self.touched.values())
        for kind, table in (("contact", CONTACTS), ("group", GROUPS)):
            new = [s for s in states if s.kind == kind and s.id is None]
            if new:
                rows = [self._row(s) for s in new]
                # Ids are matched back by the natural key, not by position: asking
                # for RETURNING in parameter order makes SQLite insert row by row.
                owner = table.c.account_id if kind == "contact" else table.c.owner_account_id
                returned = session.execute(
                    insert(table).returning(table.c.id, owner, table.c.external_id), rows
                ).all()
                ids = {(account, external): new_id for new_id, account, external in returned}
                for state in new:
                    state.id = ids[(state.account_id, state.external_id)]
                applied.created += len(new)
            changed = []
            for s in states:
                if s.kind != kind or s.id is None or self.before.get(id(s)) is None:
                    continue
                if self._row(s) != self._row(self.before[id(s)]):  # type: ignore[arg-type]
                    changed.append({"b_id": s.id, **{"v_" + k: v for k, v in self._row(s).items()}})
            if changed:
                values: dict[str, Any] = {k[2:]: bindparam(k) for k in changed[0] if k != "b_id"}
                session.execute(
                    update(table).where(table.c.id == bindparam("b_id")).values(values), changed
                )
                applied.updated += len(changed)
        self._write_tags(states)
        self._write_tag_groups()
        write_clicks(self.session, self.clicks, self.now)
        for state in states:
            applied.before[state.key] = self.before.get(id(state))
            applied.after[state.key] = state
        applied.joined = [s.key for s in self.joined.values()]
        return applied

    @staticmethod
    def _row(state: TargetState) -> dict[str, Any]:
        row: dict[str, Any] = {
            "external_id": state.external_id,
            "name": state.name,
            "joined_at": state.joined_at,
            "status": state.status,
            "attributes": state.attributes,
        }
        if state.kind == "contact":
            row.update(account_id=state.account_id, timezone=state.timezone)
        else:
            row.update(owner_account_id=state.account_id, member_count=state.member_count)
        return row

    def _write_tag_groups(self) -> None:
        if not self.group_moves:
            return
        groups = {tag: group for tag, group in self.group_moves.items() if group}
        ensure_tags(self.session, self.group_moves, groups)  # new tags land in their group
        self.session.execute(
            update(TAGS)
            .where(TAGS.c.name == bindparam("b_name"))
            .values(group_name=bindparam("b_group")),
            [{"b_name": tag, "b_group": group} for tag, group in self.group_moves.items()],
        )

    def _write_tags(self, states: list[TargetState]) -> None:
        added: list[tuple[TargetState, str]] = []
        removed: list[tuple[TargetState, str]] = []
        for state in states:
            before = self.before.get(id(state))
            old = set(before.tags) if before else set()
            added += [(state, name) for name in state.tags if name not in old]
            removed += [(state, name) for name in old if name not in state.tags]
        if not added and not removed:
            return
        tag_ids = ensure_tags(self.session, {name for _, name in added + removed}, self.tag_groups)
        if added:
            insert_ignore(
                self.session,
                TAG_ASSIGNMENTS,
                [
                    {
                        "tag_id": tag_ids[name],
                        "target_kind": state.kind,
                        "target_id": state.id,
                        "tagged_at": state.tags[name],
                    }
                    for state, name in added
                ],
            )
        if removed:
            self.session.execute(
                delete(TAG_ASSIGNMENTS).where(
                    TAG_ASSIGNMENTS.c.tag_id == bindparam("b_tag"),
                    TAG_ASSIGNMENTS.c.target_kind == bindparam("b_kind"),
                    TAG_ASSIGNMENTS.c.target_id == bindparam("b_target"),
                ),
                [{"b_tag": tag_ids[n], "b_kind": s.kind, "b_target": s.id} for s, n in removed],
            )


def apply(
    session: Session, events: Sequence[Any], now: datetime
) -> tuple[Applied, list[ItemError]]:
    """Apply validated events in order as one unit of work.

    Returns what changed, or — when any event refers to something unknown — the
    problems (index into ``events``, field, reason) and writes nothing.
    """
    batch = _Batch(session, now)
    batch.load(events)
    errors: list[ItemError] = []
    for index, event in enumerate(events):
        try:
            batch.apply(event)
        except _EventError as exc:
            errors.append(ItemError(index, exc.loc, exc.msg))
    if errors:
        return Applied(), errors
    return batch.flush(), []


# ----------------------------------------------------------------------- helpers


def ensure_tags(
    session: Session, names: Iterable[str], groups: dict[str, str] | None = None
) -> dict[str, int]:
    """Tag ids by name, creating the missing tags (with their tag group)."""
    names = sorted(set(names))
    found: dict[str, int] = {}
    for chunk in chunked(names):
        found.update(
            (name, tag_id)
            for tag_id, name in session.execute(
                select(col(Tag.id), col(Tag.name)).where(col(Tag.name).in_(chunk))
            ).all()
        )
    missing = [n for n in names if n not in found]
    if missing:
        groups = groups or {}
        insert_ignore(
            session,
            TAGS,
            [{"name": n, "group_name": groups.get(n)} for n in missing],
        )
        for chunk in chunked(missing):
            found.update(
                (name, tag_id)
                for tag_id, name in session.execute(
                    select(col(Tag.id), col(Tag.name)).where(col(Tag.name).in_(chunk))
                ).all()
            )
    return found
