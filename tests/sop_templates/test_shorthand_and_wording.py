"""Operators' shorthand timings normalise to the stored forms of the README, and
the one formatter words every timing, policy and reason in zh-CN and English."""

from __future__ import annotations

import pytest

from sop_templates.schemas import TouchpointSpec
from sop_templates.timing import parse_shorthand, parse_timing
from sop_templates.wording import cap_text, duration_text, quiet_text, reason_text, timing_text


def stored(text: str) -> dict:
    tp = TouchpointSpec.model_validate({"name": "x", "timing": text, "content": "hi"})
    return tp.timing.model_dump(mode="json")


README = {
    "+0m": {"kind": "offset", "offset": "0m"},
    "+3h": {"kind": "offset", "offset": "3h"},
    "day 1 20:00": {"kind": "day_at", "day": 1, "at": "20:00"},
    "day 2 20:00": {"kind": "day_at", "day": 2, "at": "20:00"},
    "day 2 19:30": {"kind": "day_at", "day": 2, "at": "19:30"},
    "day 3 09:00": {"kind": "day_at", "day": 3, "at": "09:00"},
    "cron 0 11 * * *": {"kind": "cron", "cron": "0 11 * * *", "start": None, "end": None},
    "cron 0 18 * * *": {"kind": "cron", "cron": "0 18 * * *", "start": None, "end": None},
}

VARIANTS = {
    "+0m": ["0", "0m", "0分钟", "立即"[:0] or "0 分钟", "加好友后 0 分钟"],
    "+3h": ["3h", "3小时", "3 小时", "3个小时", "180分钟", "3 hours", "加好友后3小时", "+3H"],
    "day 1 20:00": ["20点", "20:00", "当天 20:00", "晚上8点", "第1天 20:00", "第一天 20点"],
    "day 2 20:00": [
        "第2天 20:00",
        "第2天20点",
        "第二天 20:00",
        "次日 20:00",
        "第 2 天 晚上8点",
        "第2天 20：00",
    ],
    "day 2 19:30": ["第2天 19:30", "次日 19点半", "第2天 晚上7点30分"],
    "day 3 09:00": ["第3天 9:00", "第三天 9点", "第3天 上午9点"],
    "cron 0 11 * * *": ["每天 11:00", "每天11点", "每日 11:00", "daily 11:00", "every day 11:00"],
    "cron 0 18 * * *": ["每天 18:00", "每天 下午6点", "每天 18点"],
}


@pytest.mark.parametrize("readme", list(README))
def test_readme_forms_are_stored_as_the_readme_says(readme):
    assert stored(readme) == README[readme]


@pytest.mark.parametrize(
    ("readme", "typed"), [(r, t) for r, typed in VARIANTS.items() for t in typed]
)
def test_shorthand_variants_normalise_to_the_readme_timing(readme, typed):
    assert stored(typed) == README[readme]


@pytest.mark.parametrize(
    ("typed", "cron"),
    [
        ("工作日 11:30", "30 11 * * 1-5"),
        ("每个工作日 11:30", "30 11 * * 1-5"),
        ("周一至周五 11:30", "30 11 * * 1-5"),
        ("每周一 09:00", "0 9 * * 1"),
        ("每周一三五 9:00", "0 9 * * 1,3,5"),
        ("每周一、三 9点", "0 9 * * 1,3"),
        ("每周日 10:00", "0 10 * * 0"),
        ("周末 10点", "0 10 * * 0,6"),
        ("每月1号 10:00", "0 10 1 * *"),
        ("每月15日 10:00", "0 10 15 * *"),
        ("每月最后一天 20:00", "0 20 last * *"),
        ("every weekday 11:30", "30 11 * * 1-5"),
        ("every mon, wed 9:00", "0 9 * * 1,3"),
    ],
)
def test_repeat_shorthand_becomes_cron(typed, cron):
    assert stored(typed)["cron"] == cron


def test_offsets_with_words_and_a_date_time():
    assert stored("30分钟")["offset"] == "30m"
    assert stored("2天")["offset"] == "2d"
    assert stored("1天6小时")["offset"] == "1d6h"
    assert stored("半小时")["offset"] == "30m"
    assert stored("2027-03-05 10:00") == {"kind": "at", "at": "2027-03-05T10:00:00"}
    assert parse_timing("at 2027-03-05 10:00")["kind"] == "at"


def test_not_shorthand_and_bad_clock_times():
    assert parse_shorthand("") is None
    assert parse_shorthand("sometime") is None
    with pytest.raises(ValueError):
        parse_shorthand("每天 25:00")
    with pytest.raises(ValueError):
        stored("下周")


