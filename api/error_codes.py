"""Error codes: every validation problem and API error as a code with parameters,
rendered in the operator's language (``zh_CN`` or ``en``) with the field named
in words. No validator's own text (pydantic, Jinja, a ValueError) reaches a page.

``classify(location, message)`` reads a problem as the validators write it
(``touchpoints[1].timing.offset``, ``offset 'soon' is not a duration like ...``)
into ``(code, params)``; ``render(code, params, locale)`` writes it for people;
``field_name(location, locale)`` names the field (第 2 个触达点 · 时间).
A problem no rule recognises is ``invalid`` ("此项填写有误"), never its raw text.
"""

from __future__ import annotations

import re
from typing import Any

from api.error_words import FIELDS, MESSAGES, STATUS_WORDS

ZH, EN = "zh_CN", "en"


_LOC_SOURCES = ("body", "query", "path", "header", "cookie")


def validation_body(problems: list[dict[str, Any]], locale: str = ZH) -> dict[str, Any]:
    """A malformed request's 422: FastAPI's ``detail`` list kept, with a
    top-level ``code``, ``params`` and ``message`` in ``locale``."""
    if any(p.get("type") == "json_invalid" for p in problems):
        code, params = "json_invalid", {}
    else:
        loc = problems[0].get("loc", ()) if problems else ()
        parts = [str(x) for x in loc if x not in _LOC_SOURCES] or [str(x) for x in loc[:1]]
        params = {"name": ".".join(parts) or _this(locale), "count": len(problems)}
        code = "request_invalid"
    return {
        "detail": problems,
        "code": code,
        "params": params,
        "message": render(code, params, locale),
    }


