"""Every reason sopbot writes on a delivery or enrollment reads in the operator's
words: the Chinese wording keeps no English beyond the parameters it carries."""

from __future__ import annotations

import re

import pytest

from channels.wecom import _TASK_STATUS
from scheduler.flows.exclusivity import REASON as EXCLUSIVE
from scheduler.outbox.transitions import REAPED_RESEND, REAPED_UNKNOWN
from scheduler.outcomes.experiments import HOLDOUT_REASON
from sop_templates.wording import reason_text

# (stored reason, words of it that are parameters or the channel's own text)
CASES: list[tuple[str, set[str]]] = [
    ("gave up after 3 attempts: temporary channel error", set()),
    ("gave up: next retry would be past the grace period (permanent channel error)", set()),
    ("gave up: retries ran past the grace period (last error: skipped by the channel)", set()),
    (
        "attempt 2 failed, retrying: WeCom errcode 45009: api freq out of limit",
        {"api", "freq", "out", "limit"},
    ),
    ("not sent within its grace period (scheduler down or backlog)", set()),
    ("not sent within its grace period: holdout", set()),
    (REAPED_UNKNOWN, set()),
    (REAPED_RESEND, set()),
    (
        "channel wecom raised ReadTimeout: timed out; outcome unknown, not resent",
        {"wecom", "ReadTimeout", "timed", "out"},
    ),
    ("content could not be rendered: unknown field 'nickname'", {"unknown", "field", "nickname"}),
    (
        "content could not be rendered: 渲染超时：超过 200 ms 的渲染预算 (rendering took longer "
        "than its 200 ms budget: a loop, recursion or filter does too much work)",
        set(),
    ),
    ("skipped by the channel", set()),
    ("temporary channel error", set()),
    ("permanent channel error", set()),
    ("reminder sent to staff account zhangsan; they send it by hand", {"zhangsan"}),
    (EXCLUSIVE.format(id=7), {"SOP"}),
    ("exit condition: tag 'purchased' added", {"purchased"}),
    ("exit condition: tag 'vip' removed", {"vip"}),
    ("exit condition: link clicked in 'Day one'", {"Day", "one"}),
    ("link clicked in 'Day one'", {"Day", "one"}),
    ("touchpoint 'Welcome' is not in version 3", {"Welcome"}),
    (HOLDOUT_REASON, set()),
    ("the staff member did not act before the deadline", set()),
    ("sent by the staff member", set()),
    ("skipped by the staff member: customer is on holiday", {"customer", "holiday"}),
    ("the channel refused the digest", set()),
    (
        "channel 'wecom' paused: circuit breaker open until 2027-03-01 10:00:00 UTC after 5 "
        "consecutive failures (last error: boom)",
        {"wecom", "UTC"},
    ),
    ("channel 'wecom' half-open: waiting for one trial send (last error: boom)", {"wecom"}),
    ("channel 'wecom' half-open: another worker is making the trial send", {"wecom"}),
    ("channel instance 'wecom' is disabled", {"wecom"}),
    ("rate limit: channel 'wecom' sends at most 20 per 60 s", {"wecom", "per"}),
    ("WeCom errcode 41001: access_token missing", {"access_token", "missing", "access", "token"}),
    ("WeCom mass-send quota (contact wm123): holdout", {"wm123"}),
    (_TASK_STATUS[2][1] or "", set()),
    (_TASK_STATUS[3][1] or "", set()),
    ("mass-send task msg42 delivered", {"msg42"}),
    ("mass-send task msg42: skipped by the channel", {"msg42"}),
    (
        "mass-send task msg42 recalled before staff lisi confirmed it: the customer left the SOP "
        "(exit condition: tag 'paid' added)",
        {"msg42", "lisi", "SOP", "paid"},
    ),
    (
        "2 of 5 recipients left the SOP; WeCom cannot recall a task for part of its customers",
        {"SOP"},
    ),
    ("welcome fell back to a mass-send task (late): temporary channel error", {"late"}),
    ("welcome fell back to a mass-send task: no welcome code", {"welcome", "code"}),
    ("welcome skipped by its fallback: no welcome code", {"welcome", "code"}),
    ("welcome fell back to a reminder (late): no staff account to remind", {"late"}),
    (
        "welcome fell back to a reminder to staff lisi (app message m1): no welcome code",
        {"lisi", "welcome", "code"},
    ),
    ("welcome sent with the WelcomeCode of staff lisi's add event (send_welcome_msg)", {"lisi"}),
    ("WelcomeCode expired: 30 s after the add event, WeCom accepts it for 20 s", set()),
    ("mode welcome greets a customer, not a group chat", set()),
    ("no sender account for a WeCom task", set()),
    ("no staff account to remind", set()),
    ("no staff account owns this target to remind", set()),
    ("WeCom remind mode needs agent_id in the channel config", {"AgentId"}),
    (
        "WeCom cannot send to customers directly; use mode 'task' (staff confirms a mass send) or 'remind'",
        set(),
    ),
    ("WeCom could not create the moment: errcode 40058", set()),
    ("staff lisi is not among the moment's publishers", {"lisi"}),
    ("moment mom1 published by staff lisi", {"mom1", "lisi"}),
    ("WeCom group bot returned HTTP 502", {"HTTP"}),
    (
        "webhook returned HTTP 500: Internal Server Error",
        {"Webhook", "HTTP", "Internal", "Server", "Error"},
    ),
    ("message is empty: nothing to send", set()),
    ("template archived", {"SOP"}),
    ("time already past when enrolled", set()),
]

_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]{2,}")


@pytest.mark.parametrize(("stored", "params"), CASES, ids=[c[0][:40] for c in CASES])
def test_every_reason_reads_in_chinese(stored: str, params: set[str]) -> None:
    zh = reason_text(stored, "zh_CN")
    assert zh != stored
    leftover = {w for w in _WORD.findall(zh) if w not in params and w not in {"WeCom"}}
    assert not leftover, (stored, zh)


@pytest.mark.parametrize(("stored", "params"), CASES, ids=[c[0][:40] for c in CASES])
def test_every_reason_reads_in_english(stored: str, params: set[str]) -> None:
    en = reason_text(stored, "en")
    assert en and not re.search(r"[\u4e00-\u9fff]", en), (stored, en)


def test_unknown_channel_text_is_kept_as_stored() -> None:
    assert (
        reason_text("something only the platform says", "zh_CN")
        == "something only the platform says"
    )


def test_a_note_joined_to_a_reason_is_worded_part_by_part() -> None:
    from scheduler.outbox.tasks import awaiting_reason
    from sop_templates.wording import reason_text

    note = "welcome fell back to a mass-send task: no WelcomeCode"
    stored = f"{note}; {awaiting_reason('msg1', 'staff_li')}"
    zh = reason_text(stored, "zh_CN")
    assert (
        zh
        == f"{reason_text(note, 'zh_CN')}；{reason_text(awaiting_reason('msg1', 'staff_li'), 'zh_CN')}"
    )
    assert zh.startswith("欢迎语改为群发任务") and zh.endswith("等待员工确认发送")
    assert reason_text("channel said: x; y", "zh_CN") == "channel said: x; y"
