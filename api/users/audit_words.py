"""The audit log in the operator's words: what was done (``template.publish`` →
发布 / published), to what kind of object, and the entry's summary where it is
sopbot's own text (``v2 (keep)``, ``3 enrolled``, ``require_approval=True``) —
in Chinese (``zh_CN``) or English (``en``). Names and other user data in a
summary are shown as they are."""

from __future__ import annotations

import re
from typing import Any

from scheduler.analytics.log.entries import STATUS_EN, STATUS_ZH

ACTIONS: dict[str, tuple[str, str]] = {
    "template.create": ("新建 SOP", "created the SOP"),
    "template.update": ("保存草稿", "saved the draft"),
    "template.submit": ("提交审批", "submitted it for approval"),
    "template.approve": ("审批通过", "approved it"),
    "template.reject": ("退回修改", "sent it back"),
    "template.publish": ("发布", "published it"),
    "template.enroll": ("手动加入", "enrolled by hand"),
    "template.pause": ("暂停", "paused it"),
    "template.resume": ("恢复", "resumed it"),
    "template.archive": ("归档", "archived it"),
    "template.test_send": ("测试发送", "sent a test"),
    "user.create": ("新建用户", "created a user"),
    "user.update": ("修改用户", "changed a user"),
    "user.login": ("登录", "signed in"),
    "user.logout": ("退出登录", "signed out"),
    "user.setup": ("创建首位管理员", "set up the first admin"),
    "user.update_self": ("修改个人资料", "changed their own account"),
    "token.create": ("新建 API 令牌", "created an API token"),
    "token.revoke": ("吊销 API 令牌", "revoked an API token"),
    "channel.create": ("新建渠道", "created a channel"),
    "channel.update": ("修改渠道配置", "changed a channel's configuration"),
    "channel.breaker_reset": ("重置渠道熔断", "reset the channel's circuit breaker"),
    "settings.update": ("修改工作区设置", "changed the workspace settings"),
    "segment.save": ("保存人群", "saved a segment"),
    "tag.rename": ("重命名标签", "renamed a tag"),
    "account.save": ("保存员工账号", "saved a staff account"),
    "contacts.import": ("导入客户", "imported contacts"),
    "contact.upsert": ("保存客户", "saved a contact"),
    "group.upsert": ("保存客户群", "saved a group chat"),
    "contact.tag": ("批量打标签（客户）", "tagged contacts"),
    "contact.untag": ("批量去标签（客户）", "untagged contacts"),
    "contact.remove": ("批量删除客户", "removed contacts"),
    "group.tag": ("批量打标签（群）", "tagged group chats"),
    "group.untag": ("批量去标签（群）", "untagged group chats"),
    "group.remove": ("批量移除客户群", "removed group chats"),
    "api.post": ("通过 API 新增或执行", "through the API: added or ran"),
    "api.put": ("通过 API 修改", "through the API: changed"),
    "api.patch": ("通过 API 修改", "through the API: changed"),
    "api.delete": ("通过 API 删除", "through the API: deleted"),
}
OBJECTS: dict[str, tuple[str, str]] = {
    "template": ("SOP 模板", "SOP template"),
    "user": ("用户", "user"),
    "token": ("API 令牌", "API token"),
    "channel": ("渠道", "channel"),
    "contact": ("客户", "contact"),
    "contacts": ("客户", "contacts"),
    "group": ("客户群", "group chat"),
    "groups": ("客户群", "group chats"),
    "settings": ("设置", "settings"),
    "events": ("事件", "events"),
    "segment": ("人群", "segment"),
    "segments": ("人群", "segments"),
    "account": ("员工账号", "staff account"),
    "tag": ("标签", "tag"),
    "templates": ("SOP 模板", "SOP templates"),
}
ROLES = {
    "admin": ("管理员", "admin"),
    "operator": ("运营", "operator"),
    "approver": ("审批人", "approver"),
    "analyst": ("分析师", "analyst"),
}
_FIELDS = {
    "roles": ("角色", "roles"),
    "active": ("启用", "active"),
    "password": ("密码", "password"),
    "display_name": ("显示名", "display name"),
}


