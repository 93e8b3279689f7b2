"""The words of ``api.error_codes``: each error code's message, a template
status and a form field in Simplified Chinese and English, as ``(zh_CN, en)``."""

from __future__ import annotations

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
