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

ZH, EN = "zh_CN", "en"

# code → (zh_CN, en); {field} is the field in words, other names are params
MESSAGES: dict[str, tuple[str, str]] = {
    "required": ("{field}不能为空", "{field} is required"),
    "too_short": ("{field}至少要 {min} 个字符", "{field} needs at least {min} characters"),
    "too_long": ("{field}最多 {max} 个字符", "{field} takes at most {max} characters"),
    "not_integer": ("{field}应是整数", "{field} must be a whole number"),
    "not_number": ("{field}应是数字", "{field} must be a number"),
    "too_small": ("{field}不能小于 {min}", "{field} must be at least {min}"),
    "too_large": ("{field}不能大于 {max}", "{field} must be at most {max}"),
    "invalid_choice": ("{field}的选项无效", "{field} has an option that does not exist"),
    "invalid_type": ("{field}的格式不正确", "{field} is not in the right form"),
    "not_a_list": ("{field}应是一组值", "{field} must be a list"),
    "not_a_mapping": ("{field}应是一组「名称: 值」", "{field} must be a set of name: value pairs"),
    "invalid_datetime": (
        "{field}不是有效的日期时间（例如 2027-03-01 21:30）",
        "{field} is not a date and time like 2027-03-01 21:30",
    ),
    "unknown_field": ("{field}不是可以设置的项目", "{field} is not a setting that exists"),
    "offset_invalid": (
        "「{value}」不是一段时长：请选择数字和单位，或写成 3小时、30分钟、2天",
        "“{value}” is not a duration: pick a number and a unit, or type 3 hours, 30 minutes, 2 days",
    ),
    "offset_negative": ("时长不能为负数", "a duration cannot be negative"),
    "too_far_ahead": ("时间不能超过十年之后", "a time cannot be more than ten years ahead"),
    "time_invalid": (
        "「{value}」不是时间：请写成 20:00（00:00–23:59）",
        "“{value}” is not a time of day: write it like 20:00 (00:00–23:59)",
    ),
    "day_invalid": (
        "第 {day} 天不存在：第 1 天就是起点当天",
        "day {day} does not exist: day 1 is the starting day itself",
    ),
    "repeat_invalid": (
        "重复规则「{value}」无效，请用上面的选项选择",
        "the repeat rule “{value}” is not valid; use the options above",
    ),
    "repeat_incomplete": (
        "重复规则不完整：请选择时间（以及星期几）",
        "the repeat rule is incomplete: choose a time (and the weekdays)",
    ),
    "repeat_never": (
        "重复规则「{value}」永远不会触发（没有这样的日期）",
        "the repeat rule “{value}” never fires (no calendar has such a day)",
    ),
    "end_before_start": ("结束时间必须晚于开始时间", "the end must be after the start"),
    "date_out_of_range": (
        "{field}必须在 1970 年到 2199 年之间",
        "{field} must lie between 1970 and 2199",
    ),
    "timezone_unknown": (
        "「{value}」不是时区名称（例如 Asia/Shanghai）",
        "“{value}” is not a time zone name (e.g. Asia/Shanghai)",
    ),
    "names_not_unique": (
        "触达点名称不能重复：{names}",
        "touchpoint names must differ; repeated: {names}",
    ),
    "fixed_needs_start": (
        "从固定时间开始计时，需要填写开始时间",
        "counting from a fixed start needs the start date and time",
    ),
    "tag_needs_tag": (
        "从打标签开始计时，需要填写是哪个标签",
        "counting from a tag needs the tag",
    ),
    "segment_target_mismatch": (
        "所选人群与发送对象（客户或群）不一致",
        "the segment chosen does not match who this SOP sends to (contacts or groups)",
    ),
    "new_friends_needs_join": (
        "新好友人群只能从加好友时间开始计时",
        "a new-friends segment counts from the time the friend was added",
    ),
    "content_empty": ("请至少添加一条内容", "add at least one piece of content"),
    "quiet_invalid": (
        "免打扰时段应写成 22:00 到 08:00",
        "quiet hours are written like 22:00 to 08:00",
    ),
    "quiet_incomplete": (
        "免打扰时段需要开始和结束时间",
        "quiet hours need a start and an end time",
    ),
    "quiet_same": (
        "免打扰时段的开始和结束不能相同",
        "quiet hours cannot start and end at the same time",
    ),
    "cap_invalid": (
        "频率上限需要「最多几条」和「每多长时间」（1 分钟到 366 天）",
        "a frequency cap needs how many and per how long (1 minute to 366 days)",
    ),
    "variable_unknown": (
        "没有变量「{name}」：请用「插入」按钮选择变量",
        "there is no variable “{name}”: use the Insert buttons to pick one",
    ),
    "template_syntax": (
        "内容中的 {{{{ }}}} 写法有误（第 {line} 行）",
        "the {{{{ }}}} placeholders in the content are malformed (line {line})",
    ),
    "template_forbidden": (
        "内容中使用了不允许的写法",
        "the content uses something a message may not use",
    ),
    "render_too_long": (
        "内容过长，超过单条消息的上限",
        "the content is too long for one message",
    ),
    "render_too_slow": ("内容渲染超时", "the content took too long to render"),
    "text_over_channel_limit": (
        "文字 {size} 字节，超过渠道 {channel} 每条 {limit} 字节的上限",
        "the text is {size} bytes; channel {channel} allows at most {limit} bytes per message",
    ),
    "url_invalid": (
        "「{value}」不是以 https:// 开头的网址",
        "“{value}” is not a web address starting with https://",
    ),
    "appid_invalid": (
        "「{value}」不是小程序 AppID（wx 加 16 位十六进制字符，如 wx0123456789abcdef）",
        "“{value}” is not a mini-program AppID (wx and 16 hex characters, e.g. wx0123456789abcdef)",
    ),
    "page_invalid": (
        "「{value}」不是小程序页面路径（如 pages/index/index，不以 / 开头）",
        "“{value}” is not a mini-program page path (like pages/index/index, no leading /)",
    ),
    "upload_empty": ("上传的文件是空的", "the uploaded file is empty"),
    "upload_type": (
        "「{name}」不是支持的类型：图片 PNG、JPG、GIF、WEBP，文件 PDF、Word、Excel、PPT、TXT、ZIP",
        "“{name}” is not a supported type: images PNG, JPG, GIF, WEBP; files PDF, Word, Excel, PowerPoint, TXT, ZIP",
    ),
    "upload_too_large": ("「{name}」超过 {max} 的上限", "“{name}” is over the {max} limit"),
    "name_taken": ("已有同名的 SOP：{name}", "an SOP named {name} already exists"),
    "welcome_placement": (
        "欢迎语只能用于新好友 SOP（发送对象为客户、从加好友时开始计时）中立即发送（+0）的触达点",
        "a welcome message is only for a new-friend SOP's touchpoint at +0 "
        "(customers, counted from when the friend was added)",
    ),
    "moment_mixed": (
        "朋友圈只能是：文字加最多 9 张图片，或 1 个视频，或 1 个链接，不能混用",
        "a moment is text plus up to 9 images, or one video, or one link, not a mix",
    ),
    "moment_kinds": (
        "朋友圈只能包含文字、图片、视频或链接",
        "a moment can only carry text, images, a video or a link",
    ),
    "moment_images": (
        "朋友圈最多 9 张图片，现在有 {count} 张",
        "a moment carries at most 9 images; this one has {count}",
    ),
    "video_media": (
        "视频「{value}」不是已上传到企业微信的素材：请先上传视频，再填写它的素材编号",
        "the video “{value}” must be uploaded to WeCom first and written as wecom-media:<media id>",
    ),
    "fallback_only_welcome": (
        "只有欢迎语才需要选择没有欢迎码时的处理方式",
        "only a welcome message has a fallback for when there is no welcome code",
    ),
    "visible_only_moment": (
        "只有朋友圈才需要选择可见范围",
        "only a moment has a choice of who sees it",
    ),
    "not_found": ("找不到{field}", "{field} was not found"),
    "invalid": ("{field}填写有误", "{field} is not valid"),
    # answers other than 422: what was asked for is unknown (404), the current
    # state refuses the change (409), the caller may not (401/403), the request
    # cannot be read (400/413)
    "template_not_found": ("找不到 SOP 模板 {key}", "there is no SOP template {key}"),
    "version_not_found": ("找不到模板版本 {key}", "there is no template version {key}"),
    "contact_not_found": ("找不到客户 {key}", "there is no contact {key}"),
    "group_not_found": ("找不到客户群 {key}", "there is no group chat {key}"),
    "channel_not_found": ("找不到渠道 {key}", "there is no channel {key}"),
    "user_not_found": ("找不到用户 {key}", "there is no user {key}"),
    "token_not_found": ("找不到 API 令牌 {key}", "there is no API token {key}"),
    "resource_not_found": ("找不到所请求的内容", "what was asked for does not exist"),
    "template_archived": (
        "SOP「{name}」已归档，不能再修改或发布；请新建一个",
        "the SOP {name} is archived and can no longer change or be published; create a new one",
    ),
    "target_kind_frozen": (
        "已发布的 SOP 不能更改发送对象（客户或群）",
        "a published SOP cannot change who it sends to (contacts or groups)",
    ),
    "status_not_settable": ("不能直接设为这个状态", "this status cannot be set directly"),
    "status_not_allowed": (
        "SOP「{name}」当前为{status}，不能改为{to}",
        "the SOP {name} is {status}; it cannot become {to}",
    ),
    "never_published": (
        "SOP「{name}」还没有发布过",
        "the SOP {name} has never been published",
    ),
    "not_published": (
        "SOP「{name}」未发布：只有已发布的 SOP 才能加入客户",
        "the SOP {name} is not published: only a published SOP enrolls",
    ),
    "needs_approval": (
        "SOP「{name}」发布前需要审批：先提交，再由非作者的审批人批准",
        "the SOP {name} needs approval before publishing: submit it, then an approver "
        "who did not write it approves it",
    ),
    "already_approved": (
        "这份草稿已经批准，可以发布了",
        "this draft is already approved; it can be published",
    ),
    "not_waiting_for_approval": (
        "SOP「{name}」没有在等待审批",
        "the SOP {name} is not waiting for approval",
    ),
    "own_draft": (
        "这份草稿是你写的或提交的，需要另一位审批人批准",
        "you wrote or submitted this draft; another approver must approve it",
    ),
    "draft_changed": (
        "草稿在提交或批准后又改过了，请重新提交",
        "the draft changed after it was submitted or approved; submit it again",
    ),
    "reason_required": (
        "退回需要写明原因：说明作者应该改什么",
        "a rejection needs a reason: say what the authors should change",
    ),
    "touchpoint_unknown": (
        "草稿中没有名为「{name}」的触达点",
        "the draft has no touchpoint {name}",
    ),
    "draft_invalid": (
        "草稿已无法通过检查，请先在编辑器中修正",
        "the draft no longer passes its checks; correct it in the editor first",
    ),
    "no_segment": ("SOP「{name}」没有设置人群", "the SOP {name} has no segment"),
    "channel_exists": ("已有名为「{name}」的渠道", "a channel named {name} already exists"),
    "channel_config_masked": (
        "配置中有被遮盖的值（**********），请填写真实的密钥",
        "the configuration holds a masked value (**********); give the real secret",
    ),
    "channel_config_invalid": (
        "渠道类型 {adapter} 的配置有误，请检查每一项",
        "the configuration of the {adapter} channel is not valid; check each setting",
    ),
    "adapter_unknown": ("没有「{adapter}」这种渠道类型", "there is no channel type {adapter}"),
    "channel_unavailable": ("渠道暂时不能使用", "the channel cannot be used right now"),
    "role_unknown": ("没有这样的角色：{roles}", "there is no such role: {roles}"),
    "role_required": ("用户至少需要一个角色", "a user needs at least one role"),
    "password_too_short": (
        "密码至少要 {min} 个字符",
        "the password needs at least {min} characters",
    ),
    "username_invalid": (
        "用户名为 2–64 个字母、数字或 . _ - @",
        "a username has 2-64 letters, digits or . _ - @",
    ),
    "user_exists": ("已有名为「{name}」的用户", "a user named {name} already exists"),
    "last_admin": (
        "这是最后一位在用的管理员：请先让另一位用户成为管理员",
        "this is the last active admin; make another user admin first",
    ),
    "token_name_required": (
        "请给令牌起个名字（1–100 个字符），例如使用它的脚本",
        "give the token a name (1-100 characters), e.g. the script using it",
    ),
    "setup_link_invalid": (
        "这个初始化链接已失效（已经用过，或已有用户）",
        "this setup link is not valid (already used, or users exist)",
    ),
    "external_id_required": ("员工账号需要外部 ID", "an account needs an external id"),
    "external_id_too_long": ("外部 ID 或名称过长", "the external id or the name is too long"),
    "conflict": ("当前状态不允许这样做", "the current state does not allow this"),
    "not_authenticated": (
        "请先登录（或提供有效的 API 令牌）",
        "sign in first (or give a valid API token)",
    ),
    "forbidden": ("你的角色不能执行此操作", "your role does not allow this"),
    "csrf_invalid": (
        "表单的安全令牌缺失或有误，请刷新页面",
        "the form's security token is missing or wrong; reload the page",
    ),
    "method_not_allowed": ("不支持这种请求方式", "this request method is not supported here"),
    "body_unreadable": (
        "请求内容无法读取（不是有效的 JSON）",
        "the request body cannot be read (not valid JSON)",
    ),
    "body_too_large": ("请求内容超过大小上限", "the request body is over the size limit"),
    "number_out_of_range": ("请求中的数字超出范围", "a number in the request is out of range"),
    "value_does_not_fit": ("请求中的某个值无法保存", "a value in the request does not fit"),
    "batch_rejected": ("整批被拒绝，没有任何改动", "the batch was refused; nothing was applied"),
    "bad_request": ("请求有误", "the request is not valid"),
    "request_invalid": (
        "请求中有 {count} 处无效（首个：{name}）",
        "{count} invalid value(s) in the request (first: {name})",
    ),
    "json_invalid": ("请求内容不是有效的 JSON", "the request body is not valid JSON"),
}

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


