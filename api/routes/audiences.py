"""Contacts and group chats (the minimal way in; events arrive in audiences)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel
from sqlmodel import Session

from api import auth
from api.auth import Author
from api.deps import ClockDep, SessionDep
from audiences import search as audiences_search
from audiences import service as audiences_service
from audiences.schemas import ContactIn, GroupIn
from scheduler.flows import changes
from scheduler.flows import targets as scheduler_targets

router = APIRouter(prefix="/api", tags=["audiences"])


class ContactOut(BaseModel):
    id: int
    external_id: str
    account_id: int | None
    name: str
    joined_at: datetime
    status: str
    attributes: dict[str, Any]


class GroupOut(BaseModel):
    id: int
    external_id: str
    owner_account_id: int | None
    name: str
    member_count: int
    joined_at: datetime
    status: str


class SearchOut(BaseModel):
    total: int
    rows: list[dict[str, Any]]


def _refused(exc: changes.EventsRejected) -> HTTPException:
    """A body whose values an audience event would refuse: 422, field by field."""
    return HTTPException(
        422,
        detail={
            "message": "; ".join(f"{e.loc}: {e.msg}" for e in exc.errors),
            "errors": [{"loc": e.loc, "msg": e.msg} for e in exc.errors],
        },
    )


@router.get("/contacts", response_model=SearchOut)
def search_contacts(
    session: SessionDep,
    q: str | None = Query(None, description="part of the name or external id"),
    tag: str | None = Query(None, description="carrying this tag"),
    status: str | None = Query(None, description="active, deleted, blocked, unsubscribed"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> Any:
    """Find contacts (newest first) with their tags and owning account."""
    return audiences_search.search(
        session, "contact", q=q, tag=tag, status=status, limit=limit, offset=offset
    )


@router.get("/groups", response_model=SearchOut)
def search_groups(
    session: SessionDep,
    q: str | None = Query(None, description="part of the name or external id"),
    tag: str | None = Query(None, description="carrying this tag"),
    status: str | None = Query(None, description="active, dissolved"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> Any:
    """Find group chats (newest first) with their tags and owner account."""
    return audiences_search.search(
        session, "group", q=q, tag=tag, status=status, limit=limit, offset=offset
    )


@router.get("/contacts/{key}/sops")
def contact_sops(key: str, session: SessionDep) -> list[dict[str, Any]]:
    """The SOPs a contact is (or was) in, with the version and delivery counts."""
    contact = audiences_service.find_contact(session, key)
    return scheduler_targets.enrollments_of(session, "contact", contact.id)  # type: ignore[arg-type]


@router.get("/groups/{key}/sops")
def group_sops(key: str, session: SessionDep) -> list[dict[str, Any]]:
    group = audiences_service.find_group(session, key)
    return scheduler_targets.enrollments_of(session, "group", group.id)  # type: ignore[arg-type]


def _upsert(
    request: Request,
    session: Session,
    me: auth.Principal,
    kind: str,
    upsert: Callable[[Session, Any, datetime], tuple[Any, Any]],
    body: ContactIn | GroupIn,
    now: datetime,
) -> Any:
    """One contact or group written through the audience write path (which runs
    the SOP reactions), audited as ``<kind>.upsert``."""
    try:
        row, _ = upsert(session, body, now)
    except changes.EventsRejected as exc:
        raise _refused(exc) from None
    auth.record(
        request,
        session,
        me,
        f"{kind}.upsert",
        object_kind=kind,
        object_id=row.id,
        summary=row.external_id,
    )
    return row


@router.post("/contacts", response_model=ContactOut, status_code=201)
def add_contact(
    body: ContactIn, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> Any:
    """Add (or update) a contact; ``joined_at`` defaults to now. Its tags start
    tagged SOPs exactly as a ``tag_added`` event would."""
    return _upsert(request, session, me, "contact", changes.upsert_contact, body, clock.now())


@router.get("/contacts/{key}", response_model=ContactOut)
def get_contact(key: str, session: SessionDep) -> Any:
    return audiences_service.find_contact(session, key)


@router.post("/groups", response_model=GroupOut, status_code=201)
def add_group(
    body: GroupIn, request: Request, me: Author, session: SessionDep, clock: ClockDep
) -> Any:
    """Add (or update) a group chat; its tags start group SOPs."""
    return _upsert(request, session, me, "group", changes.upsert_group, body, clock.now())


@router.get("/groups/{key}", response_model=GroupOut)
def get_group(key: str, session: SessionDep) -> Any:
    return audiences_service.find_group(session, key)
