"""Contacts and group chats (the minimal way in; events arrive in audiences)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import ClockDep, SessionDep
from audiences import service as audiences_service
from audiences.schemas import ContactIn, GroupIn

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


@router.post("/contacts", response_model=ContactOut, status_code=201)
def add_contact(body: ContactIn, session: SessionDep, clock: ClockDep) -> Any:
    """Add (or update) a contact; ``joined_at`` defaults to now."""
    return audiences_service.upsert_contact(session, body, clock.now())


@router.get("/contacts/{key}", response_model=ContactOut)
def get_contact(key: str, session: SessionDep) -> Any:
    return audiences_service.find_contact(session, key)


@router.post("/groups", response_model=GroupOut, status_code=201)
def add_group(body: GroupIn, session: SessionDep, clock: ClockDep) -> Any:
    return audiences_service.upsert_group(session, body, clock.now())


@router.get("/groups/{key}", response_model=GroupOut)
def get_group(key: str, session: SessionDep) -> Any:
    return audiences_service.find_group(session, key)
