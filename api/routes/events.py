"""How audience data comes in: events, accounts, the CSV contact import."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, File, HTTPException, Query, Request, UploadFile
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api import auth
from api.deps import ClockDep, SessionDep, SettingsDep
from audiences import importer
from audiences.import_options import OPTION_HELP, ImportOptions
from audiences.models import Account, InboxEvent, InboxStatus
from scheduler.flows import changes

router = APIRouter(prefix="/api", tags=["audience events"])

EVENT_EXAMPLES = [
    {
        "kind": "friend_added",
        "id": "wecom-add-001",
        "account": "staff_xiaowang",
        "external_id": "wmABC",
        "name": "张三",
        "occurred_at": "2027-03-01T21:30:00+08:00",
    },
    [
        {"kind": "tag_added", "account": "staff_xiaowang", "external_id": "wmABC", "tags": ["vip"]},
        {
            "kind": "group_created",
            "external_id": "wrXYZ",
            "name": "徐汇店福利群",
            "tags": ["store"],
        },
    ],
]


@router.post("/events")
def post_events(
    request: Request,
    session: SessionDep,
    clock: ClockDep,
    body: Any = Body(examples=EVENT_EXAMPLES),
) -> dict[str, Any]:
    """Apply one event (an object) or a batch (an array), all or nothing.

    Kinds: friend_added, friend_deleted, contact_updated, tag_added, tag_removed,
    group_created, group_updated, group_dissolved, group_member_joined,
    group_member_left. An event with an ``id`` already applied is a duplicate
    and changes nothing. Any bad event → 422 with ``detail.errors`` (index,
    field, reason) and ``detail.results`` per item; nothing is applied.
    """
    items = body if isinstance(body, list) else [body]
    if not items:
        raise HTTPException(422, detail={"message": "the batch is empty", "errors": []})
    try:
        report = changes.apply_events(session, items, clock.now(), source="api")
    except changes.EventsRejected as exc:
        session.rollback()
        raise HTTPException(422, detail=exc.report()) from None
    # The audit entry goes in the batch's own transaction: at thousands of events
    # a second, a separate write per request would contend for the write lock.
    auth.record(
        request,
        session,
        getattr(request.state, "principal", None),
        "api.post",
        object_kind="events",
        summary=f"POST /api/events ({len(items)} events, {report.applied} applied)",
    )
    return report.as_dict()


class InboxOut(BaseModel):
    id: int
    source: str
    kind: str
    status: str
    received_at: datetime
    applied_at: datetime | None
    error: str | None
    payload: dict[str, Any]


@router.get("/events/inbox", response_model=list[InboxOut])
def list_inbox(
    session: SessionDep,
    status: str | None = Query(None, description=" / ".join(InboxStatus.ALL)),
    limit: int = Query(50, ge=1, le=1000),
) -> Any:
    """The latest received events (e.g. WeCom callbacks that failed, and why)."""
    stmt = select(InboxEvent).order_by(col(InboxEvent.id).desc()).limit(limit)
    if status:
        stmt = stmt.where(InboxEvent.status == status)
    return session.exec(stmt).all()


@router.post("/events/inbox/apply")
def apply_inbox(session: SessionDep, clock: ClockDep) -> dict[str, Any]:
    """Apply stored events still pending (normally done right after a callback).
    One that cannot be applied is marked failed with the reason; the rest go on."""
    result = changes.apply_pending(session, clock.now())
    return {
        "applied": result.applied,
        "failed": result.failed,
        "ignored": result.ignored,
        "enrolled": result.reaction.enrolled,
        "exited": result.reaction.exited,
        "failed_templates": result.reaction.failures,
    }


class AccountIn(BaseModel):
    external_id: str = Field(min_length=1, max_length=128, description="e.g. the WeCom userid")
    name: str = Field("", max_length=200)
    channel: str | None = Field(None, max_length=100)


class AccountOut(BaseModel):
    id: int
    external_id: str
    name: str
    channel: str | None


@router.post("/accounts", response_model=AccountOut, status_code=201)
def upsert_account(body: AccountIn, session: SessionDep) -> Any:
    """Register (or rename) a staff or bot account that owns friends and groups."""
    account = session.exec(select(Account).where(Account.external_id == body.external_id)).first()
    if account is None:
        account = Account(external_id=body.external_id)
    account.name = body.name or account.name or body.external_id
    account.channel = body.channel or account.channel
    session.add(account)
    session.flush()
    return account


@router.get("/accounts", response_model=list[AccountOut])
def list_accounts(session: SessionDep) -> Any:
    return session.exec(select(Account).order_by(col(Account.id))).all()


@router.post("/contacts/import")
def import_contacts(
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    file: UploadFile = File(description="CSV, UTF-8 with or without BOM (or see encoding)"),
    dry_run: bool = Query(False, description=OPTION_HELP["dry_run"]),
    allow_partial: bool = Query(False, description=OPTION_HELP["allow_partial"]),
    create_accounts: bool = Query(False, description=OPTION_HELP["create_accounts"]),
    timezone: str | None = Query(None, description=OPTION_HELP["timezone"]),
    encoding: str = Query("utf-8", max_length=40, description=OPTION_HELP["encoding"]),
) -> Any:
    """Import contacts from a CSV file. 422 with per-row errors (line, field,
    reason) when nothing was imported because of them."""
    options = ImportOptions(
        timezone=timezone or settings.default_timezone,
        encoding=encoding,
        dry_run=dry_run,
        allow_partial=allow_partial,
        create_accounts=create_accounts,
    )
    data = file.file.read(importer.MAX_BYTES + 1)
    report = changes.import_file(session, data, clock.now(), options)
    if not report.applied:
        session.rollback()
    if report.errors and not report.applied and not dry_run:
        whole_file = [e.reason for e in report.errors if e.field == "file"]
        if whole_file:
            message = f"the file cannot be imported: {whole_file[0]}"
        else:
            message = (
                f"{len({e.line for e in report.errors})} of {report.rows} rows have errors; "
                "nothing was imported (allow_partial=true imports the good rows)"
            )
        raise HTTPException(422, detail={"message": message, **report.as_dict()})
    return report.as_dict()
