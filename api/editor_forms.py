"""The template editor's HTML form ↔ a template spec (validation problems ↔ the
form fields they belong to: ``api.editor_errors``).

The form is flat (``tp-1-cron``, ``tp-1-part-0-text``) so it works without
JavaScript; the editor keeps its state in the form until it validates and is
saved. Structural actions (add, move, remove a touchpoint or a part) change the
form state only. Validation itself is ``sop_templates.service.check_spec`` (the
sample, a few real members of the segment, the channel's limits): the UI shows
exactly the messages the API returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from api import editor_modes
from sopbot.ids import is_id

PART_KINDS = ("text", "image", "link", "miniprogram", "file", "video")
# "repeat" is the picker for the common cron schedules (每天 / 工作日 / 每周 / 每月);
# raw cron stays under "cron" (高级).
TIMING_KINDS = ("offset", "day_at", "at", "repeat", "cron")
OFFSET_UNITS = ("m", "h", "d")
REPEAT_FREQS = ("daily", "weekdays", "weekly", "monthly")
TIMING_FIELDS = (
    "timing_kind",
    "offset_n",
    "offset_unit",
    "day",
    "at",
    "datetime",
    "repeat_freq",
    "repeat_dom",
    "repeat_time",
    "cron",
    "cron_start",
    "cron_end",
    "shorthand",
)
MODES = editor_modes.MODES
# Form field of each part kind, in display order: (field, required)
PART_FIELDS: dict[str, tuple[tuple[str, bool], ...]] = {
    "text": (("text", True),),
    "image": (("url", True),),
    "link": (("title", True), ("url", True), ("description", False), ("image_url", False)),
    "miniprogram": (("title", True), ("appid", True), ("page", True), ("pic_url", False)),
    "file": (("url", True), ("name", False)),
    "video": (("url", True),),
}
CAP_PRESETS = ("wecom_daily", "wecom_weekly", "wecom_monthly_days")


def _blank_part(kind: str = "text") -> dict[str, str]:
    return {"kind": kind, **{name: "" for name, _ in PART_FIELDS.get(kind, PART_FIELDS["text"])}}


def blank_touchpoint(n: int = 1) -> dict[str, Any]:
    """An empty touchpoint; the first fires at once, a later one a day after."""
    return {
        "name": "",
        "timing_kind": "offset",
        "offset_n": "0" if n == 1 else "1",
        "offset_unit": "m" if n == 1 else "d",
        "day": "1",
        "at": "20:00",
        "datetime": "",
        "repeat_freq": "daily",
        "repeat_dows": ["1"],
        "repeat_dom": "1",
        "repeat_time": "11:00",
        "cron": "",
        "cron_start": "",
        "cron_end": "",
        "shorthand": "",
        "mode": "send",
        **editor_modes.blank(),
        "grace": "",
        "past_policy": "skip",
        "parts": [_blank_part("text")],
    }


def new_touchpoint(n: int, target: str, name: str, text: str) -> dict[str, Any]:
    """A touchpoint added in the editor: valid as it is (a name, a timing, a text)."""
    tp = blank_touchpoint(n)
    tp["name"] = name
    tp["parts"] = [{"kind": "text", "text": text}]
    if target == "group":
        tp["timing_kind"] = "repeat"
    return tp


def offset_fields(offset: str) -> tuple[str, str]:
    """``3h`` → ("3", "h"); ``1d6h`` → ("30", "h"): the largest whole unit."""
    from sop_templates.timing import parse_duration

    try:
        seconds = int(parse_duration(offset).total_seconds())
    except ValueError:
        return offset, "m"
    for unit, size in (("d", 86400), ("h", 3600)):
        if seconds and seconds % size == 0:
            return str(seconds // size), unit
    return str(seconds // 60), "m"


def timing_into_form(tp: dict[str, Any], timing: Mapping[str, Any]) -> None:
    """Set a touchpoint's picker fields from a stored timing dict."""
    from sop_templates.wording import repeat_parts

    kind = str(timing.get("kind", "offset"))
    tp["timing_kind"] = kind
    if kind == "offset":
        tp["offset_n"], tp["offset_unit"] = offset_fields(str(timing.get("offset", "")))
    elif kind == "day_at":
        tp["day"], tp["at"] = str(timing.get("day", "")), str(timing.get("at", ""))
    elif kind == "at":
        tp["datetime"] = str(timing.get("at", ""))[:16].replace(" ", "T")
    elif kind == "cron":
        cron = " ".join(str(timing.get("cron", "")).split())
        tp["cron"] = cron
        for bound in ("start", "end"):
            value = timing.get(bound)
            tp[f"cron_{bound}"] = str(value)[:16].replace(" ", "T") if value else ""
        parts = repeat_parts(cron)
        if parts is not None and len(parts["times"]) == 1 and not tp["cron_start"]:
            tp["timing_kind"] = "repeat"
            tp["repeat_freq"] = parts["freq"]
            tp["repeat_time"] = parts["times"][0]
            if parts["freq"] == "weekly":
                tp["repeat_dows"] = [str(d) for d in parts["dows"]]
            if parts["freq"] == "monthly":
                tp["repeat_dom"] = parts["dom"]