@pytest.mark.parametrize(
    ("timing", "zh", "en"),
    [
        ("+3h", "加好友后 3 小时", "3 hours after being added as a friend"),
        ("0m", "加好友后立即", "right after being added as a friend"),
        ("1d6h", "加好友后 1 天 6 小时", "1 day 6 hours after being added as a friend"),
        ("day 2 20:00", "第 2 天 20:00", "day 2 at 20:00"),
        ("cron 0 11 * * *", "每天 11:00", "every day at 11:00"),
        ("cron 30 11 * * 1-5", "每个工作日 11:30", "every weekday at 11:30"),
        ("cron 0 9 * * 1,3", "每周一、三 09:00", "every Mon, Wed at 09:00"),
        ("cron 0 10 * * 0,6", "每个周末 10:00", "every weekend at 10:00"),
        ("cron 0 20 last * *", "每月最后一天 20:00", "on the last day of every month at 20:00"),
        ("cron 0 10 1 * *", "每月 1 日 10:00", "on day 1 of every month at 10:00"),
        ("at 2027-03-05 10:00", "2027-03-05 10:00", "2027-03-05 10:00"),
    ],
)
def test_timing_text_in_both_languages(timing, zh, en):
    assert timing_text(timing) == zh
    assert timing_text(timing, "en") == en


def test_timing_text_by_anchor_and_target():
    assert timing_text("3h", anchor="tag") == "打标签后 3 小时"
    assert timing_text("3h", anchor="fixed") == "开始后 3 小时"
    assert timing_text("3h", target="group") == "进入 SOP 后 3 小时"
    assert "加好友" not in timing_text("3h", target="group")
    assert timing_text("3h", "en", anchor="tag") == "3 hours after being tagged"
    dated = {"kind": "cron", "cron": "0 11 * * *", "end": "2027-06-30T23:59"}
    assert timing_text(dated) == "每天 11:00，至 2027-06-30 23:59 止"
    assert timing_text(dated, "en") == "every day at 11:00, until 2027-06-30 23:59"


def test_policies_and_reasons():
    assert duration_text("90m") == "1 小时 30 分钟"
    assert duration_text("1d", "en") == "1 day"
    assert cap_text("2 per 1d") == "每天最多 2 条"
    assert cap_text("2 per 1d", "en") == "at most 2 per day"
    assert cap_text("wecom_daily") == "每天最多 1 条"
    assert quiet_text("22:00-08:00") == "免打扰时段 22:00–08:00，顺延至 08:00"
    assert quiet_text("22:00-08:00", "en") == "quiet hours 22:00–08:00, deferred to 08:00"
    deferred = "quiet hours 22:00-08:00 (Asia/Shanghai): deferred from 2027-03-02 23:30 to 2027-03-03 08:00"
    assert reason_text(deferred) == "免打扰时段顺延至 08:00"
    assert reason_text(deferred, "en") == "deferred by quiet hours to 08:00"
    capped = "frequency cap 2 per 1d: 2 already sent this window, deferred to 2027-03-03 08:00 (Asia/Shanghai)"
    assert reason_text(capped) == "已达频率上限（每天最多 2 条），顺延至 08:00"
    assert reason_text("time already past when enrolled") == "加入时该时间已过，已跳过"
    assert reason_text("provider said no") == "provider said no"  # a channel's own words


def test_links_appids_and_page_paths_are_checked():
    from sop_templates.part_rules import part_problems
    from sop_templates.service import parse_spec

    def spec(*parts):
        return parse_spec(
            {
                "name": "x",
                "target": "contact",
                "touchpoints": [{"name": "a", "timing": "0m", "content": list(parts)}],
            }
        )

    bad = spec(
        {"kind": "link", "title": "t", "url": "example.com/a"},
        {"kind": "miniprogram", "title": "t", "appid": "商城小程序", "page": "/pages/index"},
        {"kind": "image", "url": "http://example.com/a.png"},
    )
    found = {loc: msg for loc, msg in part_problems(bad)}
    assert set(found) == {
        "touchpoints[0].content[0].url",
        "touchpoints[0].content[1].appid",
        "touchpoints[0].content[1].page",
        "touchpoints[0].content[2].url",
    }
    good = spec(
        {"kind": "link", "title": "t", "url": "https://example.com/a?b=1"},
        {"kind": "miniprogram", "title": "t", "appid": "wx0123456789abcdef", "page": "pages/a/b"},
        {"kind": "image", "url": "/materials/3/a.png"},
        {"kind": "link", "title": "t", "url": "{{ contact.attributes.link }}"},
    )
    assert part_problems(good) == []
    # WeCom's API wants page paths ending in .html
    wecom = spec(
        {"kind": "miniprogram", "title": "t", "appid": "wx0123456789abcdef", "page": "pages/a"}
    )
    assert part_problems(wecom, "wecom") and not part_problems(wecom, "mock")


def test_upcoming_sends_in_words():
    from datetime import datetime

    from sop_templates.wording import next_send_text, when_text

    now = datetime(2027, 3, 2, 21, 30)
    assert when_text(datetime(2027, 3, 3, 11, 0), now) == "明天 11:00"
    assert when_text(datetime(2027, 3, 2, 23, 0), now, "en") == "today 23:00"
    assert when_text(datetime(2027, 3, 5, 11, 0), now) == "周五 03-05 11:00"
    assert when_text(datetime(2027, 3, 5, 11, 0), now, "en") == "Fri 03-05 11:00"
    tomorrow = datetime(2027, 3, 3, 11, 0)
    assert next_send_text(tomorrow, now, 4, "group") == "下次发送：明天 11:00，4 个群"
    assert (
        next_send_text(tomorrow, now, 1, "contact", "en") == "Next send: tomorrow 11:00, 1 contact"
    )
