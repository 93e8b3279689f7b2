"""WeCom tag sync: tags set in the WeCom client reach sopbot's SOPs, and tags
sopbot sets reach WeCom.

WeCom's ``edit_external_contact`` callback carries no tags, and changes made
through its API produce no callback at all. So for each customer to check,
sopbot fetches the contact (``externalcontact/get``) and compares, per staff
member, WeCom's corp tags with sopbot's:

* a tag in WeCom that sopbot lacks → ``tag_added`` through the one audience
  write path (``scheduler.flows.changes``), so tagged-customer SOPs start;
* a corp tag sopbot has and WeCom lacks: if sopbot applied it after the last
  check (an exit action's ``add_tags``, an operator) it is written back with
  ``mark_tag``; otherwise a staff member removed it → ``tag_removed``;
* tags WeCom does not know (not in the corp catalogue) are sopbot's own and
  are left alone.

Who is checked: customers named by ``edit_external_contact`` callbacks and
customers sopbot tagged since the last run (job ``sopbot:wecom-tag-sync``), and
everyone, nightly (``sopbot:wecom-reconcile``, with a progress log). A
``change_external_tag`` callback (and the nightly run) refreshes the corp tag
catalogue and brings sopbot's tag groups (标签组) in line with WeCom's: a tag
whose group WeCom names differently is moved (a ``tag_group_set`` event through
the one audience write path), and corp tags nobody carries yet appear in
their group. Tags WeCom does not know keep the group they have in sopbot.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from audiences import wecom_events
from audiences.changes import EventsRejected
from audiences.models import Account, Contact, ContactStatus, InboxEvent, Tag, TagAssignment
from channels import wecom_contacts
from channels.base import ChannelError
from channels.models import ChannelInstance, WeComSyncState
from channels.wecom import WeComAdapter, WeComAPIError
from scheduler.flows import changes
from scheduler.jobs import Job, JobContext
from sopbot.db import reader, session_scope

log = logging.getLogger("sopbot.wecom_sync")

JOB_TAG_SYNC = "sopbot:wecom-tag-sync"
JOB_RECONCILE = "sopbot:wecom-reconcile"
SYNCED_AT = "wecom_tags_synced_at"  # contact attribute: when its tags were last compared
EDIT_KIND = "change_external_contact/edit_external_contact"
TAG_KIND_PREFIX = "change_external_tag"
EVENT_BATCH = 200
RECONCILE_PAGE = 500


@dataclass
class SyncStats:
    customers: int = 0
    tags_added: int = 0
    tags_removed: int = 0
    written_back: int = 0
    errors: int = 0
    catalogue_refreshed: bool = False

    def add(self, other: SyncStats) -> None:
        self.customers += other.customers
        self.tags_added += other.tags_added
        self.tags_removed += other.tags_removed
        self.written_back += other.written_back
        self.errors += other.errors
        self.catalogue_refreshed |= other.catalogue_refreshed


def wecom_channels(engine: Engine) -> list[str]:
    with Session(reader(engine)) as session:
        return list(
            session.execute(
                select(ChannelInstance.name).where(  # type: ignore[call-overload]
                    col(ChannelInstance.adapter) == "wecom", col(ChannelInstance.enabled)
                )
            ).scalars()
        )


def _adapter(ctx: JobContext, channel: str) -> WeComAdapter | None:
    try:
        adapter = ctx.channels.get(channel)
    except ChannelError as exc:
        log.warning("WeCom tag sync: channel %s unavailable: %s", channel, exc)
        return None
    return adapter if isinstance(adapter, WeComAdapter) else None


async def refresh_catalogue(
    engine: Engine, now: datetime, channel: str, adapter: WeComAdapter
) -> int:
    """Fetch WeCom's corp tag catalogue and move sopbot's tags into the groups
    WeCom names (one ``tag_group_set`` event per group that changed). Returns
    how many tags moved or appeared."""
    catalogue = await adapter.corp_tag_groups()
    known = await asyncio.to_thread(_tag_groups, engine)
    moves: dict[str, list[str]] = defaultdict(list)
    for group, names in catalogue.items():
        for name in names:
            if name not in known or (known[name] or "") != group:
                moves[group].append(name)
    moved = 0
    for group, names in moves.items():
        try:
            await asyncio.to_thread(_set_tag_group, engine, names, group or None, now)
            moved += len(names)
        except EventsRejected as exc:
            log.warning(
                "WeCom tag group %r of %s not taken over: %s",
                group,
                channel,
                exc,
                extra={"channel": channel},
            )
    if moved:
        log.info(
            "WeCom tag catalogue of %s: %d tags moved into their WeCom tag groups",
            channel,
            moved,
            extra={"channel": channel},
        )
    return moved


def _tag_groups(engine: Engine) -> dict[str, str | None]:
    with Session(reader(engine)) as session:
        return dict(
            session.execute(select(Tag.name, Tag.group_name)).all()  # type: ignore[call-overload]
        )


def _set_tag_group(engine: Engine, names: list[str], group: str | None, now: datetime) -> None:
    with session_scope(engine) as session:
        changes.set_tag_group(session, names, group, now)


def _apply(engine: Engine, events: list[dict[str, Any]], now: datetime) -> None:
    with session_scope(engine) as session:
        changes.apply(session, events, now)


async def sync_customers(
    engine: Engine, now: datetime, adapter: WeComAdapter, externals: list[str]
) -> SyncStats:
    """Compare and reconcile the tags of these customers (external_userids)."""
    stats = SyncStats()
    catalogue = set(await adapter.corp_tags())
    for external in dict.fromkeys(externals):
        try:
            in_wecom = await wecom_contacts.contact_tags(adapter, external)
        except WeComAPIError as exc:
            stats.errors += 1
            log.warning("WeCom tag sync: %s could not be fetched: %s", external, exc.reason)
            continue
        stats.customers += 1
        try:
            events, write_back = await asyncio.to_thread(
                _diff, engine, external, in_wecom, catalogue, now
            )
            for account, tags in write_back.items():
                await wecom_contacts.mark_tags(adapter, account, external, add=sorted(tags))
                stats.written_back += len(tags)
            await asyncio.to_thread(_apply, engine, events, now)
        except (WeComAPIError, changes.EventsRejected) as exc:
            stats.errors += 1
            log.warning("WeCom tag sync: %s failed: %s", external, exc)
            continue
        stats.tags_added += sum(len(e["tags"]) for e in events if e["kind"] == "tag_added")
        stats.tags_removed += sum(len(e["tags"]) for e in events if e["kind"] == "tag_removed")
    return stats


def _diff(
    engine: Engine,
    external: str,
    in_wecom: dict[str, set[str]],
    catalogue: set[str],
    now: datetime,
) -> tuple[list[dict[str, Any]], dict[str, set[str]]]:
    """The audience events that bring sopbot in line with WeCom for one customer,
    and the tags to write back to WeCom, per staff member."""
    events: list[dict[str, Any]] = []
    write_back: dict[str, set[str]] = defaultdict(set)
    with Session(reader(engine)) as session:
        contacts = session.execute(
            select(Contact.id, Account.external_id, Contact.attributes)  # type: ignore[call-overload]
            .join(Account, col(Account.id) == col(Contact.account_id))
            .where(
                col(Contact.external_id) == external, col(Contact.status) == ContactStatus.ACTIVE
            )
        ).all()
        ids = [c.id for c in contacts]
        held: dict[int, dict[str, datetime]] = defaultdict(dict)
        if ids:
            for target_id, name, tagged_at in session.execute(
                select(TagAssignment.target_id, Tag.name, TagAssignment.tagged_at)  # type: ignore[call-overload]
                .join(Tag, col(Tag.id) == col(TagAssignment.tag_id))
                .where(
                    col(TagAssignment.target_kind) == "contact",
                    col(TagAssignment.target_id).in_(ids),
                )
            ).all():
                held[target_id][name] = tagged_at
    for contact_id, account, attributes in contacts:
        if account not in in_wecom:
            continue  # that staff member no longer follows the customer
        ref = {"account": account, "external_id": external}
        wecom_tags = in_wecom[account]
        ours = held[contact_id]
        synced_raw = (attributes or {}).get(SYNCED_AT)
        synced_at = datetime.fromisoformat(synced_raw) if synced_raw else None
        added = sorted(wecom_tags - set(ours))
        removed = []
        for name, tagged_at in ours.items():
            if name in wecom_tags or name not in catalogue:
                continue
            if synced_at is None or tagged_at > synced_at:
                write_back[account].add(name)  # sopbot applied it since the last check
            else:
                removed.append(name)
        if added:
            events.append({"kind": "tag_added", **ref, "tags": added})
        if removed:
            events.append({"kind": "tag_removed", **ref, "tags": sorted(removed)})
        events.append(
            {"kind": "contact_updated", **ref, "attributes": {SYNCED_AT: now.isoformat()}}
        )
    return events, write_back


def _edited_since_last_run(engine: Engine, channel: str) -> tuple[Sequence[Any], list[str]]:
    """Inbox events after the channel's last one seen, and the customers sopbot
    tagged since the last run. Read on a snapshot: never waits on the writer."""
    with Session(reader(engine)) as session:
        state = session.get(WeComSyncState, channel) or WeComSyncState(instance=channel)
        rows = session.execute(
            select(InboxEvent.id, InboxEvent.kind, InboxEvent.payload)  # type: ignore[call-overload]
            .where(
                col(InboxEvent.source) == wecom_events.SOURCE,
                col(InboxEvent.id) > state.last_event_id,
                col(InboxEvent.status) != "pending",
            )
            .order_by(col(InboxEvent.id))
            .limit(EVENT_BATCH)
        ).all()
        since = state.tags_checked_at
        tagged: list[str] = []
        if since is not None:
            tagged = list(
                session.execute(
                    select(Contact.external_id)  # type: ignore[call-overload]
                    .join(TagAssignment, col(TagAssignment.target_id) == col(Contact.id))
                    .where(
                        col(TagAssignment.target_kind) == "contact",
                        col(TagAssignment.tagged_at) > since,
                    )
                    .distinct()
                ).scalars()
            )
    return rows, tagged


def _save_state(engine: Engine, channel: str, **values: Any) -> None:
    with session_scope(engine) as session:
        state = session.get(WeComSyncState, channel) or WeComSyncState(instance=channel)
        last_event_id = values.pop("last_event_id", None)
        if last_event_id is not None:
            state.last_event_id = max(state.last_event_id, last_event_id)
        for name, value in values.items():
            setattr(state, name, value)
        session.add(state)


async def sync_edited(ctx: JobContext) -> SyncStats:
    """The tag-sync job: customers WeCom says were edited, customers sopbot
    tagged since the last run, and tag catalogue changes.

    Like every job it runs on the scheduler's event loop, which ``serve`` shares
    with the web pages: its database work runs in threads, so waiting for
    SQLite's write lock never stalls a page."""
    total = SyncStats()
    for channel in await asyncio.to_thread(wecom_channels, ctx.engine):
        adapter = _adapter(ctx, channel)
        if adapter is None:
            continue
        now = ctx.clock.now()
        rows, tagged = await asyncio.to_thread(_edited_since_last_run, ctx.engine, channel)
        corp = adapter.config.corp_id
        mine = [r for r in rows if r.payload.get("fields", {}).get("ToUserName", corp) == corp]
        stats = SyncStats()
        if any(r.kind.startswith(TAG_KIND_PREFIX) for r in mine):
            await refresh_catalogue(ctx.engine, now, channel, adapter)
            stats.catalogue_refreshed = True
        edited = [
            r.payload["fields"]["ExternalUserID"]
            for r in mine
            if r.kind == EDIT_KIND and r.payload.get("fields", {}).get("ExternalUserID")
        ]
        stats.add(await sync_customers(ctx.engine, now, adapter, [*edited, *tagged]))
        await asyncio.to_thread(
            _save_state,
            ctx.engine,
            channel,
            last_event_id=rows[-1].id if rows else None,
            tags_checked_at=now,
        )
        total.add(stats)
    return total


