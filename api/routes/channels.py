"""Channel instances (secrets masked), their policies, breakers and open tasks."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlmodel import Session

from api.deps import ClockDep, EngineDep, SessionDep, SettingsDep
from channels import service as channels_service
from channels.base import AdapterContext, ChannelError
from channels.breaker import BreakerView, CircuitBreakers
from channels.models import ChannelInstance
from scheduler.outbox import tasks as tasks_service
from sopbot.db import reader
from sopbot.settings import Settings

router = APIRouter(prefix="/api/channels", tags=["channels"])


BreakerOut = BreakerView  # the breaker as the service reports it


class ChannelOut(BaseModel):
    id: int
    name: str
    adapter: str
    enabled: bool
    config: dict[str, Any] = Field(description="secrets read **********")
    policy: dict[str, Any]
    breaker: BreakerOut
    problem: str | None = Field(None, description="why the stored config cannot be used")


class ConnectionCheckOut(BaseModel):
    ok: bool
    checked: bool = Field(description="false: only the config was validated")
    detail: str


class PauseIn(BaseModel):
    minutes: float = Field(gt=0, le=7 * 24 * 60)
    reason: str = Field("paused by an operator", max_length=500)


class TaskOut(BaseModel):
    id: int
    channel: str
    provider_task_id: str
    sender: str
    state: str
    awaiting: int
    confirmed: int
    failed: int
    polls: int
    created_at: datetime
    next_poll_at: datetime
    last_error: str | None


def _breakers(engine: Any) -> CircuitBreakers:
    return CircuitBreakers(engine, owner="api")


def _out(
    session: Session, row: ChannelInstance, settings: Settings, breakers: CircuitBreakers
) -> ChannelOut:
    policy = channels_service.get_policy(session, row.name, settings)
    problem = None
    try:
        config = channels_service.masked_config(row.adapter, row.config)
    except ChannelError as exc:
        # What can be shown of a config that no longer validates: secrets masked.
        config, problem = channels_service.mask_declared(row.adapter, row.config), str(exc)
    return ChannelOut(
        id=row.id,  # type: ignore[arg-type]
        name=row.name,
        adapter=row.adapter,
        enabled=row.enabled,
        config=config,
        policy=policy.as_dict(),
        breaker=breakers.view(session, row.name, policy.breaker),
        problem=problem,
    )


def _forget(request: Request, name: str) -> None:
    # This process's live adapter must pick up the new config.
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.channels.forget(name)


@router.get("", response_model=list[ChannelOut])
def list_channels(session: SessionDep, settings: SettingsDep, engine: EngineDep) -> Any:
    breakers = _breakers(engine)
    return [
        _out(session, row, settings, breakers) for row in channels_service.list_instances(session)
    ]


@router.get("/adapters")
def list_adapters() -> list[dict[str, Any]]:
    """Registered adapters: capabilities and config schema (secret fields are writeOnly)."""
    return channels_service.adapter_catalog()


@router.get("/tasks", response_model=list[TaskOut])
def list_open_tasks(
    engine: EngineDep, channel: str | None = None, limit: int = Query(100, ge=1, le=1000)
) -> Any:
    """Mass-send tasks still awaiting staff confirmation (task mode)."""
    with Session(reader(engine)) as session:
        rows = tasks_service.open_tasks(session, channel, limit)
    return [
        TaskOut.model_validate({**row.model_dump(), "awaiting": len(row.delivery_ids)})
        for row in rows
    ]


@router.post("", response_model=ChannelOut, status_code=201)
def create_channel(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    engine: EngineDep,
    data: channels_service.ChannelInstanceIn,
) -> Any:
    row = channels_service.create_instance(session, data)
    _forget(request, row.name)
    return _out(session, row, settings, _breakers(engine))


@router.get("/{name}", response_model=ChannelOut)
def get_channel(name: str, session: SessionDep, settings: SettingsDep, engine: EngineDep) -> Any:
    row = channels_service.get_instance(session, name)
    return _out(session, row, settings, _breakers(engine))


@router.patch("/{name}", response_model=ChannelOut)
def update_channel(
    name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    engine: EngineDep,
    patch: channels_service.ChannelInstanceUpdate,
) -> Any:
    row = channels_service.update_instance(session, name, patch)
    _forget(request, name)
    return _out(session, row, settings, _breakers(engine))


@router.post("/{name}/test", response_model=ConnectionCheckOut)
async def test_channel(
    name: str, request: Request, engine: EngineDep, clock: ClockDep
) -> ConnectionCheckOut:
    """Check the stored config and, where possible without sending, the platform."""
    context = AdapterContext(
        http=request.app.state.http, engine=engine, clock=clock, instance_name=name
    )
    check = await channels_service.test_connection(context)
    return ConnectionCheckOut(ok=check.ok, checked=check.checked, detail=check.detail)


@router.get("/{name}/breaker", response_model=BreakerOut)
def get_breaker(name: str, engine: EngineDep, settings: SettingsDep) -> BreakerOut:
    with Session(reader(engine)) as session:
        channels_service.get_instance(session, name)
        policy = channels_service.get_policy(session, name, settings)
        return _breakers(engine).view(session, name, policy.breaker)


@router.post("/{name}/breaker/reset", response_model=BreakerOut)
def reset_breaker(
    name: str, engine: EngineDep, settings: SettingsDep, clock: ClockDep
) -> BreakerOut:
    """Close the breaker by hand: the channel was fixed, send again now."""
    with Session(reader(engine)) as session:
        channels_service.get_instance(session, name)
    _breakers(engine).reset(name, clock.now())
    return get_breaker(name, engine, settings)


@router.post("/{name}/breaker/open", response_model=BreakerOut)
def open_breaker(
    name: str, body: PauseIn, engine: EngineDep, settings: SettingsDep, clock: ClockDep
) -> BreakerOut:
    """Pause a channel for a while (deliveries wait, they are not failed)."""
    with Session(reader(engine)) as session:
        channels_service.get_instance(session, name)
    now = clock.now()
    _breakers(engine).trip(name, now, now + timedelta(minutes=body.minutes), body.reason)
    return get_breaker(name, engine, settings)