def repeat_cron(tp: Mapping[str, Any]) -> str:
    """The repeat picker → a five-field cron (the stored form)."""
    from sop_templates.timing import parse_hhmm

    try:
        clock = parse_hhmm(str(tp.get("repeat_time") or ""))
    except ValueError:
        return ""
    head = f"{clock.minute} {clock.hour}"
    freq = tp.get("repeat_freq") or "daily"
    if freq == "weekdays":
        return f"{head} * * 1-5"
    if freq == "weekly":
        days = sorted({int(d) % 7 for d in tp.get("repeat_dows") or [] if is_id(str(d))})
        return f"{head} * * {','.join(str(d) for d in days)}" if days else ""
    if freq == "monthly":
        dom = str(tp.get("repeat_dom") or "1")
        return f"{head} {dom if dom == 'last' or is_id(dom) else '1'} * *"
    return f"{head} * * *"


def blank_form(target: str = "contact", timezone: str = "Asia/Shanghai") -> dict[str, Any]:
    return {
        "name": "",
        "description": "",
        "target": target,
        "timezone": timezone,
        "channel": "mock",
        "anchor": "join",
        "anchor_tag": "",
        "start_at": "",
        "segment_kind": "new_friends" if target == "contact" else "groups",
        "segment_tags": "",
        "segment_accounts": "",
        "segment_name_pattern": "",
        "segment_attributes": "",
        "exit_tags_added": "",
        "exit_tags_removed": "",
        "exit_add_tags": "",
        "exit_on_inactive": True,
        "exit_on_segment_mismatch": True,
        "reentry": "never",
        "exclusive_with": "",
        "quiet_mode": "default",
        "quiet_start": "",
        "quiet_end": "",
        "quiet_policy": "defer",
        "cap_mode": "default",
        "cap_max": "",
        "cap_per": "",
        "cap_policy": "defer",
        "touchpoints": [
            {**blank_touchpoint(1), "timing_kind": "repeat" if target == "group" else "offset"}
        ],
    }


def _csv(values: Sequence[str] | None) -> str:
    return ", ".join(values or [])


def _split(text: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,，\s]+", text or "") if v.strip()]


