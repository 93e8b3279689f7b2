"""Operator wording for the reasons sopbot itself writes on a delivery or an
enrollment (``reason`` / ``error`` / ``note`` / ``exit_reason``).

Each row: a pattern over the stored English text, its Chinese and its English
wording. Parameters (times, counts, names, ids) are kept; a named group
``inner`` is itself a stored reason and is worded again; a named group ``raw``
is the channel's own text and stays as stored. :func:`sop_templates.wording.reason_text`
is the one entry point.
"""

from __future__ import annotations

import re

_Q = r"'(?P<name>[^']*)'"  # a name as written by {name!r}


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + pattern + "$", re.DOTALL)


REASON_WORDS: list[tuple[re.Pattern[str], str, str]] = [
    # -- retries and grace period (scheduler.outbox.recording / transitions / preparing)
    (
        _p(r"gave up after (?P<n>\d+) attempts: (?P<inner>.*)"),
        "重试 {n} 次后放弃：{inner}",
        "gave up after {n} attempts: {inner}",
    ),
    (
        _p(r"gave up: next retry would be past the grace period \((?P<inner>.*)\)"),
        "已放弃：下次重试将超过可延迟发送的时限（{inner}）",
        "gave up: the next retry would be past the late-sending limit ({inner})",
    ),
    (
        _p(r"gave up: retries ran past the grace period \(last error: (?P<inner>.*)\)"),
        "已放弃：重试超过了可延迟发送的时限（最后一次错误：{inner}）",
        "gave up: retries ran past the late-sending limit (last error: {inner})",
    ),
    (
        _p(r"attempt (?P<n>\d+) failed, retrying: (?P<inner>.*)"),
        "第 {n} 次发送失败，将重试：{inner}",
        "attempt {n} failed, retrying: {inner}",
    ),
    (
        _p(r"not sent within its grace period \(scheduler down or backlog\)"),
        "未在可延迟发送的时限内发出（调度服务停止或积压）",
        "not sent within its late-sending limit (scheduler down or backlog)",
    ),
    (
        _p(r"not sent within its grace period: (?P<inner>.*)"),
        "未在可延迟发送的时限内发出：{inner}",
        "not sent within its late-sending limit: {inner}",
    ),
    # -- leases (scheduler.outbox.transitions.REAPED_*)
    (
        _p(r"worker stopped while sending \(lease expired\); outcome unknown, not resent"),
        "发送过程中工作进程停止（租约过期），结果未知，不再重发",
        "the worker stopped while sending (lease expired); outcome unknown, not resent",
    ),
    (
        _p(r"worker stopped mid-send; channel deduplicates, so sending again"),
        "发送过程中工作进程停止；渠道会去重，因此重新发送",
        "the worker stopped mid-send; the channel deduplicates, so sending again",
    ),
    (
        _p(r"channel (?P<ch>\S+) raised (?P<exc>\w+): (?P<raw>.*); outcome unknown, not resent"),
        "渠道 {ch} 发送时出错（{exc}：{raw}），结果未知，不再重发",
        "channel {ch} raised {exc}: {raw}; outcome unknown, not resent",
    ),
    (
        _p(r"content could not be rendered: (?P<inner>.*)"),
        "内容无法生成：{inner}",
        "the content could not be rendered: {inner}",
    ),
    (
        _p(r"渲染超时：超过 (?P<ms>\d+) ms 的渲染预算 \(rendering took longer than its .*"),
        "渲染超时：超过 {ms} ms 的渲染预算",
        "rendering took longer than its {ms} ms budget",
    ),
    (
        _p(r"内容过长：(?P<what>\S+) 超过 (?P<max>[\d,]+) 个字符的上限 \(.*"),
        "内容过长：{what} 超过 {max} 个字符的上限",
        "too long: {what} is over the {max} character budget",
    ),
    # -- generic channel outcomes (scheduler.outbox.sending)
    (_p(r"skipped by the channel"), "渠道跳过了这次发送", "skipped by the channel"),
    (_p(r"temporary channel error"), "渠道暂时出错", "temporary channel error"),
    (_p(r"permanent channel error"), "渠道拒绝发送", "permanent channel error"),
    (
        _p(r"reminder sent to staff account (?P<who>\S+); they send it by hand"),
        "已提醒员工账号 {who}，由员工手动发送",
        "reminder sent to staff account {who}; they send it by hand",
    ),
    # -- enrollment and flows (scheduler.flows)
    (
        _p(r"exclusive: already in SOP #(?P<id>\d+)"),
        "互斥：已在 SOP #{id} 中",
        "exclusive: already in SOP #{id}",
    ),
    (
        _p(r"exit condition: tag " + _Q + " added"),
        "满足退出条件：已添加标签「{name}」",
        "exit condition: tag “{name}” added",
    ),
    (
        _p(r"exit condition: tag " + _Q + " removed"),
        "满足退出条件：已移除标签「{name}」",
        "exit condition: tag “{name}” removed",
    ),
    (
        _p(r"exit condition: link clicked in " + _Q),
        "满足退出条件：点击了「{name}」中的链接",
        "exit condition: link clicked in “{name}”",
    ),
    (
        _p(r"link clicked in " + _Q),
        "点击了「{name}」中的链接",
        "link clicked in “{name}”",
    ),
    (
        _p(r"touchpoint " + _Q + r" is not in version (?P<v>\d+)"),
        "触达点「{name}」不在第 {v} 版中",
        "touchpoint “{name}” is not in version {v}",
    ),
    (_p(r"holdout"), "对照组：不发送", "holdout (control group): not sent"),
    # -- staff (scheduler.staff.service)
    (
        _p(r"the staff member did not act before the deadline"),
        "员工未在截止时间前处理",
        "the staff member did not act before the deadline",
    ),
    (_p(r"sent by the staff member"), "已由员工发送", "sent by the staff member"),
    (
        _p(r"skipped by the staff member: (?P<raw>.*)"),
        "员工跳过：{raw}",
        "skipped by the staff member: {raw}",
    ),
    (
        _p(r"the channel refused the digest"),
        "渠道拒收了员工待办汇总",
        "the channel refused the digest",
    ),
    # -- circuit breaker and registry (channels.breaker / channels.registry)
    (
        _p(
            r"channel " + _Q + r" paused: circuit breaker open until (?P<until>[\d\- :]+) UTC "
            r"after (?P<n>\d+) consecutive failures(?: \(last error: (?P<inner>.*)\))?"
        ),
        "渠道「{name}」连续失败 {n} 次，暂停至 {until} UTC",
        "channel “{name}” paused until {until} UTC after {n} consecutive failures",
    ),
    (
        _p(r"channel " + _Q + r" half-open: waiting for one trial send(?: \(last error: .*\))?"),
        "渠道「{name}」恢复中：等待一次试发",
        "channel “{name}” recovering: waiting for one trial send",
    ),
    (
        _p(r"channel " + _Q + r" half-open: another worker is making the trial send(?: \(.*\))?"),
        "渠道「{name}」恢复中：另一工作进程正在试发",
        "channel “{name}” recovering: another worker is making the trial send",
    ),
    (
        _p(r"channel instance " + _Q + " is disabled"),
        "渠道「{name}」已停用",
        "channel “{name}” is disabled",
    ),
    (
        _p(r"rate limit: channel " + _Q + r" sends at most (?P<raw>.*)"),
        "渠道「{name}」限速：每段时间最多发送 {raw}",
        "rate limit: channel “{name}” sends at most {raw}",
    ),
    # -- WeCom (channels.wecom*, scheduler.flows.wecom_tasks, scheduler.outbox.wecom_quota)
    (
        _p(r"WeCom errcode (?P<code>-?\d+): (?P<raw>.*)"),
        "企业微信返回错误码 {code}：{raw}",
        "WeCom error code {code}: {raw}",
    ),
    (
        _p(r"WeCom mass-send quota \((?P<who>\S+) (?P<id>\S+)\): (?P<inner>.*)"),
        "企业微信群发次数限制（{id}）：{inner}",
        "WeCom mass-send quota ({id}): {inner}",
    ),
    (
        _p(r"the customer already received a mass message \(WeCom's mass-send quota\)"),
        "客户已收到过群发消息（企业微信群发次数限制）",
        "the customer already received a mass message (WeCom's mass-send quota)",
    ),
    (
        _p(r"not a friend of the sender \(any more\)"),
        "客户已不是发送员工的好友",
        "no longer a friend of the sending staff member",
    ),
    (  # scheduler.outbox.tasks.awaiting_reason
        _p(
            r"mass-send task (?P<id>\S+) created for staff (?P<who>\S+); awaiting staff confirmation"
        ),
        "已为员工 {who} 创建群发任务 {id}，等待员工确认发送",
        "mass-send task {id} created for staff {who}; waiting for the staff member to confirm",
    ),
    (
        _p(r"mass-send task (?P<id>\S+) delivered"),
        "群发任务 {id} 已送达",
        "mass-send task {id} delivered",
    ),
    (
        _p(r"mass-send task (?P<id>\S+): (?P<inner>.*)"),
        "群发任务 {id}：{inner}",
        "mass-send task {id}: {inner}",
    ),
    (
        _p(
            r"mass-send task (?P<id>\S+) recalled before staff (?P<who>\S+) confirmed it: "
            r"the customer left the SOP \((?P<inner>.*)\)"
        ),
        "员工 {who} 确认前已撤回群发任务 {id}：客户已退出 SOP（{inner}）",
        "mass-send task {id} recalled before staff {who} confirmed it: "
        "the customer left the SOP ({inner})",
    ),
    (_p(r"exited"), "已退出", "exited"),
    (
        _p(
            r"(?P<n>\d+) of (?P<total>\d+) recipients left the SOP; WeCom cannot recall a task "
            r"for part of its customers"
        ),
        "{total} 位接收人中有 {n} 位已退出 SOP；企业微信无法只为部分客户撤回任务",
        "{n} of {total} recipients left the SOP; WeCom cannot recall a task for part of them",
    ),
    (
        _p(r"welcome fell back to a mass-send task \((?P<why>.*)\): (?P<inner>.*)"),
        "欢迎语改为群发任务（{why}）：{inner}",
        "the welcome fell back to a mass-send task ({why}): {inner}",
    ),
    (
        _p(r"welcome fell back to a mass-send task: (?P<raw>.*)"),
        "欢迎语改为群发任务：{raw}",
        "the welcome fell back to a mass-send task: {raw}",
    ),
    (
        _p(r"welcome skipped by its fallback: (?P<raw>.*)"),
        "欢迎语按备用方式跳过：{raw}",
        "the welcome was skipped by its fallback: {raw}",
    ),
    (
        _p(r"welcome fell back to a reminder \((?P<why>.*)\): (?P<inner>.*)"),
        "欢迎语改为提醒员工（{why}）：{inner}",
        "the welcome fell back to a reminder ({why}): {inner}",
    ),
    (
        _p(
            r"welcome fell back to a reminder to staff (?P<who>\S+) \(app message (?P<id>\S+)\): (?P<raw>.*)"
        ),
        "欢迎语改为提醒员工 {who}（应用消息 {id}）：{raw}",
        "the welcome fell back to a reminder to staff {who} (app message {id}): {raw}",
    ),
    (
        _p(
            r"welcome sent with the WelcomeCode of staff (?P<who>\S+)'s add event \(send_welcome_msg\)"
        ),
        "已用员工 {who} 添加好友时的欢迎语凭证发送",
        "welcome sent with staff {who}'s add-friend welcome code",
    ),
    (
        _p(
            r"WelcomeCode expired: (?P<age>\d+) s after the add event, WeCom accepts it for (?P<max>\d+) s"
        ),
        "欢迎语凭证已过期：添加好友后 {age} 秒，企业微信只接受 {max} 秒内发送",
        "welcome code expired: {age} s after the add event; WeCom accepts it for {max} s",
    ),
    (
        _p(r"mode welcome greets a customer, not a group chat"),
        "欢迎语只能发给客户，不能发给群",
        "a welcome greets a customer, not a group chat",
    ),
    (
        _p(r"no sender account for a WeCom task"),
        "企业微信群发任务没有发送员工账号",
        "no sender account for a WeCom task",
    ),
    (_p(r"no staff account to remind"), "没有可提醒的员工账号", "no staff account to remind"),
    (
        _p(r"no staff account owns this target to remind"),
        "没有负责该对象的员工账号可提醒",
        "no staff account owns this target to remind",
    ),
    (
        _p(r"WeCom remind mode needs agent_id in the channel config"),
        "提醒方式需要在渠道设置中填写应用 AgentId",
        "remind mode needs the app's AgentId in the channel settings",
    ),
    (
        _p(r"WeCom cannot send to customers directly; use mode 'task' .*"),
        "企业微信不能直接发给客户；请使用群发任务或提醒员工方式",
        "WeCom cannot send to customers directly; use a mass-send task or a staff reminder",
    ),
    (
        _p(r"WeCom could not create the moment: errcode (?P<code>\S+)"),
        "企业微信未能创建朋友圈：错误码 {code}",
        "WeCom could not create the moment: error code {code}",
    ),
    (
        _p(r"staff (?P<who>\S+) is not among the moment's publishers"),
        "员工 {who} 不在该朋友圈的发表人中",
        "staff {who} is not among the moment's publishers",
    ),
    (
        _p(r"moment (?P<id>\S+) published by staff (?P<who>\S+)"),
        "朋友圈 {id} 已由员工 {who} 发表",
        "moment {id} published by staff {who}",
    ),
    (
        _p(r"WeCom group bot returned HTTP (?P<code>\d+)"),
        "企业微信群机器人返回 HTTP {code}",
        "WeCom group bot returned HTTP {code}",
    ),
    (
        _p(r"webhook returned HTTP (?P<code>\d+)(?P<raw>: .*)?"),
        "Webhook 返回 HTTP {code}{raw}",
        "webhook returned HTTP {code}{raw}",
    ),
    (
        _p(r"message is empty: nothing to send"),
        "消息为空，没有可发送的内容",
        "the message is empty: nothing to send",
    ),
]
