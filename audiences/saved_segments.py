"""Saved segments (人群): a segment definition under a name, built with the tag
picker (tags every member has, tags of which one is enough, tags that exclude)
and reused in SOPs. Reading and saving only; nothing here changes who carries
which tag."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from audiences.models import SavedSegment
from audiences.segment_queries import Preview, preview
from audiences.segments import SEGMENT_KINDS, SEGMENT_TARGET


class SegmentError(ValueError):
    """A segment that cannot be saved; ``code`` names the problem for the UI."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Picked:
    """The tag picker's chips: AND (every one), OR (at least one), NOT (none)."""

    all: Sequence[str] = ()
    any: Sequence[str] = ()
    none: Sequence[str] = ()

    def expression(self) -> dict[str, Any] | None:
        """The tag expression, structured (``{"all": [...]}``); None when empty."""
        parts: list[Any] = list(dict.fromkeys(t for t in self.all if t))
        anyof = list(dict.fromkeys(t for t in self.any if t))
        if len(anyof) == 1:
            parts.append(anyof[0])
        elif anyof:
            parts.append({"any": anyof})
        parts += [{"not": t} for t in dict.fromkeys(self.none) if t]
        return {"all": parts} if parts else None

    @property
    def positive(self) -> bool:
        return bool([t for t in self.all if t] or [t for t in self.any if t])


def parse_attribute_chips(chips: Sequence[str]) -> dict[str, list[str]]:
    """``["城市=上海", "城市=北京", "等级=VIP"]`` → ``{"城市": ["上海", "北京"], ...}``
    (values of one attribute: any of them; different attributes: all)."""
    out: dict[str, list[str]] = {}
    for chip in chips:
        text = chip.strip()
        if not text:
            continue
        key, sep, value = text.replace("＝", "=").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise SegmentError("attribute", f"an attribute filter is name=value, not {text!r}")
        if len(key) > 64 or '"' in key or "\\" in key:
            raise SegmentError("attribute_name", f"attribute name {key!r} cannot be used")
        values = out.setdefault(key, [])
        if value not in values:
            values.append(value)
    return out


def attribute_chips(raw: dict[str, Any]) -> list[str]:
    """The picker's attribute chips back from a saved definition."""
    chips: list[str] = []
    for key, flt in (raw.get("attributes") or {}).items():
        values = flt.get("in", []) if isinstance(flt, dict) else [flt]
        if isinstance(flt, dict) and "eq" in flt:
            values = [flt["eq"]]
        chips += [f"{key}={v}" for v in values]
    return chips


def definition(
    picked: Picked,
    kind: str = "tagged",
    accounts: Sequence[str] = (),
    attributes: dict[str, list[str]] | None = None,
    *,
    clicked_days: int | None = None,
) -> dict[str, Any]:
    """A segment definition from the picker: tags, staff accounts (external ids;
    any of them), attribute filters (``parse_attribute_chips``) and, with
    ``clicked_days``, only who clicked a tracked link in the last N days.
    ``SegmentError`` says what is wrong."""
    if kind not in ("tagged", "groups"):
        raise SegmentError("kind", f"unknown segment kind {kind!r}")
    expr = picked.expression()
    if expr is None or not picked.positive:
        raise SegmentError("no_tags", "pick at least one tag every member has, or one of several")
    raw: dict[str, Any] = {"kind": kind, "tags": expr}
    if accounts:
        raw["accounts" if kind == "tagged" else "owners"] = list(dict.fromkeys(accounts))
    if attributes:
        raw["attributes"] = {
            key: values[0] if len(values) == 1 else {"in": values}
            for key, values in attributes.items()
        }
    if clicked_days:
        raw["clicked"] = {"days": clicked_days}
    try:
        SEGMENT_KINDS[kind].model_validate(raw)
    except ValidationError as exc:
        raise SegmentError("invalid", str(exc)) from None
    return raw


def evaluate(
    session: Session, raw: dict[str, Any], limit: int = 10, *, now: datetime | None = None
) -> Preview:
    """The live count and the first members of a definition (``now``: what
    "clicked in the last N days" counts back from)."""
    segment: Any = SEGMENT_KINDS[raw["kind"]].model_validate(raw)
    return preview(session, SEGMENT_TARGET[raw["kind"]], segment, limit=limit, now=now)


def clicked_days(raw: dict[str, Any]) -> int | None:
    """The "clicked in the last N days" of a saved definition, if any."""
    clicked = raw.get("clicked")
    return int(clicked["days"]) if isinstance(clicked, dict) and "days" in clicked else None


def save(session: Session, name: str, raw: dict[str, Any], now: datetime) -> SavedSegment:
    """Save under ``name`` (a segment of that name is replaced)."""
    name = name.strip()
    if not name:
        raise SegmentError("no_name", "a saved segment needs a name")
    if len(name) > 100:
        raise SegmentError("long_name", "the name is longer than 100 characters")
    row = session.exec(select(SavedSegment).where(SavedSegment.name == name)).first()
    if row is None:
        row = SavedSegment(name=name, definition=raw, created_at=now, updated_at=now)
    else:
        row.definition, row.updated_at = raw, now
    session.add(row)
    session.flush()
    return row


def get(session: Session, segment_id: int) -> SavedSegment | None:
    return session.get(SavedSegment, segment_id)


def all_saved(session: Session) -> list[SavedSegment]:
    return list(session.exec(select(SavedSegment).order_by(col(SavedSegment.name))).all())


def chips(raw: dict[str, Any]) -> Picked:
    """The picker's chips back from a definition saved by :func:`definition`."""
    picked = Picked([], [], [])
    tags = raw.get("tags")
    items = tags.get("all", []) if isinstance(tags, dict) else []
    for item in items:
        if isinstance(item, str):
            picked.all.append(item)  # type: ignore[attr-defined]
        elif isinstance(item, dict) and "any" in item:
            picked.any.extend(item["any"])  # type: ignore[attr-defined]
        elif isinstance(item, dict) and "not" in item:
            picked.none.append(item["not"])  # type: ignore[attr-defined]
    return picked