_Q = r"['\"](?P<value>.*?)['\"]"
# (pattern on the validator's message, code); named groups become params
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Field required"), "required"),
    (re.compile(r"^String should have at least 1 character"), "required"),
    (re.compile(r"^String should have at least (?P<min>\d+)"), "too_short"),
    (re.compile(r"^(?:String|List) should have at most (?P<max>\d+)"), "too_long"),
    (re.compile(r"^List should have at least 1 item"), "content_empty"),
    (re.compile(r"^Input should be a valid integer"), "not_integer"),
    (re.compile(r"^Input should be a valid number"), "not_number"),
    (re.compile(r"^Input should be greater than(?: or equal to)? (?P<min>\S+)"), "too_small"),
    (re.compile(r"^Input should be less than(?: or equal to)? (?P<max>\S+)"), "too_large"),
    (re.compile(r"^Input should be a valid (?:datetime|date)"), "invalid_datetime"),
    (re.compile(r"^Input should be a valid dictionary|is an object such as"), "not_a_mapping"),
    (re.compile(r"^Input should be a valid list"), "not_a_list"),
    (re.compile(r"^Input should be (?:'|a valid|an? )"), "invalid_type"),
    (re.compile(r"^Input tag .* does not match"), "invalid_choice"),
    (re.compile(r"^Unable to extract tag"), "invalid_type"),
    (re.compile(r"^Extra inputs are not permitted"), "unknown_field"),
    (re.compile(r"^offset .* is negative"), "offset_negative"),
    (re.compile(r"^offset " + _Q + r" is not a duration"), "offset_invalid"),
    (re.compile(r"is more than ten years"), "too_far_ahead"),
    (re.compile(r"^time " + _Q + r" is not HH:MM"), "time_invalid"),
    (re.compile(r"^day (?P<day>-?\d+) does not exist"), "day_invalid"),
    (re.compile(r"^cron " + _Q + r" never fires"), "repeat_never"),
    (re.compile(r"^cron " + _Q + r" (?:needs 5 fields|is not valid)"), "repeat_invalid"),
    (re.compile(r"^cron end must be after"), "end_before_start"),
    (re.compile(r"is outside \d{4}-\d{4}"), "date_out_of_range"),
    (re.compile(r"is not a date-time like"), "invalid_datetime"),
    (re.compile(r"time zone|zone " + _Q), "timezone_unknown"),
    (re.compile(r"^touchpoint names must be unique; repeated: (?P<names>.*)$"), "names_not_unique"),
    (re.compile(r"^anchor 'fixed' needs start_at"), "fixed_needs_start"),
    (re.compile(r"^anchor 'tag' needs anchor_tag"), "tag_needs_tag"),
    (re.compile(r"segment selects \w+s; this template targets"), "segment_target_mismatch"),
    (re.compile(r"^a new_friends segment needs anchor 'join'"), "new_friends_needs_join"),
    (re.compile(r"^content is empty"), "content_empty"),
    (re.compile(r"^quiet hours .* are not like"), "quiet_invalid"),
    (re.compile(r"^quiet hours (?:are either off|need a start)"), "quiet_incomplete"),
    (re.compile(r"^quiet hours start and end are the same"), "quiet_same"),
    (re.compile(r"frequency cap|^per .* must be between"), "cap_invalid"),
    (
        re.compile(r"undefined variable: (?P<name>[\w.]+) has no field '(?P<field>\w+)'"),
        "variable_unknown",
    ),
    (re.compile(r"undefined variable: '?(?P<name>[\w.]+)'? is undefined"), "variable_unknown"),
    (re.compile(r"has no attribute '(?P<name>\w+)'"), "variable_unknown"),
    (re.compile(r"template syntax error on line (?P<line>\d+)"), "template_syntax"),
    (re.compile(r"not allowed in a message template"), "template_forbidden"),
    (re.compile(r"渲染递归过深"), "template_forbidden"),
    (re.compile(r"^内容过长"), "render_too_long"),
    (re.compile(r"^渲染超时"), "render_too_slow"),
    (
        re.compile(
            r"^文字 (?P<size>\d+) 字节，超过渠道 (?P<channel>\S+?)（.*?每条消息 (?P<limit>\d+) 字节"
        ),
        "text_over_channel_limit",
    ),
    (re.compile(r"^url " + _Q + r" is not an https"), "url_invalid"),
    (re.compile(r"^appid " + _Q), "appid_invalid"),
    (re.compile(r"^page " + _Q), "page_invalid"),
    (re.compile(r"^a template named " + _Q + " already exists"), "name_taken"),
    (re.compile(r"^mode welcome is only for a new-friend"), "welcome_placement"),
    (re.compile(r"^a moment is text plus up to 9 images"), "moment_mixed"),
    (re.compile(r"^a moment cannot carry"), "moment_kinds"),
    (re.compile(r"^a moment carries at most \d+ images, not (?P<count>\d+)"), "moment_images"),
    (re.compile(r"^video " + _Q + r" is not a WeCom media id"), "video_media"),
    (re.compile(r"^fallback is only for mode welcome"), "fallback_only_welcome"),
    (re.compile(r"^visible_to is only for mode moment"), "visible_only_moment"),
    (re.compile(r"^未定义的变量 (?P<name>[\w.]+)"), "variable_unknown"),
]


