"""Workspace settings stored in the database (set in 设置: the default time
zone, quiet hours and frequency cap), and how every process keeps up with them.

The environment (``SOPBOT_*``) gives the defaults; a stored value wins. Every
save also raises a version counter (one more row of ``workspace_settings``).
Each process holds a :class:`WorkspaceWatch`: at most every
``workspace_refresh_seconds`` (2 s) it reads that one row by its key and, when the number
moved, reads the stored values again and tells its listeners (the API's
pages, the scheduler's dispatcher). A change saved in one process thus holds
in every other (``sopbot worker``, another ``sopbot api``) within about
that interval, without a restart — the pattern the channel pool uses for
channel configuration (``channels.registry.ChannelPool``).

The approval requirement needs no watch: it is read from the database at each
publish. Shared here because the api and scheduler packages both read it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import String, column, select, table, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from sopbot.db import JSONType, UTCDateTime, reader
from sopbot.settings import Settings
from sopbot.sql import insert_of

log = logging.getLogger("sopbot.workspace")

KEYS = (
    "default_timezone",
    "quiet_hours",
    "quiet_hours_policy",
    "frequency_cap",
    "frequency_cap_policy",
)
PREFIX = "workspace."
VERSION_KEY = "workspace.version"

# The table is the operator UI's (api.users.models.WorkspaceSetting); named
# here as a plain table because scheduler code does not import the api package.
SETTINGS_TABLE = table(
    "workspace_settings",
    column("key", String),
    column("value", JSONType),
    column("updated_at", UTCDateTime),
)


def stored(session: Session) -> dict[str, Any]:
    """The values saved in 设置 (empty quiet hours / cap stored as "" mean none)."""
    keys = [PREFIX + k for k in KEYS]
    rows = session.execute(
        select(SETTINGS_TABLE.c.key, SETTINGS_TABLE.c.value).where(SETTINGS_TABLE.c.key.in_(keys))
    ).all()
    out: dict[str, Any] = {}
    for full_key, value in rows:
        key = full_key[len(PREFIX) :]
        if value is not None:
            out[key] = value or None if key in ("quiet_hours", "frequency_cap") else value
    return out


def effective(base: Settings, session: Session) -> Settings:
    """The environment's settings with the stored workspace values over them."""
    values = stored(session)
    return base.model_copy(update=values) if values else base


def version(session: Session) -> int:
    """The counter every save raises (0 before the first save)."""
    value = session.execute(
        select(SETTINGS_TABLE.c.value).where(SETTINGS_TABLE.c.key == VERSION_KEY)
    ).scalar()
    return int(value or 0)


def bump(session: Session, now: datetime) -> int:
    """Raise the version counter (in the saving transaction): every process
    notices it on its next check. Read under a row lock, so two saves at once
    on PostgreSQL count twice (SQLite's write lock does the same)."""
    session.execute(
        insert_of(session, SETTINGS_TABLE)  # type: ignore[arg-type]
        .values(key=VERSION_KEY, value=0, updated_at=now)
        .on_conflict_do_nothing()
    )
    current = session.execute(
        select(SETTINGS_TABLE.c.value).where(SETTINGS_TABLE.c.key == VERSION_KEY).with_for_update()
    ).scalar()
    new = int(current or 0) + 1
    session.execute(
        update(SETTINGS_TABLE)
        .where(SETTINGS_TABLE.c.key == VERSION_KEY)
        .values(value=new, updated_at=now)
    )
    return new


Listener = Callable[[Settings], None]


class WorkspaceWatch:
    """One process's view of the workspace settings, kept current.

    ``settings`` is the environment's settings with the stored values over
    them. :meth:`refresh` is cheap between checks (a monotonic clock read) and
    one primary-key read at a check; listeners run only when the stored
    values changed."""

    def __init__(
        self,
        engine: Engine,
        base: Settings,
        *,
        refresh_seconds: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self.base = base
        self.settings = base
        self.version: int | None = None  # None: not read yet
        self._refresh_seconds = (
            base.workspace_refresh_seconds if refresh_seconds is None else refresh_seconds
        )
        self._monotonic = monotonic
        self._checked_at: float | None = None
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Call ``listener(settings)`` whenever the stored values change."""
        self._listeners.append(listener)

    def load(self, session: Session | None = None) -> Settings:
        """Read the stored values now (start-up, or after this process saved
        them in ``session``) and tell the listeners."""
        with self._lock:
            if session is not None:
                self._load(session)
            else:
                with Session(reader(self._engine)) as own:
                    self._load(own)
            self._checked_at = self._monotonic()
        self._notify()
        return self.settings

    def refresh(self, *, force: bool = False) -> Settings | None:
        """Check the version at most every ``refresh_seconds`` (``force``: now);
        the new settings when another process saved a change, else None."""
        with self._lock:
            now = self._monotonic()
            recent = self._checked_at is not None and now - self._checked_at < self._refresh_seconds
            if recent and not force:
                return None
            self._checked_at = now
            try:
                # A read on its own snapshot: never waits for SQLite's write lock.
                with Session(reader(self._engine)) as session:
                    if version(session) == self.version:
                        return None
                    self._load(session)
            except SQLAlchemyError as exc:  # keep what we have; the next check retries
                log.warning("could not check workspace settings: %s", exc)
                return None
        log.info("workspace settings changed (version %s): applying", self.version)
        self._notify()
        return self.settings

    def current(self) -> Settings:
        """The settings, refreshed if due."""
        self.refresh()
        return self.settings

    def _load(self, session: Session) -> None:
        self.version = version(session)
        self.settings = effective(self.base, session)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self.settings)
