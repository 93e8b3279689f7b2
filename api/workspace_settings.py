"""Workspace settings an admin changes in 设置 (stored in the database): the
default time zone, the default quiet hours and frequency cap. The environment
(``SOPBOT_*``, ``sopbot.settings.Settings``) gives the defaults; a stored value
wins. A save applies at once to the process that served it (its pages and its
scheduler) and raises the workspace version, so every other process (workers,
other API processes) applies it within a few seconds (``sopbot.workspace``)."""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session

from api.i18n import N_
from api.users import service as users_service
from sop_templates.schemas import QuietHoursSpec
from sopbot import workspace
from sopbot.settings import Settings

KEYS = workspace.KEYS
PREFIX = workspace.PREFIX
CAP_PRESETS = (
    ("", N_("No cap")),
    ("wecom_daily", N_("1 per day (WeCom's daily mass-send rule)")),
    ("wecom_weekly", N_("7 per week")),
    ("wecom_monthly_days", N_("As many per month as the month has days")),
)
POLICIES = (("defer", N_("Defer")), ("skip", N_("Skip")))
# The zones operators pick most, with Chinese names; every other IANA zone follows.
COMMON_ZONES = (
    ("Asia/Shanghai", N_("China (Beijing time)")),
    ("Asia/Hong_Kong", N_("Hong Kong")),
    ("Asia/Taipei", N_("Taipei")),
    ("Asia/Singapore", N_("Singapore")),
    ("Asia/Tokyo", N_("Tokyo")),
    ("America/Los_Angeles", N_("Los Angeles")),
    ("America/New_York", N_("New York")),
    ("Europe/London", N_("London")),
    ("UTC", N_("UTC")),
)


def effective(settings: Settings, session: Session) -> Settings:
    """The environment's settings with the stored workspace values over them."""
    return workspace.effective(settings, session)


def all_zones() -> list[str]:
    common = {zone for zone, _ in COMMON_ZONES}
    return sorted(z for z in zoneinfo.available_timezones() if z not in common)


def check(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The form's values, or the fields in error with a message id each."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    zone = form.get("default_timezone", "").strip()
    if zone not in zoneinfo.available_timezones():
        errors["default_timezone"] = N_("Choose a time zone from the list.")
    values["default_timezone"] = zone
    start, end = form.get("quiet_start", "").strip(), form.get("quiet_end", "").strip()
    if start or end:
        try:
            spec = QuietHoursSpec.model_validate(f"{start}-{end}")
            values["quiet_hours"] = f"{spec.start}-{spec.end}"
        except (ValidationError, ValueError):
            errors["quiet_hours"] = N_(
                "Quiet hours need a start and an end like 22:00 and 08:00, not the same time."
            )
    else:
        values["quiet_hours"] = ""
    cap = form.get("frequency_cap", "")
    if cap not in {c for c, _ in CAP_PRESETS}:
        errors["frequency_cap"] = N_("Choose a frequency cap from the list.")
    values["frequency_cap"] = cap
    for key in ("quiet_hours_policy", "frequency_cap_policy"):
        value = form.get(key, "defer")
        if value not in ("defer", "skip"):
            errors[key] = N_("Choose defer or skip.")
        values[key] = value
    return values, errors


def save(session: Session, values: dict[str, Any], now: datetime) -> None:
    """Store the values and raise the workspace version (every process notices)."""
    for key, value in values.items():
        users_service.set_setting(session, PREFIX + key, value, now)
    workspace.bump(session, now)


def apply(app: Any, session: Session) -> Settings:
    """Use the stored values in this process at once (read in ``session``, the
    one that saved them): its pages and its scheduler (the watch's listeners)."""
    return app.state.workspace.load(session)  # type: ignore[no-any-return]