# (pattern on a domain error's message, code) for answers other than 422;
# named groups become params
_DOMAIN_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^no SOP template (?:with id|named) '?(?P<key>.*?)'?$"), "template_not_found"),
    (re.compile(r"^no template version with id (?P<key>\d+)"), "version_not_found"),
    (re.compile(r"^no contact with id (?:or external id )?'?(?P<key>.*?)'?$"), "contact_not_found"),
    (
        re.compile(r"^no group chat with id (?:or external id )?'?(?P<key>.*?)'?$"),
        "group_not_found",
    ),
    (re.compile(r"^no channel instance named '(?P<key>.*)'$"), "channel_not_found"),
    (re.compile(r"^no user with id (?P<key>\d+)"), "user_not_found"),
    (re.compile(r"^no API token with id (?P<key>\d+)"), "token_not_found"),
    (re.compile(r"^a template named " + _Q + " already exists"), "name_taken"),
    (re.compile(r"^template " + _Q + r" is archived"), "template_archived"),
    (re.compile(r"^a published template cannot change its target kind"), "target_kind_frozen"),
    (re.compile(r"^cannot set status .* directly"), "status_not_settable"),
    (
        re.compile(r"^template " + _Q + r" is (?P<status>\w+); cannot make it (?P<to>\w+)"),
        "status_not_allowed",
    ),
    (re.compile(r"^template " + _Q + r" has never been published"), "never_published"),
    (re.compile(r"^template " + _Q + r" is \w+; only a published template"), "not_published"),
    (re.compile(r"^template " + _Q + r" needs approval"), "needs_approval"),
    (re.compile(r"^this draft is already approved"), "already_approved"),
    (re.compile(r"^template " + _Q + r" is not waiting for approval"), "not_waiting_for_approval"),
    (re.compile(r"^you wrote or submitted this draft"), "own_draft"),
    (re.compile(r"^the draft changed after it was"), "draft_changed"),
    (re.compile(r"^a rejection needs a reason"), "reason_required"),
    (re.compile(r"^the draft has no touchpoint named " + _Q), "touchpoint_unknown"),
    (re.compile(r"^the draft no longer validates"), "draft_invalid"),
    (re.compile(r"^template " + _Q + r" has no segment"), "no_segment"),
    (re.compile(r"^a channel instance named " + _Q + " already exists"), "channel_exists"),
    (re.compile(r"^config contains a masked value"), "channel_config_masked"),
    (re.compile(r"^invalid config for '(?P<adapter>[^']*)' channel"), "channel_config_invalid"),
    (re.compile(r"^unknown channel adapter '(?P<adapter>[^']*)'"), "adapter_unknown"),
    (
        re.compile(r"^(?:channel adapter|adapter|SOPBOT_REDIS_URL|channel '.*' cannot)"),
        "channel_unavailable",
    ),
    (re.compile(r"^unknown role (?P<roles>[^;]*);"), "role_unknown"),
    (re.compile(r"^a user needs at least one role"), "role_required"),
    (re.compile(r"^the password needs at least (?P<min>\d+)"), "password_too_short"),
    (re.compile(r"^a username has 2-64"), "username_invalid"),
    (re.compile(r"^a user named " + _Q + " already exists"), "user_exists"),
    (re.compile(r"^this is the last active admin"), "last_admin"),
    (re.compile(r"^give the token a name"), "token_name_required"),
    (re.compile(r"^this setup link is not valid"), "setup_link_invalid"),
    (re.compile(r"^an account needs an external id"), "external_id_required"),
    (re.compile(r"^the external id or the name is too long"), "external_id_too_long"),
    (re.compile(r"security token \(CSRF\)"), "csrf_invalid"),
    (re.compile(r"^this needs "), "forbidden"),
]
_BY_STATUS = {
    400: "body_unreadable",
    401: "not_authenticated",
    403: "forbidden",
    404: "resource_not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    422: "invalid",
}
_RENAMED = {"template_archived", "status_not_allowed", "never_published", "not_published"}
_RENAMED |= {"needs_approval", "not_waiting_for_approval", "no_segment", "channel_exists"}
_RENAMED |= {"user_exists", "name_taken", "touchpoint_unknown"}


def classify_error(message: str, status: int) -> tuple[str, dict[str, Any]]:
    """A domain error's message (``no SOP template with id 7``) and the answer's
    status → ``(code, params)``; a message no rule knows gets its status's code."""
    text = str(message or "")
    for pattern, code in _DOMAIN_RULES:
        match = pattern.search(text)
        if match:
            params = {k: v for k, v in match.groupdict().items() if v is not None}
            if code in _RENAMED and "value" in params:
                params["name"] = params.pop("value")
            return code, params
    return _BY_STATUS.get(status, "bad_request" if status < 500 else "conflict"), {}


