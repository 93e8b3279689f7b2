"""The delivery log (first cut) and the mock channel's inbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel
from sqlmodel import col, select

from api.deps import SessionDep
from channels.models import MockMessage
from scheduler.models import Delivery, DeliveryStatus

router = APIRouter(prefix="/api", tags=["deliveries"])


class DeliveryOut(BaseModel):
    id: int
    template_id: int
    version_id: int
    touchpoint_id: int
    occurrence: int
    target_kind: str
    target_id: int
    channel: str
    mode: str
    status: str
    reason: str | None
    due_at: datetime
    run_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    attempts: int
    provider_message_id: str | None
    rendered: list[dict[str, Any]] | None


@router.get("/deliveries", response_model=list[DeliveryOut])
def list_deliveries(
    session: SessionDep,
    template_id: int | None = None,
    status: str | None = Query(None, description="one of " + ", ".join(DeliveryStatus.ALL)),
    limit: int = Query(100, ge=1, le=1000),
) -> Any:
    if status is not None and status not in DeliveryStatus.ALL:
        raise HTTPException(
            422, f"status {status!r} is not one of: {', '.join(DeliveryStatus.ALL)}"
        )
    stmt = select(Delivery).order_by(col(Delivery.due_at).desc(), col(Delivery.id).desc())
    if template_id is not None:
        stmt = stmt.where(Delivery.template_id == template_id)
    if status is not None:
        stmt = stmt.where(Delivery.status == status)
    return session.exec(stmt.limit(limit)).all()


class MockMessageOut(BaseModel):
    id: int
    instance: str
    delivery_id: int
    target_kind: str
    target_external_id: str
    mode: str
    parts: list[dict[str, Any]]
    received_at: datetime


@router.get("/mock/messages", response_model=list[MockMessageOut], tags=["channels"])
def mock_messages(session: SessionDep, limit: int = Query(100, ge=1, le=1000)) -> Any:
    """What the mock channel received, newest first (the demo's "phone")."""
    return session.exec(select(MockMessage).order_by(col(MockMessage.id).desc()).limit(limit)).all()
