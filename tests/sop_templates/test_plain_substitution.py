"""Plain ``{{ a.b }}`` templates are filled in without Jinja: the text must be
exactly what Jinja renders, and anything else must still go through Jinja."""

from __future__ import annotations

from typing import Any

import pytest

from sop_templates.rendering import RenderError, _compile, _plain, render_string
from sop_templates.sandbox import render_within

CONTEXT: dict[str, Any] = {
    "contact": {"name": "张三", "id": 42, "attributes": {"city": "上海"}, "ok": True},
    "template": {"name": "新好友"},
    "nothing": None,
}

SAME = [
    "{{ contact.name }}，你好",
    "{{contact.id}}-{{ contact.attributes.city }}\n",
    "  {{- contact.name -}}  ！",
    "{{ template.name }}{{ contact.name }}",
    "第 {{ contact.id }} 位",
    "{# note #}{{ contact.name }}",
]


@pytest.mark.parametrize("source", SAME)
def test_plain_text_is_what_jinja_renders(source: str) -> None:
    assert _plain(source) is not None
    assert render_string(source, CONTEXT) == render_within(_compile(source), CONTEXT, 1.0, 10_000)


@pytest.mark.parametrize(
    "source",
    ["{{ contact.name|upper }}", "{% if contact.ok %}是{% endif %}", "{{ contact['name'] }}",
     "{{ contact.items }}", "{{ contact.__class__ }}"],
)  # fmt: skip
def test_anything_more_goes_through_jinja(source: str) -> None:
    assert _plain(source) is None


def test_values_other_than_text_and_numbers_use_jinja() -> None:
    assert render_string("a {{ nothing }}", CONTEXT) == "a None"
    assert render_string("{{ contact.ok }}", CONTEXT) == "True"


def test_a_missing_field_is_still_the_operator_error() -> None:
    with pytest.raises(RenderError, match="contact.nmae"):
        render_string("{{ contact.nmae }}", CONTEXT)


def test_the_size_budget_still_applies() -> None:
    long = {"contact": {"name": "x" * 50}}
    with pytest.raises(RenderError):
        render_string("{{ contact.name }}", long, limits=(1.0, 10))
