"""Channel instances: create, update, list, test the connection, and the
policies (rate limit, breaker, attempts) sopbot drives each one with.

Secrets never leave this module in clear: every config the API sees goes through
:func:`masked_config`, where ``SecretStr`` fields read ``**********``. Sending a
masked value back in an update keeps the stored secret, so a UI can round-trip
a config it was shown without wiping credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from channels.base import AdapterContext, ChannelError, connection_checker
from channels.breaker import BreakerConfig
from channels.http import redact_url
from channels.models import ChannelInstance, ChannelPolicy
from channels.ratelimit import default_burst
from channels.registry import adapter_class, available_adapters, validate_config
from sopbot.db import reader
from sopbot.settings import Settings

MASK = "**********"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


class ChannelNotFound(LookupError):
    """No channel instance has that name."""


# -- shapes ------------------------------------------------------------------------


class ChannelPolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_per_second: float | None = Field(None, gt=0, description="None: no rate limit")
    burst: int | None = Field(None, ge=1, description="bucket size (default: ceil(rate))")
    breaker_threshold: int | None = Field(None, ge=1, le=10_000)
    breaker_cooldown_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    max_attempts: int | None = Field(None, ge=1, le=100)


class ChannelInstanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="e.g. wecom-corp-a")
    adapter: str = Field(min_length=1, description="mock, webhook, wecom, wecom_group_bot, ...")
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    policy: ChannelPolicyIn | None = None


class ChannelInstanceUpdate(BaseModel):
    """Only what is given changes. ``config`` keys replace stored ones; a value of
    ``**********`` keeps the stored secret."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = None
    enabled: bool | None = None
    policy: ChannelPolicyIn | None = None


@dataclass(frozen=True)
class EffectivePolicy:
    """A channel's policy with workspace defaults filled in."""

    rate_per_second: float | None
    burst: int | None
    breaker: BreakerConfig
    max_attempts: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate_per_second": self.rate_per_second,
            "burst": self.burst,
            "breaker_threshold": self.breaker.threshold,
            "breaker_cooldown_seconds": self.breaker.cooldown.total_seconds(),
            "max_attempts": self.max_attempts,
        }


@dataclass
class ConnectionCheck:
    ok: bool
    detail: str
    checked: bool = True  # False: the adapter has no live check, only the config was validated
    extra: dict[str, Any] = field(default_factory=dict)


# -- policies ------------------------------------------------------------------------


def effective_policy(row: ChannelPolicy | None, settings: Settings) -> EffectivePolicy:
    rate = row.rate_per_second if row else None
    burst = (row.burst if row and row.burst else default_burst(rate)) if rate else None
    threshold = (row.breaker_threshold if row else None) or settings.breaker_threshold
    cooldown = (row.breaker_cooldown_seconds if row else None) or settings.breaker_cooldown_seconds
    return EffectivePolicy(
        rate_per_second=rate,
        burst=burst,
        breaker=BreakerConfig(threshold, timedelta(seconds=cooldown)),
        max_attempts=(row.max_attempts if row else None) or settings.max_attempts,
    )


def effective_policies(
    session: Session, names: Iterable[str], settings: Settings
) -> dict[str, EffectivePolicy]:
    """Policies of many instances in one query (missing rows: workspace defaults)."""
    names = sorted(set(names))
    rows = {
        p.instance: p
        for p in session.exec(
            select(ChannelPolicy).where(col(ChannelPolicy.instance).in_(names))
        ).all()
    }
    return {name: effective_policy(rows.get(name), settings) for name in names}


def _save_policy(session: Session, instance: str, policy: ChannelPolicyIn) -> None:
    row = session.get(ChannelPolicy, instance) or ChannelPolicy(instance=instance)
    for key, value in policy.model_dump(exclude_unset=True).items():
        setattr(row, key, value)
    session.add(row)


# -- secrets -------------------------------------------------------------------------