def form_from_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A stored (or library) spec → the editor's form state."""
    form = blank_form(spec.get("target", "contact"), spec.get("timezone", "Asia/Shanghai"))
    for key in ("name", "description", "channel", "anchor", "reentry"):
        if spec.get(key) is not None:
            form[key] = spec[key]
    form["anchor_tag"] = spec.get("anchor_tag") or ""
    form["exclusive_with"] = ", ".join(str(i) for i in spec.get("exclusive_with") or [])
    start = spec.get("start_at")
    form["start_at"] = str(start)[:16].replace(" ", "T") if start else ""
    segment = spec.get("segment")
    if segment is None:
        form["segment_kind"] = ""
    else:
        kind = segment.get("kind") or ("groups" if form["target"] == "group" else "new_friends")
        form["segment_kind"] = kind
        tags = segment.get("tags")
        form["segment_tags"] = tags if isinstance(tags, str) else _csv(tags)
        form["segment_accounts"] = _csv(segment.get("accounts") or segment.get("owners"))
        form["segment_name_pattern"] = segment.get("name_pattern") or ""
        attributes = segment.get("attributes") or {}
        form["segment_attributes"] = (
            json.dumps(attributes, ensure_ascii=False) if attributes else ""
        )
    exit_rules = spec.get("exit") or {}
    form["exit_tags_added"] = _csv(exit_rules.get("tags_added"))
    form["exit_tags_removed"] = _csv(exit_rules.get("tags_removed"))
    form["exit_add_tags"] = _csv(exit_rules.get("add_tags"))
    form["exit_on_inactive"] = exit_rules.get("on_inactive", True)
    form["exit_on_segment_mismatch"] = exit_rules.get("on_segment_mismatch", True)
    quiet = spec.get("quiet_hours")
    if quiet in (False, "off") or (isinstance(quiet, dict) and quiet.get("off")):
        form["quiet_mode"] = "off"
    elif isinstance(quiet, str):
        form["quiet_mode"] = "custom"
        form["quiet_start"], _, form["quiet_end"] = (p.strip() for p in quiet.partition("-"))
    elif isinstance(quiet, dict):
        form["quiet_mode"] = "custom"
        form["quiet_start"] = quiet.get("start") or ""
        form["quiet_end"] = quiet.get("end") or ""
        form["quiet_policy"] = quiet.get("policy") or "defer"
    cap = spec.get("frequency_cap")
    if cap in (False, "off") or (isinstance(cap, dict) and cap.get("off")):
        form["cap_mode"] = "off"
    elif isinstance(cap, str):
        form["cap_mode"] = cap
    elif isinstance(cap, dict):
        if cap.get("preset"):
            form["cap_mode"] = cap["preset"]
        else:
            form["cap_mode"] = "custom"
            form["cap_max"] = str(cap.get("max") or "")
            form["cap_per"] = cap.get("per") or ""
        form["cap_policy"] = cap.get("policy") or "defer"
    form["touchpoints"] = [_touchpoint_form(tp) for tp in spec.get("touchpoints") or []]
    return form


def _touchpoint_form(tp: Mapping[str, Any]) -> dict[str, Any]:
    out = blank_touchpoint(2)
    out["name"] = tp.get("name") or ""
    timing = tp.get("timing")
    if isinstance(timing, str):  # library short forms
        from sop_templates.timing import parse_timing

        timing = parse_timing(timing)
    timing_into_form(out, timing or {})
    out["mode"] = tp.get("mode") or "send"
    editor_modes.into_form(out, tp)
    out["grace"] = tp.get("grace") or ""
    out["past_policy"] = tp.get("past_policy") or "skip"
    content = tp.get("content") or []
    if isinstance(content, str | dict):
        content = [content]
    parts = []
    for raw in content:
        from sop_templates.schemas import _normalize_part

        part = _normalize_part(raw)
        if not isinstance(part, dict):
            continue
        kind = part.get("kind", "text")
        parts.append(
            {
                "kind": kind,
                **{name: str(part.get(name) or "") for name, _ in PART_FIELDS.get(kind, ())},
            }
        )
    out["parts"] = parts
    return out


def form_from_request(data: Mapping[str, Any]) -> dict[str, Any]:
    """The posted form → form state (no validation; keeps what was typed)."""
    get = lambda key, default="": str(data.get(key, default) or "").strip()  # noqa: E731
    form = blank_form(get("target", "contact") or "contact", get("timezone") or "Asia/Shanghai")
    for key in form:
        if key == "touchpoints":
            continue
        if key.startswith("exit_on_"):
            form[key] = data.get(key) in ("on", "true", "1")
        elif key in data:
            form[key] = str(data.get(key) or "")
    count = int(get("tp-count", "0") or 0)
    touchpoints = []
    for i in range(min(count, 100)):
        prefix = f"tp-{i}-"
        tp = blank_touchpoint(2)
        for key in ("name", "mode", *TIMING_FIELDS):
            tp[key] = get(prefix + key, tp[key] if key != "shorthand" else "")
        getlist = getattr(data, "getlist", None)
        dows = getlist(prefix + "repeat_dow") if getlist else data.get(prefix + "repeat_dow")
        tp["repeat_dows"] = (
            [str(d) for d in (dows or [])]
            if isinstance(dows, list)
            else ([str(dows)] if dows else [])
        )
        _apply_shorthand(tp)
        editor_modes.from_request(tp, data, prefix)
        tp["grace"] = get(prefix + "grace")
        tp["past_policy"] = get(prefix + "past_policy", "skip") or "skip"
        parts = []
        for j in range(min(int(get(prefix + "part-count", "0") or 0), 50)):
            kind = get(f"{prefix}part-{j}-kind", "text")
            if kind not in PART_KINDS:
                kind = "text"
            part = {"kind": kind}
            for name, _ in PART_FIELDS[kind]:
                # text keeps its line breaks and spacing
                value = data.get(f"{prefix}part-{j}-{name}", "") or ""
                part[name] = str(value) if name == "text" else str(value).strip()
            parts.append(part)
        tp["parts"] = parts
        touchpoints.append(tp)
    form["touchpoints"] = touchpoints
    return form


