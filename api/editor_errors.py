"""The template editor's validation problems next to the form fields they
belong to (``tp-1-part-0-text``), each in the operator's language: the same
problems the API returns, as error codes rendered by ``api.error_codes``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from api import error_codes

_TP = re.compile(r"^touchpoints\[(\d+)\](?:\.(.*))?$")
_PART = re.compile(r"^content(?:\[(\d+)\](?:\.(\w+))?)?$")
_TOP_FIELDS = {
    "name",
    "description",
    "target",
    "timezone",
    "channel",
    "anchor",
    "anchor_tag",
    "start_at",
    "reentry",
}
_SECTIONS = {"segment", "exit", "quiet_hours", "frequency_cap"}


@dataclass
class FieldErrors:
    """Messages by form field id; ``general`` for those that belong to no field."""

    by_field: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    def add(self, field_id: str | None, message: str) -> None:
        if field_id is None:
            self.general.append(message)
        else:
            self.by_field.setdefault(field_id, []).append(message)

    def get(self, field_id: str) -> list[str]:
        return self.by_field.get(field_id, [])

    def __bool__(self) -> bool:
        return bool(self.by_field or self.general)

    def count(self) -> int:
        return len(self.general) + sum(len(v) for v in self.by_field.values())


def field_for(location: str, form: Mapping[str, Any]) -> str | None:
    """``touchpoints[1].timing.cron`` → ``tp-1-cron``; None: show it at the top."""
    if location in _TOP_FIELDS:
        return location
    head = location.split(".", 1)[0].split("[", 1)[0]
    if head in _SECTIONS:
        return head
    match = _TP.match(location)
    if not match:
        return "touchpoints" if location == "touchpoints" else None
    i, rest = int(match.group(1)), match.group(2) or ""
    prefix = f"tp-{i}"
    if i >= len(form.get("touchpoints", [])):
        return None
    if not rest:
        return prefix
    if rest.startswith("timing"):
        sub = rest.removeprefix("timing").lstrip(".")
        tp = form["touchpoints"][i]
        kind = tp["timing_kind"]
        if tp.get("shorthand"):
            return f"{prefix}-shorthand"
        if not sub:
            return f"{prefix}-timing"
        if sub == "at" and kind == "at":
            return f"{prefix}-datetime"
        if sub == "offset":
            return f"{prefix}-offset_n"
        if sub == "cron" and kind == "repeat":
            return f"{prefix}-repeat_time"
        if sub in ("day", "at", "cron"):
            return f"{prefix}-{sub}"
        if sub in ("start", "end"):
            return f"{prefix}-cron_{sub}"
        return f"{prefix}-timing"
    part = _PART.match(rest)
    if part:
        j, name = part.group(1), part.group(2)
        if j is None:
            return f"{prefix}-content"
        if name is None or name == "kind":
            return f"{prefix}-part-{j}"
        return f"{prefix}-part-{j}-{name}"
    name = rest.split(".", 1)[0]
    if name in ("name", "mode", "grace", "past_policy", "fallback"):
        return f"{prefix}-{name}"
    if name == "visible_to":
        return f"{prefix}-visible_tags"
    return prefix


def map_problems(
    problems: Sequence[tuple[str, str]], form: Mapping[str, Any], locale: str = "en"
) -> FieldErrors:
    """Problems next to their fields, each in the operator's language (an error
    code and its parameters, rendered by ``api.error_codes`` with the field named
    in words): no validator's own text reaches the page."""
    errors = FieldErrors()
    for location, message in problems:
        code, params = error_codes.classify(location, message)
        errors.add(field_for(location, form), error_codes.render(code, params, locale, location))
    return errors