def error_body(detail: Any, status: int, locale: str = ZH) -> dict[str, Any]:
    """The JSON of an answer other than a template's 422: ``detail`` as before
    (the domain's own text), and ``code``, ``params`` and ``message`` in ``locale``."""
    code, params = classify_error(detail if isinstance(detail, str) else "", status)
    if isinstance(detail, dict) and "errors" in detail:  # a batch refused as a whole
        code, params = "batch_rejected", {}
    return {
        "detail": detail,
        "code": code,
        "params": params,
        "message": render(code, params, locale),
    }


_WHOM = re.compile(r" \(for (contact|group) (.+)\)$")


def classify(location: str, message: str) -> tuple[str, dict[str, Any]]:
    """A validator's problem → ``(code, params)``."""
    text = str(message).removeprefix("Value error, ")
    whom: dict[str, str] = {}
    if found := _WHOM.search(text):  # content checked for a real contact or group
        whom = {"for_kind": found.group(1), "for_name": found.group(2)}
        text = text[: found.start()]
    for pattern, code in _RULES:
        match = pattern.search(text)
        if match:
            params = {k: v for k, v in match.groupdict().items() if v is not None} | whom
            if code == "name_taken":
                params["name"] = params.pop("value", "")
            if code == "variable_unknown" and "field" in params:
                params["name"] = f"{params['name']}.{params.pop('field')}"
            return code, params
    if location.endswith(".timing.cron") or location.endswith("timing"):
        return "repeat_incomplete" if "cron" in text else "invalid", {}
    return "invalid", {}


def field_name(location: str, locale: str = ZH) -> str:
    """``touchpoints[1].content[0].url`` → 第 2 个触达点 · 内容 1 · 链接."""
    zh = not locale.startswith("en")
    words: list[str] = []
    for piece in filter(None, str(location).split(".")):
        match = re.fullmatch(r"(\w+)\[(\d+)\]", piece)
        key, index = (match.group(1), int(match.group(2))) if match else (piece, None)
        if key == "touchpoints" and index is not None:
            words.append(f"第 {index + 1} 个触达点" if zh else f"touchpoint {index + 1}")
        elif key == "content" and index is not None:
            words.append(f"内容 {index + 1}" if zh else f"content {index + 1}")
        elif key in FIELDS:
            words.append(FIELDS[key][0 if zh else 1])
    if not words:
        return "此项" if zh else "this value"
    return " · ".join(words)


def render(
    code: str, params: dict[str, Any] | None = None, locale: str = ZH, location: str = ""
) -> str:
    """The message of ``code`` in ``locale``; ``{field}`` names ``location`` (or
    ``params["field"]``) in words."""
    zh_text, en_text = MESSAGES.get(code, MESSAGES["invalid"])
    text = en_text if locale.startswith("en") else zh_text
    values = {k: _clip(v) for k, v in (params or {}).items()}
    for key in ("status", "to"):  # a template's status in words
        if values.get(key) in STATUS_WORDS:
            values[key] = STATUS_WORDS[values[key]][1 if locale.startswith("en") else 0]
    values.setdefault("field", field_name(location, locale) if location else _this(locale))
    try:
        out = text.format(**values)
    except (KeyError, IndexError):
        out = (MESSAGES["invalid"][1 if locale.startswith("en") else 0]).format(
            field=values["field"]
        )
    if values.get("for_name"):  # which real contact or group the content failed for
        kind = values.get("for_kind")
        if locale.startswith("en"):
            out += f" (for {kind} {values['for_name']})"
        else:
            out += f"（{'群' if kind == 'group' else '客户'} {values['for_name']}）"
    return out


def _this(locale: str) -> str:
    return "this value" if locale.startswith("en") else "此项"


def _clip(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def problem_json(location: str, message: str, locale: str = EN) -> dict[str, Any]:
    """One problem as the API answers it: where, the validator's text, and the
    code, parameters and message in ``locale``."""
    code, params = classify(location, message)
    return {
        "loc": location,
        "msg": message,
        "code": code,
        "params": params,
        "message": render(code, params, locale, location),
    }
