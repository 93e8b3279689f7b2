"""The template editor's form ↔ spec, its structural actions, and validation
problems landing next to the field at fault."""

from __future__ import annotations

import pytest

from api import editor_errors, editor_forms
from sop_templates import library
from sop_templates import service as templates_service
from sop_templates.service import TemplateValidationError


@pytest.mark.parametrize("name", library.names())
def test_library_specs_survive_the_form_round_trip(name):
    original = templates_service.parse_spec(library.load(name))
    form = editor_forms.form_from_spec(original.model_dump(mode="json"))
    again = templates_service.parse_spec(editor_forms.spec_from_form(form))
    assert again == original


def test_policies_and_fixed_start_round_trip():
    spec = {
        **library.load("tagged_class"),
        "anchor": "fixed",
        "start_at": "2027-04-01T09:00",
        "quiet_hours": {"start": "22:00", "end": "08:00", "policy": "skip"},
        "frequency_cap": {"max": 2, "per": "1d", "policy": "defer"},
    }
    original = templates_service.parse_spec(spec)
    form = editor_forms.form_from_spec(original.model_dump(mode="json"))
    assert (form["quiet_mode"], form["cap_mode"], form["start_at"]) == (
        "custom",
        "custom",
        "2027-04-01T09:00",
    )
    assert templates_service.parse_spec(editor_forms.spec_from_form(form)) == original


def _problems(form):
    with pytest.raises(TemplateValidationError) as caught:
        templates_service.parse_spec(editor_forms.spec_from_form(form))
    return editor_errors.map_problems(caught.value.problems, form)


def test_a_bad_cron_is_reported_at_its_field():
    form = editor_forms.form_from_spec(library.load("new_friend"))
    form["touchpoints"][1].update(timing_kind="cron", cron="0 25 * * *")
    errors = _problems(form)
    assert list(errors.by_field) == ["tp-1-cron"]
    assert "25" in errors.get("tp-1-cron")[0]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda f: f.update(name=""), "name"),
        (lambda f: f.update(timezone="Mars/Base"), "timezone"),
        (lambda f: f["touchpoints"][0].update(offset_n="soon"), "tp-0-offset_n"),
        (lambda f: f["touchpoints"][0].update(shorthand="soon"), "tp-0-shorthand"),
        (lambda f: f["touchpoints"][2].update(day="0"), "tp-2-day"),
        (lambda f: f["touchpoints"][2].update(at="25:00"), "tp-2-at"),
        (lambda f: f["touchpoints"][0]["parts"][0].update(text=""), "tp-0-part-0-text"),
        (lambda f: f["touchpoints"][0]["parts"][0].update(text="{{ nope }}"), "tp-0-part-0-text"),
        (lambda f: f["touchpoints"][1].update(parts=[]), "tp-1-content"),
        (lambda f: f["touchpoints"][0]["parts"][1].update(url=""), "tp-0-part-1-url"),
        (lambda f: f.update(quiet_mode="custom", quiet_start="22:00"), "quiet_hours"),
    ],
)
def test_problems_land_next_to_their_field(change, field):
    form = editor_forms.form_from_spec(library.load("new_friend"))
    change(form)
    errors = _problems(form)
    assert field in errors.by_field, (errors.by_field, errors.general)


def test_template_wide_problems_are_shown_at_the_top():
    form = editor_forms.form_from_spec(library.load("new_friend"))
    form["touchpoints"][1]["name"] = form["touchpoints"][0]["name"]
    errors = _problems(form)
    assert not errors.by_field and "must differ" in errors.general[0]


def test_add_move_and_remove_touchpoints_and_parts():
    form = editor_forms.form_from_spec(library.load("new_friend"))
    names = lambda: [tp["name"] for tp in form["touchpoints"]]  # noqa: E731
    first, second, third = names()
    assert editor_forms.apply_action(form, "down:0", {})
    assert names() == [second, first, third]
    editor_forms.apply_action(form, "up:2", {})
    assert names() == [second, third, first]
    editor_forms.apply_action(
        form, "add_touchpoint", {"_step_name": "第 %d 步", "_step_text": "hi"}
    )
    assert len(form["touchpoints"]) == 4 and form["touchpoints"][3]["name"] == "第 4 步"
    templates_service.parse_spec(editor_forms.spec_from_form(form))  # a new step starts valid
    assert (
        form["touchpoints"][3]["offset_n"] == "1" and form["touchpoints"][3]["offset_unit"] == "d"
    )
    editor_forms.apply_action(form, "add_part:0", {"tp-0-new-part": "image"})
    assert [p["kind"] for p in form["touchpoints"][0]["parts"]] == ["miniprogram", "text", "image"]
    editor_forms.apply_action(form, "part_up:0:2", {})
    editor_forms.apply_action(form, "remove_part:0:0", {})
    assert [p["kind"] for p in form["touchpoints"][0]["parts"]] == ["image", "text"]
    editor_forms.apply_action(form, "remove_touchpoint:3", {})
    assert names() == [second, third, first]
    assert not editor_forms.apply_action(form, "launch_rockets", {})


