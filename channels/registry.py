"""Which adapters exist, and the live channel instances built from them.

Built-in adapters are listed explicitly; third parties register through the
``sopbot.channels`` entry-point group. A duplicate name is an error, and an entry
point that fails to import is an error too: a missing channel must not look like
a working one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from channels.base import AdapterContext, ChannelAdapter, ChannelError
from channels.models import ChannelInstance
from sopbot.db import reader
from sopbot.sql import insert_of

ENTRY_POINT_GROUP = "sopbot.channels"
# How stale a process's view of a channel instance may get (see ChannelPool).
REFRESH_SECONDS = 1.0
INSTANCES: Table = ChannelInstance.__table__  # type: ignore[attr-defined]

log = logging.getLogger(__name__)

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
    """Create a channel instance if none has that name (config validated).

    Safe when many processes start at once on a new database: the row is
    inserted with ``ON CONFLICT DO NOTHING`` and then read, so the loser of the
    race reads the winner's row instead of failing on the unique name."""
    existing = session.exec(select(ChannelInstance).where(ChannelInstance.name == name)).first()
    if existing:
        return existing
    validate_config(adapter, config or {})
    session.execute(
        insert_of(session, INSTANCES)
        .values(name=name, adapter=adapter, config=config or {}, enabled=True, version=1)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return session.exec(select(ChannelInstance).where(ChannelInstance.name == name)).one()


class ChannelPool:
    """Live adapter objects, one per channel instance, built on first use.

    Every process (API, each worker) has its own pool, so a change made in one
    process must reach the others through the database: at most every
    ``refresh_seconds`` the pool reads each instance's ``version`` (one small
    query) and drops an adapter built from an older version, or a "disabled" /
    "unknown" answer that no longer holds. The next use builds it anew from the
    stored config. A change thus takes effect everywhere within about
    ``refresh_seconds`` plus one dispatch batch, without a restart.
    """

    def __init__(
        self,
        engine: Engine,
        context_factory: Any,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._context_factory = context_factory  # (instance name) -> AdapterContext
        self._refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._checked_at: float | None = None
        self._lock = threading.Lock()
        # name -> (version it was built from, None for no row; adapter or refusal)
        self._built: dict[str, tuple[int | None, ChannelAdapter | ChannelError]] = {}

    def get(self, instance_name: str) -> ChannelAdapter:
        """The live adapter; raises ChannelError for a disabled or unknown instance."""
        # Dispatch calls this from several threads at once: one refreshes while
        # the others wait, so none reads an entry the refresh is about to drop.
        with self._lock:
            self._refresh()
            built = self._built.get(instance_name)
            if built is None:
                built = self._build(instance_name)
                self._built[instance_name] = built
        adapter = built[1]
        if isinstance(adapter, ChannelError):
            raise adapter
        return adapter

    def forget(self, instance_name: str) -> None:
        """Drop a cached adapter (this process changed its config)."""
        with self._lock:
            self._built.pop(instance_name, None)

    def _build(self, instance_name: str) -> tuple[int | None, ChannelAdapter | ChannelError]:
        with Session(reader(self._engine)) as session:
            row = session.exec(
                select(ChannelInstance).where(ChannelInstance.name == instance_name)
            ).first()
        if row is None:
            return None, ChannelError(f"no channel instance named {instance_name!r}")
        if not row.enabled:
            return row.version, ChannelError(f"channel instance {instance_name!r} is disabled")
        cls = adapter_class(row.adapter)
        config = validate_config(row.adapter, row.config)
        context: AdapterContext = self._context_factory(instance_name)
        return row.version, cls(config, context)  # type: ignore[call-arg]

    def _refresh(self) -> None:
        now = self._monotonic()
        if self._checked_at is not None and now - self._checked_at < self._refresh_seconds:
            return
        self._checked_at = now
        if not self._built:
            return
        try:
            # A read on its own snapshot: dispatch calls this on the event loop,
            # which must never wait for SQLite's write lock (the request holding
            # it may need the loop to commit).
            with Session(reader(self._engine)) as session:
                current: dict[str, int] = dict(
                    session.execute(select(INSTANCES.c.name, INSTANCES.c.version)).all()  # type: ignore[arg-type]
                )
        except SQLAlchemyError as exc:  # keep what was built; the next check retries
            log.warning("could not check channel versions: %s", exc)
            return
        for name, (version, _) in list(self._built.items()):
            if current.get(name) != version:
                log.info(
                    "channel %s changed (version %s -> %s): rebuilding",
                    name,
                    version,
                    current.get(name),
                )
                self._built.pop(name, None)
