"""The editor's fields for a touchpoint's WeCom execution modes ↔ the spec.

``welcome`` (欢迎语) keeps its fallback (``task`` / ``remind`` / ``skip``);
``moment`` (朋友圈) keeps who sees it (staff accounts and/or customer tags).
They are written into the spec exactly as a YAML file or an API body writes
them (``fallback: remind``, ``visible_to: {accounts: [...], tags: [...]}``),
so the stored template is the same whichever way it was authored; whether the
touchpoint may use the mode is ``sop_templates.mode_rules``' call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MODES = ("send", "task", "remind")
WECOM_MODES = ("welcome", "moment")  # offered on a WeCom channel only
WECOM_ADAPTERS = ("wecom",)
FALLBACKS = ("task", "remind", "skip")
FIELDS = ("fallback", "visible_accounts", "visible_tags")


def blank() -> dict[str, str]:
    """A touchpoint's mode fields before anything is chosen."""
    return {"fallback": "task", "visible_accounts": "", "visible_tags": ""}


def _split(text: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,，\s]+", text or "") if v.strip()]


def into_form(out: dict[str, Any], tp: Mapping[str, Any]) -> None:
    """Set the mode fields of form touchpoint ``out`` from stored touchpoint ``tp``."""
    out["fallback"] = tp.get("fallback") or "task"
    visible = tp.get("visible_to") or {}
    out["visible_accounts"] = ", ".join(visible.get("accounts") or [])
    out["visible_tags"] = ", ".join(visible.get("tags") or [])


def from_request(tp: dict[str, Any], data: Mapping[str, Any], prefix: str) -> None:
    """Read the mode fields of one touchpoint from the posted form."""
    for name in FIELDS:
        tp[name] = str(data.get(prefix + name, "") or "").strip()
    if tp["fallback"] not in FALLBACKS:
        tp["fallback"] = "task"


def into_spec(out: dict[str, Any], tp: Mapping[str, Any]) -> None:
    """Add the chosen mode's settings to spec touchpoint ``out``."""
    if out.get("mode") == "welcome":
        out["fallback"] = tp.get("fallback") or "task"
    if out.get("mode") == "moment":
        accounts = _split(str(tp.get("visible_accounts") or ""))
        tags = _split(str(tp.get("visible_tags") or ""))
        if accounts or tags:
            out["visible_to"] = {"accounts": accounts, "tags": tags}


def offered(channel: str, wecom_channels: list[str], target: str, current: str) -> tuple[str, ...]:
    """The modes the editor offers for a touchpoint: the WeCom ones for
    customers on a WeCom channel (and the one already chosen, so it is never
    lost silently; validation says why it cannot stay)."""
    if channel in wecom_channels and target == "contact":
        return MODES + WECOM_MODES
    return MODES + ((current,) if current in WECOM_MODES else ())