def test_the_posted_form_is_read_back_as_typed():
    form = editor_forms.form_from_spec(library.load("new_friend"))
    posted = {k: v for k, v in form.items() if not isinstance(v, list | bool)}
    posted["exit_on_inactive"] = "on"
    posted["tp-count"] = "1"
    posted.update({"tp-0-name": "hi", "tp-0-timing_kind": "offset", "tp-0-offset_n": "3"})
    posted["tp-0-offset_unit"] = "h"
    posted.update({"tp-0-part-count": "1", "tp-0-part-0-kind": "text"})
    posted["tp-0-part-0-text"] = "  line one\nline two "
    read = editor_forms.form_from_request(posted)
    assert read["touchpoints"][0]["parts"][0]["text"] == "  line one\nline two "
    assert read["exit_on_inactive"] is True and read["exit_on_segment_mismatch"] is False
    assert (
        templates_service.parse_spec(editor_forms.spec_from_form(read)).touchpoints[0].name == "hi"
    )


def test_cron_bounds_round_trip():
    spec = library.load("store_groups")
    spec["touchpoints"][0]["timing"] = {
        "cron": "0 11 * * 1-5",
        "start": "2027-04-01T00:00",
        "end": "2027-06-30T23:59",
    }
    original = templates_service.parse_spec(spec)
    form = editor_forms.form_from_spec(original.model_dump(mode="json"))
    assert form["touchpoints"][0]["cron_end"] == "2027-06-30T23:59"
    assert templates_service.parse_spec(editor_forms.spec_from_form(form)) == original
    form["touchpoints"][0]["cron_end"] = "2027-03-01T00:00"  # before its start
    with pytest.raises(TemplateValidationError) as caught:
        templates_service.parse_spec(editor_forms.spec_from_form(form))
    errors = editor_errors.map_problems(caught.value.problems, form)
    assert "tp-0-timing" in errors.by_field


WECOM_NEW_FRIEND_YAML = """
name: 新好友欢迎
target: contact
anchor: join
channel: wecom-a
segment: {kind: new_friends}
touchpoints:
  - name: 欢迎语
    timing: +0m
    mode: welcome
    fallback: remind
    content:
      - 你好，欢迎！
      - {link: {title: 问卷, url: "https://example.com/q"}}
  - name: 新品朋友圈
    timing: +1d
    mode: moment
    visible_to: {accounts: [staff_li], tags: [vip, 新客]}
    content:
      - 新品开箱
      - {video: "wecom-media:VIDEO_1"}
"""


def test_wecom_modes_round_trip_as_the_yaml_stores_them():
    import yaml

    original = templates_service.parse_spec(yaml.safe_load(WECOM_NEW_FRIEND_YAML))
    form = editor_forms.form_from_spec(original.model_dump(mode="json"))
    welcome, moment = form["touchpoints"]
    assert (welcome["mode"], welcome["fallback"]) == ("welcome", "remind")
    assert (moment["visible_accounts"], moment["visible_tags"]) == ("staff_li", "vip, 新客")
    assert moment["parts"][1] == {"kind": "video", "url": "wecom-media:VIDEO_1"}
    again = templates_service.parse_spec(editor_forms.spec_from_form(form))
    assert again.model_dump(mode="json") == original.model_dump(mode="json")


def test_a_posted_welcome_and_moment_become_the_yaml_form():
    import yaml
    from starlette.datastructures import FormData

    original = templates_service.parse_spec(yaml.safe_load(WECOM_NEW_FRIEND_YAML))
    fields = {
        "name": "新好友欢迎",
        "target": "contact",
        "channel": "wecom-a",
        "anchor": "join",
        "segment_kind": "new_friends",
        "exit_on_inactive": "on",
        "exit_on_segment_mismatch": "on",
        "reentry": "never",
        "quiet_mode": "default",
        "cap_mode": "default",
        "tp-count": "2",
        "tp-0-name": "欢迎语",
        "tp-0-mode": "welcome",
        "tp-0-fallback": "remind",
        "tp-0-timing_kind": "offset",
        "tp-0-offset_n": "0",
        "tp-0-offset_unit": "m",
        "tp-0-part-count": "2",
        "tp-0-part-0-kind": "text",
        "tp-0-part-0-text": "你好，欢迎！",
        "tp-0-part-1-kind": "link",
        "tp-0-part-1-title": "问卷",
        "tp-0-part-1-url": "https://example.com/q",
        "tp-1-name": "新品朋友圈",
        "tp-1-mode": "moment",
        "tp-1-fallback": "task",  # hidden for a moment: not stored
        "tp-1-visible_accounts": "staff_li",
        "tp-1-visible_tags": "vip，新客",
        "tp-1-timing_kind": "offset",
        "tp-1-offset_n": "1",
        "tp-1-offset_unit": "d",
        "tp-1-part-count": "2",
        "tp-1-part-0-kind": "text",
        "tp-1-part-0-text": "新品开箱",
        "tp-1-part-1-kind": "video",
        "tp-1-part-1-url": "wecom-media:VIDEO_1",
    }
    form = editor_forms.form_from_request(FormData(list(fields.items())))
    spec = templates_service.parse_spec(editor_forms.spec_from_form(form))
    assert spec.model_dump(mode="json") == original.model_dump(mode="json")


def test_wecom_modes_are_offered_for_customers_on_a_wecom_channel_only():
    from api import editor_modes

    wecom = ["wecom-a"]
    assert "welcome" in editor_modes.offered("wecom-a", wecom, "contact", "send")
    assert "moment" in editor_modes.offered("wecom-a", wecom, "contact", "send")
    assert editor_modes.offered("mock", wecom, "contact", "send") == ("send", "task", "remind")
    assert editor_modes.offered("wecom-a", wecom, "group", "send") == ("send", "task", "remind")
    # a mode already chosen is kept (validation says why it cannot stay)
    assert "welcome" in editor_modes.offered("mock", wecom, "contact", "welcome")
