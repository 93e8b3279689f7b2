"""What a delivery's execution mode needs from its touchpoint and target at
dispatch (``OutboundMessage.options``): nothing for send/task/remind; the
fallback and the stored WelcomeCode for ``welcome``; the visibility for ``moment``."""

from __future__ import annotations

from typing import Any

from audiences import wecom_events


def message_options(
    mode: str, touchpoint_options: dict[str, Any] | None, target: dict[str, Any]
) -> dict[str, Any]:
    """The options of one outbound message (empty for the common modes)."""
    if mode not in ("welcome", "moment"):
        return {}
    options = dict(touchpoint_options or {})
    if mode == "welcome":
        options.update(wecom_events.welcome_code_of(target.get("attributes") or {}))
    return options