# a template's status → (zh_CN, en)
STATUS_WORDS: dict[str, tuple[str, str]] = {
    "draft": ("草稿", "a draft"),
    "pending_approval": ("待审批", "waiting for approval"),
    "published": ("已发布", "published"),
    "paused": ("已暂停", "paused"),
    "archived": ("已归档", "archived"),
}

# the last word of a location → (zh_CN, en)
FIELDS: dict[str, tuple[str, str]] = {
    "template": ("模板", "the template"),
    "name": ("名称", "name"),
    "description": ("说明", "description"),
    "target": ("发送对象", "who it sends to"),
    "timezone": ("时区", "time zone"),
    "channel": ("渠道", "channel"),
    "anchor": ("计时起点", "where time counts from"),
    "anchor_tag": ("计时标签", "the tag that starts the clock"),
    "start_at": ("开始时间", "start time"),
    "reentry": ("重新进入", "re-entry"),
    "segment": ("人群", "segment"),
    "tags": ("标签", "tags"),
    "accounts": ("员工账号", "staff accounts"),
    "owners": ("群主账号", "group owners"),
    "name_pattern": ("群名规则", "group name pattern"),
    "attributes": ("属性筛选", "attribute filters"),
    "exit": ("退出规则", "exit rules"),
    "quiet_hours": ("免打扰时段", "quiet hours"),
    "frequency_cap": ("频率上限", "frequency cap"),
    "max": ("最多条数", "the maximum"),
    "per": ("时间范围", "the period"),
    "touchpoints": ("触达点", "touchpoints"),
    "timing": ("发送时间", "when it is sent"),
    "offset": ("时长", "duration"),
    "day": ("第几天", "day"),
    "at": ("时间", "time"),
    "cron": ("重复规则", "repeat rule"),
    "end": ("结束时间", "end"),
    "content": ("内容", "content"),
    "text": ("文字", "text"),
    "url": ("链接", "link"),
    "title": ("标题", "title"),
    "image_url": ("封面图片", "cover image"),
    "pic_url": ("封面图片", "cover image"),
    "appid": ("小程序 AppID", "mini-program AppID"),
    "page": ("页面路径", "page path"),
    "mode": ("执行方式", "execution mode"),
    "grace": ("可延迟发送时长", "how late it may go out"),
    "past_policy": ("时间已过时的处理", "what to do when the time has passed"),
    "kind": ("类型", "kind"),
    "fallback": ("没有欢迎码时", "without a welcome code"),
    "visible_to": ("可见范围", "who sees it"),
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