def masked_config(adapter: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config as the API may show it: defaults filled in, secrets masked."""
    shown: dict[str, Any] = validate_config(adapter, config).model_dump(mode="json")
    for name in _url_fields(adapter):
        if isinstance(shown.get(name), str):
            shown[name] = _redacted_url(shown[name])
    return shown


def _url_fields(adapter: str) -> set[str]:
    schema = adapter_class(adapter).config_model.model_json_schema()
    return {n for n, prop in schema.get("properties", {}).items() if prop.get("url_credentials")}


def _redacted_url(value: str) -> str:
    try:
        return redact_url(httpx.URL(value))
    except httpx.InvalidURL:
        return MASK


def is_secret(prop: dict[str, Any]) -> bool:
    """Whether a config field's JSON schema declares it a secret: ``SecretStr``
    itself, in a list, as dict values, or optional (pydantic marks them
    ``writeOnly``), or a field marked ``json_schema_extra={"secret": True}``."""
    options = [
        prop,
        prop.get("items") or {},
        prop.get("additionalProperties")
        if isinstance(prop.get("additionalProperties"), dict)
        else {},
        *prop.get("anyOf", []),
    ]
    return any(o.get("writeOnly") or o.get("secret") for o in options)


def secret_fields(adapter: str) -> set[str]:
    """The config fields of ``adapter`` declared secret."""
    schema = adapter_class(adapter).config_model.model_json_schema()
    return {name for name, prop in schema.get("properties", {}).items() if is_secret(prop)}


def mask_declared(adapter: str, config: Any) -> Any:
    """Mask a raw config (valid or not) by its adapter's declaration: values of
    secret fields, and of fields the adapter does not declare at all (they may
    be anything), read ``**********``. For echoing what someone submitted."""
    if not isinstance(config, dict):
        return {}
    try:
        schema = adapter_class(adapter).config_model.model_json_schema()
    except ChannelError:
        return {key: _masked(value) for key, value in config.items()}
    known = schema.get("properties", {})

    def shown(key: str, value: Any) -> Any:
        if key not in known or is_secret(known[key]):
            return _masked(value)
        if known[key].get("url_credentials") and isinstance(value, str):
            return _redacted_url(value)
        return value

    return {key: shown(key, value) for key, value in config.items()}


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return MASK if value is not None else None


def _unmask(new: Any, stored: Any) -> Any:
    if new == MASK:
        return stored
    if isinstance(new, list) and isinstance(stored, list) and len(new) == len(stored):
        return [_unmask(n, s) for n, s in zip(new, stored, strict=True)]
    if isinstance(new, dict) and isinstance(stored, dict):
        return {k: _unmask(v, stored.get(k)) for k, v in new.items()}
    return new


def _merge_config(adapter: str, stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    url_fields = _url_fields(adapter)
    try:
        shown = masked_config(adapter, stored)
    except ChannelError:
        shown = mask_declared(adapter, stored)
    merged = dict(stored)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)  # back to the adapter's default
        elif key in url_fields and key in stored and value == shown.get(key):
            merged[key] = stored[key]  # the URL as shown, credentials masked: keep it
        else:
            merged[key] = _unmask(value, stored.get(key))
    return merged


# -- CRUD ----------------------------------------------------------------------------


def list_instances(session: Session) -> list[ChannelInstance]:
    return list(session.exec(select(ChannelInstance).order_by(col(ChannelInstance.name))).all())


def instance_names(session: Session, adapters: Sequence[str] | None = None) -> list[str]:
    """The channel instances' names, in order (what a channel filter offers);
    only those of ``adapters`` when given."""
    stmt = select(ChannelInstance.name).order_by(col(ChannelInstance.name))
    if adapters is not None:
        stmt = stmt.where(col(ChannelInstance.adapter).in_(list(adapters)))
    return list(session.exec(stmt).all())


def get_instance(session: Session, name: str) -> ChannelInstance:
    row = session.exec(select(ChannelInstance).where(ChannelInstance.name == name)).first()
    if row is None:
        raise ChannelNotFound(f"no channel instance named {name!r}")
    return row


def get_policy(session: Session, name: str, settings: Settings) -> EffectivePolicy:
    return effective_policy(session.get(ChannelPolicy, name), settings)


def create_instance(session: Session, data: ChannelInstanceIn) -> ChannelInstance:
    """Create a channel instance; the config is validated against its adapter."""
    if session.exec(select(ChannelInstance).where(ChannelInstance.name == data.name)).first():
        raise ChannelError(f"a channel instance named {data.name!r} already exists")
    if MASK in str(data.config):
        raise ChannelError("config contains a masked value (**********); give the real secret")
    validate_config(data.adapter, data.config)
    row = ChannelInstance(
        name=data.name, adapter=data.adapter, config=data.config, enabled=data.enabled
    )
    session.add(row)
    if data.policy is not None:
        _save_policy(session, data.name, data.policy)
    session.flush()
    return row


def update_instance(session: Session, name: str, patch: ChannelInstanceUpdate) -> ChannelInstance:
    """Change config (merged, secrets kept when masked), enabled or policy."""
    row = get_instance(session, name)
    if patch.config is not None:
        merged = _merge_config(row.adapter, dict(row.config), patch.config)
        validate_config(row.adapter, merged)
        row.config = merged
    if patch.enabled is not None:
        row.enabled = patch.enabled
    if patch.policy is not None:
        _save_policy(session, name, patch.policy)
    # Every process's channel pool rebuilds its adapter when it sees a new version.
    # An expression, not read-modify-write: two concurrent edits get two versions.
    row.version = ChannelInstance.version + 1  # type: ignore[assignment]
    session.add(row)
    session.flush()
    return row


def adapter_catalog() -> list[dict[str, Any]]:
    """Every registered adapter: capabilities and config schema (secrets flagged
    ``writeOnly``/``format: password`` by pydantic)."""
    out = []
    for name in sorted(available_adapters()):
        try:
            cls = adapter_class(name)
        except ChannelError as exc:
            out.append({"name": name, "available": False, "problem": str(exc)})
            continue
        caps = cls.capabilities
        out.append(
            {
                "name": name,
                "available": True,
                "capabilities": {
                    "parts": sorted(caps.parts),
                    "targets": sorted(caps.targets),
                    "modes": sorted(caps.modes),
                    "idempotent": caps.idempotent,
                    "max_batch": caps.max_batch,
                    "connection_check": caps.connection_check,
                    "task_outcomes": caps.task_outcomes,
                },
                "config_schema": cls.config_model.model_json_schema(),
            }
        )
    return out


async def test_connection(context: AdapterContext) -> ConnectionCheck:
    """Validate the stored config of ``context.instance_name`` and, where the
    adapter can check without sending anything (``check_connection``), ask the
    platform. Raises ChannelNotFound for an unknown instance."""
    with Session(reader(context.engine)) as session:
        row = get_instance(session, context.instance_name)
    try:
        cls = adapter_class(row.adapter)
        config = validate_config(row.adapter, row.config)
    except ChannelError as exc:
        return ConnectionCheck(False, str(exc), checked=False)
    checker = connection_checker(cls(config, context))  # type: ignore[call-arg]
    if checker is None:
        return ConnectionCheck(
            True, f"config is valid; the {row.adapter} adapter has no live check", checked=False
        )
    try:
        detail = await checker.check_connection()
    except Exception as exc:  # noqa: BLE001 - the operator wants the reason, not a 500
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        return ConnectionCheck(False, str(reason))
    return ConnectionCheck(True, str(detail))
