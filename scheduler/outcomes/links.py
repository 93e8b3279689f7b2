"""Tracked links: link cards (and, when the template says so, URLs in text) go
out as short links ``{link_base_url}/{link_prefix}/{token}``.

The token is random (128 bits, URL-safe), names no person and cannot be
guessed; the ``tracked_links`` row says whose delivery it belongs to. A retry of
the same delivery reuses its tokens. Opening a short link records a
``link_clicked`` (:func:`record_click`) and redirects at once; link previews and
crawlers (WeCom's and WeChat's unfurlers, chat apps, HTTP libraries) are
recorded as ``bot`` and a person's second click on the same link as ``repeat``.
The redirect itself (``api/routes/links.py``) answers from :class:`LinkCache`
and leaves the writing to ``scheduler.flows.clicks``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, String, any_, bindparam, func, literal, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scheduler.outbox.repository import among, chunked, insert_ignore
from scheduler.outcomes.experiments import PreparingCache
from scheduler.outcomes.models import LinkClick, TrackedLink
from sopbot.db import session_scope

TRACKED_LINKS = TrackedLink.__table__  # type: ignore[attr-defined]
LINK_CLICKS = LinkClick.__table__  # type: ignore[attr-defined]

_URL = re.compile(r"https?://[^\s<>\"'，。！？、；：）】》]+", re.I)
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,32}$")

# Link previews, unfurlers and non-browser clients. WeCom/WeChat fetch a link's
# title and picture when it is pasted or sent; chat apps and crawlers do the same.
BOT_AGENTS = re.compile(
    r"bot\b|bot/|spider|crawl|preview|unfurl|facebookexternalhit|slackbot|telegrambot|"
    r"whatsapp|discordbot|skypeuripreview|headlesschrome|curl/|wget/|python-requests|"
    r"python-httpx|aiohttp|go-http-client|java/|okhttp|libwww|httpclient|"
    r"wechatshare|wxwork-link|micromessenger.*spider",
    re.I,
)


def is_bot(user_agent: str) -> bool:
    """A link preview or crawler rather than a person (no user agent counts too)."""
    return not user_agent.strip() or BOT_AGENTS.search(user_agent) is not None


def short_url(base_url: str, prefix: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/{prefix.strip('/')}/{token}"


def new_token() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits, 22 characters


# -- at send time --------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    delivery_id: int
    part_index: int
    slot: int
    url: str


def _slots(
    delivery_id: int, parts: Sequence[dict[str, Any]], links: bool, text: bool
) -> list[_Slot]:
    out = []
    for index, part in enumerate(parts):
        if part.get("kind") == "link" and links and part.get("url"):
            out.append(_Slot(delivery_id, index, 0, str(part["url"])))
        elif part.get("kind") == "text" and text:
            for slot, match in enumerate(_URL.finditer(str(part.get("text") or ""))):
                out.append(_Slot(delivery_id, index, slot, match.group(0)))
    return out


def track(
    engine: Engine,
    cache: PreparingCache,
    rows: Sequence[Any],
    messages: dict[int, Any],
    *,
    touchpoint_names: dict[int, str],
    base_url: str,
    prefix: str,
    now: datetime,
) -> int:
    """Rewrite the links of prepared ``messages`` (by delivery id) whose template
    tracks links into short links, writing the ``tracked_links`` rows in one
    short transaction. Returns how many links were rewritten; no query at all
    when no template of the batch tracks links."""
    by_id = {r.id: r for r in rows}
    slots: list[_Slot] = []
    for delivery_id, message in messages.items():
        row = by_id[delivery_id]
        outcomes = cache.versions.get(row.version_id)
        tracking = outcomes.tracking if outcomes else None
        if tracking is None or not (tracking.links or tracking.text_urls):
            continue
        slots += _slots(delivery_id, message.parts, tracking.links, tracking.text_urls)
    if not slots:
        return 0
    new = []
    for s in slots:
        row = by_id[s.delivery_id]
        new.append(
            {
                "token": new_token(),
                "delivery_id": s.delivery_id,
                "enrollment_id": row.enrollment_id,
                "template_id": row.template_id,
                "version_id": row.version_id,
                "touchpoint_name": touchpoint_names.get(s.delivery_id, ""),
                "target_kind": row.target_kind,
                "target_id": row.target_id,
                "part_index": s.part_index,
                "slot": s.slot,
                "url": s.url,
                "created_at": now,
            }
        )
    tokens: dict[tuple[int, int, int], str] = {}
    with session_scope(engine) as session:
        insert_ignore(session, TRACKED_LINKS, new)  # a retry keeps its first tokens
        ids = sorted({s.delivery_id for s in slots})
        for chunk in chunked(ids):
            for token, delivery_id, part_index, slot in session.execute(
                select(
                    TRACKED_LINKS.c.token,
                    TRACKED_LINKS.c.delivery_id,
                    TRACKED_LINKS.c.part_index,
                    TRACKED_LINKS.c.slot,
                ).where(among(TRACKED_LINKS.c.delivery_id, chunk, session))
            ).all():
                tokens[(delivery_id, part_index, slot)] = token
    for delivery_id, message in list(messages.items()):
        mine = [s for s in slots if s.delivery_id == delivery_id]
        if not mine:
            continue
        parts = [dict(p) for p in message.parts]
        for s in mine:
            link = short_url(base_url, prefix, tokens[(s.delivery_id, s.part_index, s.slot)])
            part = parts[s.part_index]
            if part.get("kind") == "link":
                part["url"] = link
        for index, part in enumerate(parts):
            if part.get("kind") == "text" and any(s.part_index == index for s in mine):
                part["text"] = _swap_urls(
                    str(part["text"]),
                    [tokens.get((delivery_id, index, slot)) for slot in range(len(mine))],
                    base_url,
                    prefix,
                )
        messages[delivery_id] = dataclasses.replace(message, parts=parts)
    return len(slots)


def _swap_urls(text: str, tokens: list[str | None], base_url: str, prefix: str) -> str:
    """``text`` with its n-th URL replaced by the short link of ``tokens[n]``."""
    pieces, last = [], 0
    for slot, match in enumerate(_URL.finditer(text)):
        token = tokens[slot] if slot < len(tokens) else None
        pieces += [
            text[last : match.start()],
            short_url(base_url, prefix, token) if token else match.group(0),
        ]
        last = match.end()
    pieces.append(text[last:])
    return "".join(pieces)


# -- at click time ----------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """What a short link's token stands for (a ``tracked_links`` row; never changes)."""

    token: str
    url: str
    delivery_id: int
    enrollment_id: int
    template_id: int
    touchpoint_name: str
    target_kind: str
    target_id: int