def _apply_shorthand(tp: dict[str, Any]) -> None:
    """Typed shorthand (3小时, 第2天 20:00, 每天 11:00) sets the pickers and is cleared;
    shorthand that is not understood stays, and validation names it."""
    text = tp.get("shorthand", "").strip()
    if not text:
        return
    from sop_templates.timing import parse_duration, parse_timing

    try:
        timing = parse_timing(text)
        if timing.get("kind") == "offset":
            parse_duration(str(timing["offset"]))
    except ValueError:
        return
    timing_into_form(tp, timing)
    tp["shorthand"] = ""


def spec_from_form(form: Mapping[str, Any]) -> dict[str, Any]:
    """Form state → a spec dict for ``parse_spec`` (which does all validation)."""
    spec: dict[str, Any] = {
        "name": form["name"].strip(),
        "description": form["description"].strip(),
        "target": form["target"],
        "timezone": form["timezone"].strip(),
        "anchor": form["anchor"],
        "channel": form["channel"].strip() or "mock",
        "reentry": form["reentry"] or "never",
        "touchpoints": [_touchpoint_spec(tp) for tp in form["touchpoints"]],
    }
    exclusive = [int(v) for v in _split(form.get("exclusive_with", "")) if v.isdigit()]
    if exclusive:  # set in the overlap warning (one click), carried by the form
        spec["exclusive_with"] = exclusive
    if form["anchor"] == "tag" or form["anchor_tag"].strip():
        spec["anchor_tag"] = form["anchor_tag"].strip() or None
    if form["anchor"] == "fixed" or form["start_at"].strip():
        spec["start_at"] = form["start_at"].strip() or None
    kind = form["segment_kind"]
    if kind:
        segment: dict[str, Any] = {"kind": kind}
        accounts = _split(form["segment_accounts"])
        if kind == "tagged":
            segment["tags"] = form["segment_tags"].strip()
        if kind == "groups":
            if form["segment_tags"].strip():
                segment["tags"] = form["segment_tags"].strip()
            if form["segment_name_pattern"].strip():
                segment["name_pattern"] = form["segment_name_pattern"].strip()
            if accounts:
                segment["owners"] = accounts
        elif accounts:
            segment["accounts"] = accounts
        attributes = form["segment_attributes"].strip()
        if attributes:
            try:
                segment["attributes"] = json.loads(attributes)
            except json.JSONDecodeError:
                segment["attributes"] = attributes  # parse_spec reports it at segment.attributes
        spec["segment"] = segment
    spec["exit"] = {
        "tags_added": _split(form["exit_tags_added"]),
        "tags_removed": _split(form["exit_tags_removed"]),
        "add_tags": _split(form["exit_add_tags"]),
        "on_inactive": bool(form["exit_on_inactive"]),
        "on_segment_mismatch": bool(form["exit_on_segment_mismatch"]),
    }
    if form["quiet_mode"] == "off":
        spec["quiet_hours"] = "off"
    elif form["quiet_mode"] == "custom":
        spec["quiet_hours"] = {
            "start": form["quiet_start"].strip() or None,
            "end": form["quiet_end"].strip() or None,
            "policy": form["quiet_policy"] or "defer",
        }
    if form["cap_mode"] == "off":
        spec["frequency_cap"] = "off"
    elif form["cap_mode"] in CAP_PRESETS:
        spec["frequency_cap"] = {
            "preset": form["cap_mode"],
            "policy": form["cap_policy"] or "defer",
        }
    elif form["cap_mode"] == "custom":
        spec["frequency_cap"] = {
            "max": form["cap_max"].strip() or None,
            "per": form["cap_per"].strip() or None,
            "policy": form["cap_policy"] or "defer",
        }
    return spec