def _active_customers(engine: Engine) -> list[str]:
    with Session(reader(engine)) as session:
        return list(
            session.execute(
                select(Contact.external_id)  # type: ignore[call-overload]
                .where(col(Contact.status) == ContactStatus.ACTIVE)
                .distinct()
                .order_by(col(Contact.external_id))
            ).scalars()
        )


async def reconcile(ctx: JobContext) -> SyncStats:
    """The nightly job: every active WeCom customer's tags, page by page, with a
    progress line per page."""
    total = SyncStats()
    for channel in await asyncio.to_thread(wecom_channels, ctx.engine):
        adapter = _adapter(ctx, channel)
        if adapter is None:
            continue
        await refresh_catalogue(ctx.engine, ctx.clock.now(), channel, adapter)
        externals = await asyncio.to_thread(_active_customers, ctx.engine)
        stats = SyncStats(catalogue_refreshed=True)
        for start in range(0, len(externals), RECONCILE_PAGE):
            page = externals[start : start + RECONCILE_PAGE]
            stats.add(await sync_customers(ctx.engine, ctx.clock.now(), adapter, page))
            log.info(
                "WeCom reconcile %s: %d/%d customers checked, %d tags added, %d removed, "
                "%d written back, %d errors",
                channel,
                min(start + RECONCILE_PAGE, len(externals)),
                len(externals),
                stats.tags_added,
                stats.tags_removed,
                stats.written_back,
                stats.errors,
                extra={"channel": channel},
            )
        await asyncio.to_thread(_save_state, ctx.engine, channel, reconciled_at=ctx.clock.now())
        total.add(stats)
    return total


JOBS = (
    Job(JOB_TAG_SYNC, lambda s: 10.0, sync_edited),
    Job(JOB_RECONCILE, lambda s: 24 * 3600.0, reconcile),
)