_LINK_COLUMNS = (
    "token",
    "url",
    "delivery_id",
    "enrollment_id",
    "template_id",
    "touchpoint_name",
    "target_kind",
    "target_id",
)


class LinkCache:
    """Tokens already looked up, so an opened link costs no query: a tracked
    link is written once and never changes. Bounded: when full, the older half
    is forgotten (and read again if opened again). Unknown tokens are not kept."""

    def __init__(self, engine: Engine, size: int = 100_000) -> None:
        self.size = size
        self._links: dict[str, Link] = {}
        self._engine = engine
        # SQLite: a local file read in WAL mode (never waits on the writer), cheap
        # enough to do on the event loop; elsewhere a network round trip, in a thread
        self.inline = engine.dialect.name == "sqlite"
        # compiled once: a click's lookup skips SQLAlchemy's statement building
        stmt = select(*(TRACKED_LINKS.c[name] for name in _LINK_COLUMNS)).where(
            TRACKED_LINKS.c.token == bindparam("token")
        )
        compiled = stmt.compile(dialect=engine.dialect)
        self._sql = str(compiled)
        self._positional = compiled.positional

    def get(self, token: str) -> Link | None:
        return self._links.get(token)

    def lookup(self, token: str) -> Link | None:
        """The link of ``token`` from the cache or the database; None if unknown."""
        if not TOKEN.match(token):
            return None
        link = self._links.get(token)
        if link is not None:
            return link
        params: Any = (token,) if self._positional else {"token": token}
        # The driver's own cursor: one statement, no BEGIN/ROLLBACK around it on
        # SQLite (autocommit there); the pool ends PostgreSQL's read transaction.
        pooled = self._engine.raw_connection()
        try:
            cursor = pooled.cursor()
            cursor.execute(self._sql, params)
            row = cursor.fetchone()
            cursor.close()
        finally:
            pooled.close()
        if row is None:
            return None
        link = Link(*row)
        if len(self._links) >= self.size:
            for old in list(self._links)[: self.size // 2]:  # dicts keep insertion order
                self._links.pop(old, None)
        self._links[token] = link
        return link


def persons_clicked_before(session: Session, tokens: Sequence[str]) -> set[str]:
    """The tokens among ``tokens`` a person (not a preview) has opened before."""
    out: set[str] = set()
    for chunk in chunked(sorted(set(tokens))):
        out.update(
            session.execute(
                select(LINK_CLICKS.c.token)
                .where(_among_tokens(chunk, session), LINK_CLICKS.c.bot.is_(False))
                .distinct()
            ).scalars()
        )
    return out


def _among_tokens(tokens: Sequence[str], session: Session) -> Any:
    """``token IN tokens`` as one parameter (a plain ``IN`` renders one per token)."""
    if session.get_bind().dialect.name == "sqlite":
        each = func.json_each(json.dumps(list(tokens))).table_valued("value")
        return LINK_CLICKS.c.token.in_(select(each.c.value))
    return LINK_CLICKS.c.token == any_(literal(list(tokens), ARRAY(String)))