def _en(lang: str | None) -> bool:
    return (lang or "").lower().startswith("en")


def action_text(action: str, lang: str | None = "zh_CN") -> str:
    """``template.publish`` → ``发布`` / ``published it``."""
    words = ACTIONS.get(action)
    if words is None:
        kind = action.split(".", 1)[0]
        words = OBJECTS.get(kind, ("其他操作", "another change"))
    return words[1 if _en(lang) else 0]


def object_text(kind: str | None, lang: str | None = "zh_CN") -> str:
    """``template`` → ``SOP 模板`` / ``SOP template``."""
    if not kind:
        return ""
    words = OBJECTS.get(kind)
    return (words[1 if _en(lang) else 0]) if words else kind


def _roles(text: str, en: bool) -> str:
    names = re.findall(r"[a-z]+", text)
    if not names or any(n not in ROLES for n in names):
        return text
    return (", " if en else "、").join(ROLES[n][1 if en else 0] for n in names)


def _yes(value: str, en: bool) -> str:
    yes = value.strip().lower() == "true"
    return ("yes" if yes else "no") if en else ("是" if yes else "否")


def summary_text(action: str, summary: str | None, lang: str | None = "zh_CN") -> str:
    """The entry's summary with sopbot's own words translated; user data kept."""
    text = summary or ""
    en = _en(lang)
    if match := re.fullmatch(r"v(\d+) \((keep|move)\)", text):
        version, how = match.groups()
        if en:
            kept = "enrolled keep theirs" if how == "keep" else "enrolled move to it"
            return f"version {version} ({kept})"
        kept = "已加入的保留原版本" if how == "keep" else "已加入的迁移到新版本"
        return f"版本 {version}（{kept}）"
    if match := re.fullmatch(r"(?:(.*): )?(\d+) enrolled", text):
        named, count = match.groups()
        done = f"{count} enrolled" if en else f"加入 {count} 个"
        return f"{named}: {done}" if named else done
    if match := re.fullmatch(r"(\d+) pending deliveries cancelled", text):
        count = match.group(1)
        return f"{count} pending sends cancelled" if en else f"取消了 {count} 条待发送"
    if match := re.fullmatch(r"require_approval=(\w+)", text):
        yes = _yes(match.group(1), en)
        return f"approval before publishing: {yes}" if en else f"发布前需审批：{yes}"
    if action == "template.test_send" and (match := re.fullmatch(r"(.*) → (.*): (\w+)", text)):
        touchpoint, target, status = match.groups()
        said = (STATUS_EN if en else STATUS_ZH).get(status, status)
        return f"{touchpoint} → {target}: {said}" if en else f"{touchpoint} → {target}：{said}"
    if action in ("user.create", "user.update") and (
        match := re.fullmatch(r"(.+?)(?: \((.*)\)|: roles (.*), active (\w+)|: (.*))", text)
    ):
        name, roles, roles2, active, changed = match.groups()
        if roles is not None:
            return f"{name} ({_roles(roles, en)})" if en else f"{name}（{_roles(roles, en)}）"
        if roles2 is not None:
            shown = _roles(roles2, en)
            if en:
                return f"{name}: roles {shown}, active {_yes(str(active), en)}"
            return f"{name}：角色 {shown}，启用 {_yes(str(active), en)}"
        fields = [f.strip() for f in str(changed).split(",")]
        if all(f in _FIELDS for f in fields):
            joined = (", " if en else "、").join(_FIELDS[f][1 if en else 0] for f in fields)
            return f"{name}: {joined}" if en else f"{name}：{joined}"
    return text


def entry_words(entry: Any, lang: str | None = "zh_CN") -> dict[str, str]:
    """An audit entry's action, object kind and summary in words."""
    return {
        "action": action_text(entry.action, lang),
        "object": object_text(entry.object_kind, lang),
        "summary": summary_text(entry.action, entry.summary, lang),
    }
