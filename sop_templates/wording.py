"""One vocabulary: timings, policies and skip/defer/failure reasons in the words
operators use, in Simplified Chinese (``zh_CN``, the default) and English (``en``).

Every page, the CSV export, the report and the audit trail show a timing through
:func:`timing_text`, a quiet-hours or frequency-cap rule through :func:`quiet_text`
and :func:`cap_text`, and a stored reason through :func:`reason_text`; nothing
shows the stored codes (``+3h``, ``cron 0 11 * * *``, ``2 per 1d``).

    >>> timing_text({"kind": "offset", "offset": "3h"})
    '加好友后 3 小时'
    >>> timing_text({"kind": "cron", "cron": "30 11 * * 1-5"}, "en")
    'every weekday at 11:30'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from sop_templates.reason_words import REASON_WORDS
from sop_templates.timing import parse_duration, parse_timing

ZH = "zh_CN"
EN = "en"


def _lang(lang: str | None) -> str:
    return EN if (lang or "").lower().startswith("en") else ZH


# -- durations -----------------------------------------------------------------------

_ZH_UNITS = (("d", 86400, "天"), ("h", 3600, "小时"), ("m", 60, "分钟"), ("s", 1, "秒"))
_EN_UNITS = (
    ("d", 86400, ("day", "days")),
    ("h", 3600, ("hour", "hours")),
    ("m", 60, ("minute", "minutes")),
    ("s", 1, ("second", "seconds")),
)


def duration_text(value: timedelta | str, lang: str | None = ZH) -> str:
    """``3h`` → ``3 小时`` / ``3 hours``; ``1d6h`` → ``1 天 6 小时``."""
    delta = parse_duration(value) if isinstance(value, str) else value
    rest = int(delta.total_seconds())
    words: list[str] = []
    if _lang(lang) == ZH:
        for _, size, unit in _ZH_UNITS:
            n, rest = divmod(rest, size)
            if n:
                words.append(f"{n} {unit}")
        return " ".join(words) or "0 分钟"
    for _, size, (one, many) in _EN_UNITS:
        n, rest = divmod(rest, size)
        if n:
            words.append(f"{n} {one if n == 1 else many}")
    return " ".join(words) or "0 minutes"


# -- anchors -------------------------------------------------------------------------

# (zh, en) of "after <anchor>" by anchor and target kind
_AFTER: dict[tuple[str, str], tuple[str, str]] = {
    ("join", "contact"): ("加好友后", "after being added as a friend"),
    ("join", "group"): ("进入 SOP 后", "after the group enters the SOP"),
    ("tag", "contact"): ("打标签后", "after being tagged"),
    ("tag", "group"): ("群打标签后", "after the group is tagged"),
    ("fixed", "contact"): ("开始后", "after the start"),
    ("fixed", "group"): ("开始后", "after the start"),
}


def anchor_after(anchor: str = "join", target: str = "contact", lang: str | None = ZH) -> str:
    """``加好友后`` / ``打标签后`` / ``开始后`` (groups: ``进入 SOP 后``)."""
    zh, en = _AFTER.get((anchor, target), _AFTER[("join", "contact")])
    return en if _lang(lang) == EN else zh


def anchor_day_one(anchor: str = "join", target: str = "contact", lang: str | None = ZH) -> str:
    """What day 1 is: the day the friend was added / tagged / the start."""
    zh = {"join": "加好友当天" if target == "contact" else "进入 SOP 当天", "tag": "打标签当天"}
    en = {
        "join": "the day of adding" if target == "contact" else "the day it enters",
        "tag": "the day of tagging",
    }
    table = en if _lang(lang) == EN else zh
    return table.get(anchor, "开始当天" if _lang(lang) == ZH else "the start day")


# -- timings -------------------------------------------------------------------------

_ZH_DOW = "日一二三四五六"
_EN_DOW = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


def _clock_list(minute: str, hour: str) -> list[str] | None:
    if not (re.fullmatch(r"\d{1,2}(,\d{1,2})*", hour) and re.fullmatch(r"\d{1,2}", minute)):
        return None
    return [f"{int(h):02d}:{int(minute):02d}" for h in hour.split(",")]


def _dow_list(field: str) -> list[int] | None:
    days: set[int] = set()
    for item in field.split(","):
        if re.fullmatch(r"[0-7]", item):
            days.add(int(item) % 7)
        elif match := re.fullmatch(r"([0-7])-([0-7])", item):
            lo, hi = int(match.group(1)), int(match.group(2))
            if lo > hi:
                return None
            days.update(d % 7 for d in range(lo, hi + 1))
        else:
            return None
    return sorted(days)


def repeat_parts(cron: str) -> dict[str, Any] | None:
    """A cron the repeat picker can show: ``{"freq": daily|weekdays|weekly|monthly,
    "times": [HH:MM...], "dows": [0..6], "dom": "1".."31"|"last"}``; None otherwise."""
    fields = cron.split()
    if len(fields) != 5:
        return None
    minute, hour, day, month, dow = fields
    times = _clock_list(minute, hour)
    if times is None or month != "*":
        return None
    if day == "*" and dow == "*":
        return {"freq": "daily", "times": times, "dows": [], "dom": ""}
    if day == "*":
        days = _dow_list(dow)
        if days is None:
            return None
        if days == [1, 2, 3, 4, 5]:
            return {"freq": "weekdays", "times": times, "dows": days, "dom": ""}
        return {"freq": "weekly", "times": times, "dows": days, "dom": ""}
    if dow == "*" and (day == "last" or re.fullmatch(r"\d{1,2}", day)):
        dom = "last" if day == "last" else str(int(day))
        return {"freq": "monthly", "times": times, "dows": [], "dom": dom}
    return None


def _cron_text(cron: str, lang: str) -> str:
    parts = repeat_parts(cron)
    zh = lang == ZH
    if parts is None:
        return f"按计划 {cron}" if zh else f"on the schedule {cron}"
    times = ("、" if zh else ", ").join(parts["times"])
    freq = parts["freq"]
    if freq == "daily":
        return f"每天 {times}" if zh else f"every day at {times}"
    if freq == "weekdays":
        return f"每个工作日 {times}" if zh else f"every weekday at {times}"
    if freq == "weekly":
        days = parts["dows"]
        if days == [0, 6]:
            return f"每个周末 {times}" if zh else f"every weekend at {times}"
        ordered = sorted(days, key=lambda d: (d == 0, d))  # Monday first, Sunday last
        if zh:
            return "每周" + "、".join(_ZH_DOW[d] for d in ordered) + f" {times}"
        return "every " + ", ".join(_EN_DOW[d] for d in ordered) + f" at {times}"
    if parts["dom"] == "last":
        return f"每月最后一天 {times}" if zh else f"on the last day of every month at {times}"
    return (
        f"每月 {parts['dom']} 日 {times}"
        if zh
        else f"on day {parts['dom']} of every month at {times}"
    )


def _local_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)[:16].replace("T", " ")


def timing_text(
    timing: Any, lang: str | None = ZH, *, anchor: str = "join", target: str = "contact"
) -> str:
    """A stored timing (model, dict or short form) in words:
    ``加好友后 3 小时``, ``第 2 天 20:00``, ``每个工作日 11:30``, ``2027-03-05 10:00``."""
    lang = _lang(lang)
    zh = lang == ZH
    try:
        data: Mapping[str, Any] = (
            timing.model_dump() if isinstance(timing, BaseModel) else parse_timing(timing)
        )
    except ValueError:
        return str(timing)
    kind = data.get("kind")
    if kind == "offset":
        delta = parse_duration(str(data.get("offset", "0m")))
        after = anchor_after(anchor, target, lang)
        if not delta:
            return (after.removesuffix("后") + "后立即") if zh else f"right {after}"
        return (
            f"{after} {duration_text(delta, lang)}"
            if zh
            else f"{duration_text(delta, lang)} {after}"
        )
    if kind == "day_at":
        day, at = data.get("day"), data.get("at")
        return f"第 {day} 天 {at}" if zh else f"day {day} at {at}"
    if kind == "at":
        return _local_text(data.get("at"))
    if kind == "cron":
        text = _cron_text(" ".join(str(data.get("cron", "")).split()), lang)
        if data.get("start"):
            text += (
                f"，{_local_text(data['start'])} 起"
                if zh
                else f", from {_local_text(data['start'])}"
            )
        if data.get("end"):
            text += (
                f"，至 {_local_text(data['end'])} 止"
                if zh
                else f", until {_local_text(data['end'])}"
            )
        return text
    return str(timing)


# -- policies ------------------------------------------------------------------------

_CAP_PRESETS = {
    "wecom_daily": ("每天最多 1 条", "at most 1 per day"),
    "wecom_weekly": ("每周最多 7 条", "at most 7 per week"),
    "wecom_monthly_days": ("每月最多发送天数等于当月天数", "at most one per day of the month"),
}


def cap_text(
    cap: Any = None, lang: str | None = ZH, *, max_count: int | None = None, per: str | None = None
) -> str:
    """``2 per 1d`` / ``{"max": 2, "per": "1d"}`` / ``wecom_daily`` → ``每天最多 2 条``."""
    zh = _lang(lang) == ZH
    if isinstance(cap, Mapping):
        if cap.get("preset"):
            cap = cap["preset"]
        else:
            max_count, per = cap.get("max"), cap.get("per")
            cap = None
    if isinstance(cap, str):
        if cap in _CAP_PRESETS:
            return _CAP_PRESETS[cap][0 if zh else 1]
        match = re.fullmatch(r"(\d+) per (\S+)", cap)
        if match:
            max_count, per = int(match.group(1)), match.group(2)
    if max_count is None or not per:
        return str(cap or "")
    delta = parse_duration(str(per))
    units = {
        86400: ("每天", "per day"),
        3600: ("每小时", "per hour"),
        604800: ("每 7 天", "per 7 days"),
    }
    if int(delta.total_seconds()) in units:
        zh_per, en_per = units[int(delta.total_seconds())]
    else:
        zh_per, en_per = f"每 {duration_text(delta, ZH)}", f"per {duration_text(delta, EN)}"
    return f"{zh_per}最多 {max_count} 条" if zh else f"at most {max_count} {en_per}"


def quiet_text(label: str | None, lang: str | None = ZH, policy: str = "defer") -> str:
    """``22:00-08:00`` → ``免打扰时段 22:00–08:00，顺延至 08:00``."""
    zh = _lang(lang) == ZH
    if not label:
        return "无免打扰时段" if zh else "no quiet hours"
    start, _, end = label.partition("-")
    if zh:
        tail = "，期间跳过" if policy == "skip" else f"，顺延至 {end}"
        return f"免打扰时段 {start}–{end}{tail}"
    tail = ", skipped inside" if policy == "skip" else f", deferred to {end}"
    return f"quiet hours {start}–{end}{tail}"


# -- reasons -------------------------------------------------------------------------

_TS = r"(\d{4}-\d{2}-\d{2} (\d{2}:\d{2}))"
_REASONS: list[tuple[re.Pattern[str], str, str]] = [
    (
        re.compile(r"^quiet hours (\S+) \([^)]*\): deferred from " + _TS + " to " + _TS + "$"),
        "免打扰时段顺延至 {5}",
        "deferred by quiet hours to {5}",
    ),
    (
        re.compile(r"^quiet hours (\S+) \([^)]*\): " + _TS + " is inside, skipped by policy$"),
        "处于免打扰时段 {1}，按设置跳过",
        "inside quiet hours {1}, skipped",
    ),
    (
        re.compile(
            r"^frequency cap (.+?): (\d+) already sent this (\w+), deferred to "
            + _TS
            + r" \([^)]*\)(?:, after quiet hours (\S+))?$"
        ),
        "已达频率上限（{cap}），顺延至 {5}",
        "frequency cap reached ({cap}), deferred to {5}",
    ),
    (
        re.compile(r"^frequency cap (.+?): (\d+) already sent this (\w+), skipped by policy$"),
        "已达频率上限（{cap}），按设置跳过",
        "frequency cap reached ({cap}), skipped",
    ),
    (
        re.compile(r"^time already past when enrolled$"),
        "加入时该时间已过，已跳过",
        "the time had already passed at entry; skipped",
    ),
    (
        re.compile(r"^already past its grace period when enrolled$"),
        "加入时已超过可延迟发送的时限，已跳过",
        "past its late-sending limit at entry; skipped",
    ),
    (
        re.compile(r"^due before enrollment: goes out at once$"),
        "加入前已到时间，加入后立即发送",
        "due before entry: goes out at once",
    ),
    (
        re.compile(r"^occurrence passed while no scheduler was running$"),
        "调度服务停止期间错过了这次发送",
        "missed while the scheduler was not running",
    ),
    (re.compile(r"^template archived$"), "SOP 已归档", "SOP archived"),
    *REASON_WORDS,
]


def reason_text(reason: str | None, lang: str | None = ZH) -> str:
    """A stored skip / defer / failure reason in the operator's words. Reasons
    that name no known rule (a channel's own error text) are shown as stored.
    A note joined to a reason (``"{note}; {reason}"``, ``outbox.sending``) is
    worded part by part."""
    if not reason:
        return ""
    start = reason.find("; ")
    while start != -1:
        head, tail = reason[:start], reason[start + 2 :]
        worded = _one_reason(tail, lang)
        if worded != tail:
            return ("；" if _lang(lang) == ZH else "; ").join([reason_text(head, lang), worded])
        start = reason.find("; ", start + 2)
    return _one_reason(reason, lang)


def _one_reason(reason: str, lang: str | None) -> str:
    zh = _lang(lang) == ZH
    for pattern, zh_text, en_text in _REASONS:
        match = pattern.match(reason)
        if match:
            groups = [match.group(0), *match.groups()]
            cap = ""
            if "{cap}" in zh_text:
                cap = cap_text(match.group(1), lang)
            named = {k: v or "" for k, v in match.groupdict().items()}
            if named.get("inner"):
                named["inner"] = reason_text(named["inner"], lang)
            return (zh_text if zh else en_text).format(*groups, cap=cap, **named)
    return reason


# -- upcoming sends ------------------------------------------------------------------


def when_text(at: datetime, now: datetime, lang: str | None = ZH) -> str:
    """A local time near ``now`` (both in the same zone): ``今天 11:00``,
    ``明天 11:00``, ``后天 11:00``, else ``周五 03-05 11:00``."""
    zh = _lang(lang) == ZH
    days = (at.date() - now.date()).days
    clock = at.strftime("%H:%M")
    names = {0: ("今天", "today"), 1: ("明天", "tomorrow"), 2: ("后天", "the day after tomorrow")}
    if days in names:
        return f"{names[days][0 if zh else 1]} {clock}"
    weekday = (at.weekday() + 1) % 7  # 0 = Sunday, as _ZH_DOW / _EN_DOW
    if zh:
        return f"周{_ZH_DOW[weekday]} {at.strftime('%m-%d')} {clock}"
    return f"{_EN_DOW[weekday]} {at.strftime('%m-%d')} {clock}"


def recipients_text(count: int, target_kind: str, lang: str | None = ZH) -> str:
    """``4 个群`` / ``3 位客户`` / ``4 groups`` / ``1 contact``."""
    if _lang(lang) == ZH:
        return f"{count} 个群" if target_kind == "group" else f"{count} 位客户"
    noun = "group" if target_kind == "group" else "contact"
    return f"{count} {noun}{'' if count == 1 else 's'}"


def next_send_text(
    at: datetime, now: datetime, count: int, target_kind: str, lang: str | None = ZH
) -> str:
    """``下次发送：明天 11:00，4 个群`` / ``Next send: tomorrow 11:00, 4 groups``."""
    when = when_text(at, now, lang)
    who = recipients_text(count, target_kind, lang)
    return f"下次发送：{when}，{who}" if _lang(lang) == ZH else f"Next send: {when}, {who}"


def day_text(day: Any, today: Any, lang: str | None = ZH) -> str:
    """A calendar day's heading: ``明天 · 周三 03-03`` / ``tomorrow · Wed 03-03``."""
    zh = _lang(lang) == ZH
    weekday = (day.weekday() + 1) % 7
    label = (
        f"周{_ZH_DOW[weekday]} {day.strftime('%m-%d')}"
        if zh
        else f"{_EN_DOW[weekday]} {day.strftime('%m-%d')}"
    )
    names = {0: ("今天", "today"), 1: ("明天", "tomorrow"), 2: ("后天", "the day after tomorrow")}
    offset = (day - today).days
    if offset in names:
        return f"{names[offset][0 if zh else 1]} · {label}"
    return label