def _touchpoint_spec(tp: Mapping[str, Any]) -> dict[str, Any]:
    kind = tp["timing_kind"]
    timing: dict[str, Any] | str = {"kind": "cron" if kind == "repeat" else kind}
    assert isinstance(timing, dict)
    if kind == "offset":
        number = str(tp.get("offset_n", "")).strip()
        unit = tp.get("offset_unit") or "m"
        unit = unit if unit in OFFSET_UNITS else "m"
        timing["offset"] = f"{number}{unit}" if number.isdigit() else number
    elif kind == "day_at":
        timing["day"] = tp["day"]
        timing["at"] = tp["at"]
    elif kind == "at":
        timing["at"] = tp["datetime"]
    else:
        timing["cron"] = repeat_cron(tp) if kind == "repeat" else tp["cron"]
        bounds = ("end",) if kind == "repeat" else ("start", "end")
        for bound in bounds:
            if tp.get(f"cron_{bound}", "").strip():
                timing[bound] = tp[f"cron_{bound}"].strip()
    if tp.get("shorthand", "").strip():
        timing = tp["shorthand"].strip()  # not understood: validation names it
    out: dict[str, Any] = {
        "name": tp["name"].strip(),
        "timing": timing,
        "content": [
            {
                "kind": part["kind"],
                **{
                    name: part.get(name, "")
                    for name, required in PART_FIELDS[part["kind"]]
                    if required or part.get(name)
                },
            }
            for part in tp["parts"]
        ],
        "mode": tp["mode"] or "send",
        "past_policy": tp["past_policy"] or "skip",
    }
    editor_modes.into_spec(out, tp)
    if tp["grace"].strip():
        out["grace"] = tp["grace"].strip()
    return out


# -- structural actions ------------------------------------------------------------


def apply_action(form: dict[str, Any], action: str, data: Mapping[str, Any]) -> bool:
    """Add / move / remove a touchpoint or a part. True when ``action`` was one."""
    tps: list[dict[str, Any]] = form["touchpoints"]
    verb, _, rest = action.partition(":")
    args = [int(a) for a in rest.split(":") if is_id(a)]
    if verb == "add_touchpoint":
        n = len(tps) + 1
        names = {tp["name"] for tp in tps}
        name_format = str(data.get("_step_name") or "Step %d")
        while name_format % n in names:
            n += 1
        tps.append(
            new_touchpoint(
                len(tps) + 1,
                str(form.get("target") or "contact"),
                name_format % n,
                str(data.get("_step_text") or ""),
            )
        )
    elif verb == "remove_touchpoint" and args and args[0] < len(tps):
        tps.pop(args[0])
    elif verb in ("up", "down") and args and args[0] < len(tps):
        i = args[0]
        j = i - 1 if verb == "up" else i + 1
        if 0 <= j < len(tps):
            tps[i], tps[j] = tps[j], tps[i]
    elif verb == "add_part" and args and args[0] < len(tps):
        kind = str(data.get(f"tp-{args[0]}-new-part") or "text")
        tps[args[0]]["parts"].append(_blank_part(kind if kind in PART_KINDS else "text"))
    elif verb == "remove_part" and len(args) == 2 and args[0] < len(tps):
        parts = tps[args[0]]["parts"]
        if args[1] < len(parts):
            parts.pop(args[1])
    elif verb in ("part_up", "part_down") and len(args) == 2 and args[0] < len(tps):
        parts = tps[args[0]]["parts"]
        i = args[1]
        j = i - 1 if verb == "part_up" else i + 1
        if 0 <= i < len(parts) and 0 <= j < len(parts):
            parts[i], parts[j] = parts[j], parts[i]
    else:
        return False
    return True
