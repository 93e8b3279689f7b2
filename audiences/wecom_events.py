"""WeCom (企业微信) callbacks → audience events.

The callback endpoint only verifies, decrypts and stores the event (WeCom wants a
reply within 5 s and retries up to 3 times); the mapping below runs when the
stored event is applied.

Mapped change types:

* ``change_external_contact``: ``add_external_contact`` (and
  ``add_half_external_contact``) → ``friend_added``, its ``WelcomeCode`` kept in
  the contact's attributes for a ``mode: welcome`` touchpoint;
  ``edit_external_contact`` → ``contact_updated`` (creates the contact if sopbot
  has not seen it, without counting it as a new friend); ``del_external_contact``
  (staff deleted the customer) and ``del_follow_user`` (the customer deleted the
  staff member) → ``friend_deleted``.
* ``change_external_chat``: ``create`` → ``group_created``; ``update`` with
  ``add_member`` / ``del_member`` → ``group_member_joined`` / ``_left``, other
  updates → ``group_updated``; ``dismiss`` → ``group_dissolved``.

Anything else (tag library changes, transfer failures,
ordinary messages) is stored and marked ignored, with the reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from audiences.events import InvalidEvent
from sopbot.ids import is_id

SOURCE = "wecom"


# Contact attributes holding the latest add event's WelcomeCode and its time.
WELCOME_CODE = "wecom_welcome_code"
WELCOME_AT = "wecom_welcome_at"


def welcome_code_of(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The stored WelcomeCode of a contact, as ``OutboundMessage.options`` carry it."""
    code = attributes.get(WELCOME_CODE)
    if not code:
        return {}
    return {"welcome_code": str(code), "welcome_at": attributes.get(WELCOME_AT)}


def dedupe_key(fields: Mapping[str, str]) -> str:
    """A key from the event's content: a retried callback decrypts to the same
    fields (same CreateTime), a new event differs in at least CreateTime."""
    canonical = json.dumps(dict(sorted(fields.items())), ensure_ascii=False, sort_keys=True)
    return "wecom:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def event_kind(fields: Mapping[str, str]) -> str:
    """A short label for the inbox, e.g. ``change_external_contact/add_external_contact``."""
    event = fields.get("Event") or fields.get("MsgType") or "unknown"
    change = fields.get("ChangeType")
    return f"{event}/{change}"[:64] if change else event[:64]


def _occurred_at(fields: Mapping[str, str]) -> str | None:
    raw = fields.get("CreateTime", "").strip()
    if not is_id(raw):
        return None
    try:
        return datetime.fromtimestamp(int(raw), tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        raise InvalidEvent(
            [("CreateTime", f"{raw[:30]} is not a time the calendar holds (Unix seconds)")]
        ) from None


def to_events(fields: Mapping[str, str]) -> tuple[list[dict[str, Any]], str | None]:
    """The audience events one decrypted callback stands for, or ``([], why)``
    when sopbot does not act on it."""
    event = fields.get("Event")
    change = fields.get("ChangeType")
    common: dict[str, Any] = {}
    occurred = _occurred_at(fields)
    if occurred:
        common["occurred_at"] = occurred
    if fields.get("MsgType") != "event":
        return [], f"not an event (MsgType {fields.get('MsgType')!r})"

    if event == "change_external_contact":
        account, external_id = fields.get("UserID"), fields.get("ExternalUserID")
        if not account or not external_id:
            return [], "change_external_contact without UserID or ExternalUserID"
        ref = {"account": account, "external_id": external_id, **common}
        if change in ("add_external_contact", "add_half_external_contact"):
            state = fields.get("State")
            attributes: dict[str, Any] = {"wecom_state": state} if state else {}
            # The code greets this friend once, ~20 s from the event (mode welcome);
            # a re-add without one must not leave an old code behind.
            attributes[WELCOME_CODE] = fields.get("WelcomeCode") or None
            attributes[WELCOME_AT] = occurred if fields.get("WelcomeCode") else None
            return [{"kind": "friend_added", **ref, "attributes": attributes}], None
        if change == "edit_external_contact":
            return [{"kind": "contact_updated", **ref, "create_missing": True}], None
        if change == "del_external_contact":
            return [{"kind": "friend_deleted", **ref, "by": "staff"}], None
        if change == "del_follow_user":
            return [{"kind": "friend_deleted", **ref, "by": "contact"}], None
        return [], f"change_external_contact/{change} is not acted on"

    if event == "change_external_chat":
        chat = fields.get("ChatId")
        if not chat:
            return [], "change_external_chat without ChatId"
        ref = {"external_id": chat, **common}
        if change == "create":
            return [{"kind": "group_created", **ref}], None
        if change == "dismiss":
            return [{"kind": "group_dissolved", **ref}], None
        if change == "update":
            detail = fields.get("UpdateDetail")
            count = fields.get("MemChangeCnt", "").strip()
            members: dict[str, Any] = {"count": int(count)} if is_id(count) else {}
            if detail == "add_member":
                return [
                    {"kind": "group_member_joined", **ref, **members, "create_missing": True}
                ], None
            if detail == "del_member":
                return [
                    {"kind": "group_member_left", **ref, **members, "create_missing": True}
                ], None
            return [{"kind": "group_updated", **ref, "create_missing": True}], None
        return [], f"change_external_chat/{change} is not acted on"

    return [], f"event {event!r} is not acted on"


def accounts_of(events: list[dict[str, Any]]) -> set[str]:
    """Staff accounts the events name: WeCom is the authority on its own staff,
    so these are registered on the fly rather than rejected as unknown."""
    return {e["account"] for e in events if e.get("account")}
