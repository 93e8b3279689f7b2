"""Operator UI: channels (configure, test; secrets write-only), workspace
settings, the audit log (users, my account and API tokens: ``ui_users``)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from api import auth, workspace_settings
from api.auth import Admin, Reader
from api.deps import ClockDep, EngineDep, FormDep, SessionDep, SettingsDep
from api.users import audit
from api.users import service as users_service
from api.views import error_text, redirect, render, translator
from channels import service as channels_service
from channels.base import AdapterContext, ChannelError
from channels.breaker import CircuitBreakers
from sopbot.db import reader

router = APIRouter(include_in_schema=False)


# -- channels ---------------------------------------------------------------------------


def _channel_rows(session: Session, engine: Any, settings: Any) -> list[dict[str, Any]]:
    breakers = CircuitBreakers(engine, owner="ui")
    rows = []
    for row in channels_service.list_instances(session):
        policy = channels_service.get_policy(session, row.name, settings)
        rows.append(
            {
                "row": row,
                "breaker": breakers.view(session, row.name, policy.breaker),
                "policy": policy.as_dict(),
            }
        )
    return rows


@router.get("/channels", response_class=HTMLResponse)
def channels_page(
    request: Request,
    me: Reader,
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
    error: str = "",
) -> Response:
    return render(
        request,
        "ui/channels.html",
        {
            "rows": _channel_rows(session, engine, settings),
            "adapters": [a for a in channels_service.adapter_catalog() if a.get("available")],
            "flash_error": error or None,
        },
    )


@router.post("/channels")
def create_channel(
    request: Request,
    form: FormDep,
    me: Admin,
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
) -> Response:
    try:
        config = json.loads(str(form.get("config") or "{}") or "{}")
        data = channels_service.ChannelInstanceIn(
            name=str(form.get("name") or "").strip(),
            adapter=str(form.get("adapter") or ""),
            config=config,
        )
        with session.begin_nested():
            row = channels_service.create_instance(session, data)
    except (json.JSONDecodeError, ValidationError, ChannelError) as exc:
        return render(
            request,
            "ui/channels.html",
            {
                "rows": _channel_rows(session, engine, settings),
                "adapters": [a for a in channels_service.adapter_catalog() if a.get("available")],
                "flash_error": error_text(request, exc),
                "new": {**dict(form), "config": _echo(str(form.get("adapter") or ""), form)},
            },
            status_code=422,
        )
    auth.record(
        request,
        session,
        me,
        "channel.create",
        object_kind="channel",
        object_id=row.name,
        summary=row.adapter,
    )
    return redirect(request, f"/channels/{row.name}?done=created")


def _echo(adapter: str, form: Any) -> str:
    """A submitted config shown back after an error: secrets stay write-only,
    even the ones just typed (what cannot be parsed is not shown at all)."""
    try:
        config = json.loads(str(form.get("config") or "{}") or "{}")
    except json.JSONDecodeError:
        return "{}"
    masked = channels_service.mask_declared(adapter, config)
    return json.dumps(masked, ensure_ascii=False, indent=2)


def _input_kind(prop: dict[str, Any]) -> str:
    """How the channel form asks for a config field, from its JSON schema."""
    types = {prop.get("type")} | {o.get("type") for o in prop.get("anyOf", [])}
    types.discard(None)
    types.discard("null")
    if types & {"object", "array"} or not types:
        return "json"  # secrets inside stay masked and kept
    if channels_service.is_secret(prop):
        return "password"
    if types == {"boolean"}:
        return "checkbox"
    if types <= {"integer", "number"} and types:
        return "number"
    if types == {"string"}:
        return "text"
    return "json"


def _field_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def _config_from_fields(adapter: str, form: Any) -> dict[str, Any]:
    """The config the field-by-field form describes; an empty secret keeps the
    stored one (it is sent as the mask, which the save keeps)."""
    schema = channels_service.adapter_class(adapter).config_model.model_json_schema()
    config: dict[str, Any] = {}
    for key, prop in schema.get("properties", {}).items():
        kind = _input_kind(prop)
        raw = form.get(f"cfg.{key}")
        if kind == "checkbox":
            config[key] = raw == "on"
            continue
        text = str(raw or "").strip()
        if kind == "password":
            config[key] = text or channels_service.MASK
        elif not text:
            continue
        elif kind == "number":
            try:
                config[key] = int(text) if text.lstrip("-").isdigit() else float(text)
            except ValueError:
                raise ValueError(f"{key}: {text!r} is not a number") from None
        elif kind == "json":
            config[key] = json.loads(text)
        else:
            config[key] = text
    return config


def _channel_page(
    request: Request, session: Session, engine: Any, settings: Any, name: str, **extra: Any
) -> HTMLResponse:
    row = channels_service.get_instance(session, name)
    policy = channels_service.get_policy(session, name, settings)
    try:
        config = channels_service.masked_config(row.adapter, row.config)
        problem = None
    except ChannelError as exc:
        # What can be shown of a config that no longer validates: secrets masked.
        config, problem = (
            channels_service.mask_declared(row.adapter, row.config),
            error_text(request, exc),
        )
    schema: dict[str, Any] = next(
        (
            a["config_schema"]
            for a in channels_service.adapter_catalog()
            if a["name"] == row.adapter
        ),
        {},
    )
    fields = [
        {
            "name": key,
            "type": prop.get("type")
            or "/".join(
                str(o.get("type")) for o in prop.get("anyOf", []) if o.get("type") != "null"
            ),
            "secret": channels_service.is_secret(prop),
            "description": prop.get("description", ""),
            "required": key in schema.get("required", []),
            "input": _input_kind(prop),
            "value": _field_value(config.get(key) if isinstance(config, dict) else None),
        }
        for key, prop in schema.get("properties", {}).items()
    ]
    context = {
        "row": row,
        "config_json": extra.pop("config_json", None)
        or json.dumps(config, ensure_ascii=False, indent=2),
        "problem": problem,
        "policy": policy.as_dict(),
        "breaker": CircuitBreakers(engine, owner="ui").view(session, name, policy.breaker),
        "fields": fields,
        **extra,
    }
    return render(request, "ui/channel_detail.html", context, status_code=extra.get("status", 200))


@router.get("/channels/{name}", response_class=HTMLResponse)
def channel_page(
    name: str,
    request: Request,
    me: Reader,
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
    done: str = "",
) -> Response:
    _ = translator(request)
    messages = {
        "created": _("Channel created."),
        "saved": _("Saved."),
        "reset": _("Breaker closed."),
    }
    return _channel_page(request, session, engine, settings, name, flash=messages.get(done))


def _number(value: Any, cast: Any) -> Any:
    text = str(value or "").strip()
    return cast(text) if text else None


@router.post("/channels/{name}")
def save_channel(
    name: str,
    request: Request,
    form: FormDep,
    me: Admin,
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
) -> Response:
    """Save config (masked secrets are kept), enabled and the sending policy."""
    raw = str(form.get("config") or "{}")
    try:
        if form.get("config_form"):
            adapter = channels_service.get_instance(session, name).adapter
            config = _config_from_fields(adapter, form)
        else:
            config = json.loads(raw or "{}")
        if not isinstance(config, dict):
            raise ValueError("the config must be a JSON object")
        policy = channels_service.ChannelPolicyIn(
            rate_per_second=_number(form.get("rate_per_second"), float),
            burst=_number(form.get("burst"), int),
            breaker_threshold=_number(form.get("breaker_threshold"), int),
            breaker_cooldown_seconds=_number(form.get("breaker_cooldown_seconds"), float),
            max_attempts=_number(form.get("max_attempts"), int),
        )
        patch = channels_service.ChannelInstanceUpdate(
            config=config, enabled=form.get("enabled") == "on", policy=policy
        )
        with session.begin_nested():
            channels_service.update_instance(session, name, patch)
    except (ValueError, ValidationError, ChannelError) as exc:
        return _channel_page(
            request,
            session,
            engine,
            settings,
            name,
            flash_error=error_text(request, exc),
            config_json=_echo(channels_service.get_instance(session, name).adapter, form),
            status=422,
        )
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.channels.forget(name)
    auth.record(
        request,
        session,
        me,
        "channel.update",
        object_kind="channel",
        object_id=name,
        summary=", ".join(sorted(config)),
    )
    return redirect(request, f"/channels/{name}?done=saved")


@router.post("/channels/{name}/test", response_class=HTMLResponse)
async def test_channel(
    name: str,
    request: Request,
    me: Admin,
    engine: EngineDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> Response:
    context = AdapterContext(
        http=request.app.state.http, engine=engine, clock=clock, instance_name=name
    )
    check = await channels_service.test_connection(context)
    with Session(reader(engine)) as session:
        return _channel_page(request, session, engine, settings, name, check=check)


@router.post("/channels/{name}/breaker/reset")
def reset_breaker(
    name: str, request: Request, me: Admin, session: SessionDep, engine: EngineDep, clock: ClockDep
) -> Response:
    with Session(reader(engine)) as check:
        channels_service.get_instance(check, name)
    # The reset is its own write transaction: taken before this request's
    # session writes (on SQLite that session would hold the write lock and
    # the reset would wait out the busy timeout, then fail).
    CircuitBreakers(engine, owner="ui").reset(name, clock.now())
    auth.record(
        request, session, me, "channel.breaker_reset", object_kind="channel", object_id=name
    )
    return redirect(request, f"/channels/{name}?done=reset")


# -- settings and audit ----------------------------------------------------------------------


def _settings_page(
    request: Request, session: Session, settings: Any, status_code: int = 200, **extra: Any
) -> Response:
    quiet = (settings.quiet_hours or "").split("-")
    form = {
        "default_timezone": settings.default_timezone,
        "quiet_start": quiet[0] if len(quiet) == 2 else "",
        "quiet_end": quiet[1] if len(quiet) == 2 else "",
        "quiet_hours_policy": settings.quiet_hours_policy,
        "frequency_cap": settings.frequency_cap or "",
        "frequency_cap_policy": settings.frequency_cap_policy,
    }
    return render(
        request,
        "ui/settings.html",
        {
            "require_approval": users_service.requires_approval(session, settings.require_approval),
            "settings": settings,
            "form": {**form, **extra.pop("form", {})},
            "common_zones": workspace_settings.COMMON_ZONES,
            "all_zones": workspace_settings.all_zones(),
            "cap_presets": workspace_settings.CAP_PRESETS,
            "policies": workspace_settings.POLICIES,
            "errors": {},
            **extra,
        },
        status_code=status_code,
    )


@router.get("/settings", response_class=HTMLResponse)
def settings_page(
    request: Request, me: Admin, session: SessionDep, settings: SettingsDep, done: str = ""
) -> Response:
    _ = translator(request)
    return _settings_page(request, session, settings, flash=_("Saved.") if done else None)


@router.post("/settings")
def save_settings(
    request: Request,
    form: FormDep,
    me: Admin,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
) -> Response:
    value = form.get("require_approval") == "on"
    raw = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    values, errors = workspace_settings.check(raw) if "default_timezone" in raw else ({}, {})
    if errors:
        _ = translator(request)
        return _settings_page(
            request,
            session,
            settings,
            status_code=422,
            form=raw,
            errors={k: _(v) for k, v in errors.items()},
        )
    users_service.set_setting(session, users_service.REQUIRE_APPROVAL, value, clock.now())
    workspace_settings.save(session, values, clock.now())
    workspace_settings.apply(request.app, session)
    auth.record(
        request,
        session,
        me,
        "settings.update",
        object_kind="settings",
        summary=f"require_approval={value}",
        detail=values or None,
    )
    return redirect(request, "/settings?done=saved")


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    me: Reader,
    session: SessionDep,
    object_kind: str = "",
    before_id: int | None = None,
) -> Response:
    entries = audit.entries(
        session, object_kind=object_kind or None, before_id=before_id, limit=100
    )
    return render(
        request,
        "ui/audit.html",
        {
            "entries": entries,
            "object_kind": object_kind,
            "next_before": entries[-1].id if len(entries) == 100 else None,
        },
    )
