"""Which adapters exist, and the live channel instances built from them.

Built-in adapters are listed explicitly; third parties register through the
``sopbot.channels`` entry-point group. A duplicate name is an error, and an entry
point that fails to import is an error too: a missing channel must not look like
a working one.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from channels.base import AdapterContext, ChannelAdapter, ChannelError
from channels.models import ChannelInstance

ENTRY_POINT_GROUP = "sopbot.channels"

# name -> "module:Class"; imported lazily so optional extras stay optional.
BUILTINS: dict[str, str] = {
    "mock": "channels.mock:MockAdapter",
    "webhook": "channels.webhook:WebhookAdapter",
    "wecom": "channels.wecom:WeComAdapter",
    "wecom_group_bot": "channels.wecom_group_bot:WeComGroupBotAdapter",
    # needs the optional extra: pip install 'sopbot[apprise]'
    "apprise": "channels.apprise_adapter:AppriseAdapter",
}


def _load(target: str) -> type[ChannelAdapter]:
    module_name, _, attr = target.partition(":")
    return getattr(import_module(module_name), attr)  # type: ignore[no-any-return]


def available_adapters(include_entry_points: bool = True) -> dict[str, str]:
    """Every adapter name with where it comes from ("module:Class")."""
    names = dict(BUILTINS)
    if include_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in names:
                raise ChannelError(
                    f"channel adapter name {ep.name!r} is registered twice "
                    f"({names[ep.name]} and {ep.value})"
                )
            names[ep.name] = ep.value
    return names


def adapter_class(name: str) -> type[ChannelAdapter]:
    adapters = available_adapters()
    if name not in adapters:
        raise ChannelError(
            f"unknown channel adapter {name!r}; known: {', '.join(sorted(adapters))}"
        )
    try:
        cls = _load(adapters[name])
    except (ImportError, AttributeError) as exc:
        raise ChannelError(f"channel adapter {name!r} cannot be loaded: {exc}") from exc
    if getattr(cls, "name", None) != name:
        raise ChannelError(
            f"adapter {adapters[name]} declares name {getattr(cls, 'name', None)!r}, not {name!r}"
        )
    return cls


def validate_config(adapter: str, config: dict[str, Any]) -> Any:
    cls = adapter_class(adapter)
    try:
        return cls.config_model.model_validate(config)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ChannelError(f"invalid config for {adapter!r} channel: {details}") from None


def ensure_instance(
    session: Session, name: str, adapter: str, config: dict[str, Any] | None = None
) -> ChannelInstance:
    """Create a channel instance if none has that name (config validated)."""
    existing = session.exec(select(ChannelInstance).where(ChannelInstance.name == name)).first()
    if existing:
        return existing
    validate_config(adapter, config or {})
    instance = ChannelInstance(name=name, adapter=adapter, config=config or {})
    session.add(instance)
    session.flush()
    return instance


class ChannelPool:
    """Live adapter objects, one per channel instance, built on first use."""

    def __init__(self, engine: Engine, context_factory: Any) -> None:
        self._engine = engine
        self._context_factory = context_factory  # (instance name) -> AdapterContext
        self._adapters: dict[str, ChannelAdapter] = {}

    def get(self, instance_name: str) -> ChannelAdapter:
        adapter = self._adapters.get(instance_name)
        if adapter is None:
            with Session(self._engine) as session:
                row = session.exec(
                    select(ChannelInstance).where(ChannelInstance.name == instance_name)
                ).first()
            if row is None:
                raise ChannelError(f"no channel instance named {instance_name!r}")
            if not row.enabled:
                raise ChannelError(f"channel instance {instance_name!r} is disabled")
            cls = adapter_class(row.adapter)
            config = validate_config(row.adapter, row.config)
            context: AdapterContext = self._context_factory(instance_name)
            adapter = cls(config, context)  # type: ignore[call-arg]
            self._adapters[instance_name] = adapter
        return adapter

    def forget(self, instance_name: str) -> None:
        """Drop a cached adapter (after its config changed)."""
        self._adapters.pop(instance_name, None)
