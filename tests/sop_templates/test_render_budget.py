"""Rendering stops itself: a time and a size budget per message part, so
hostile content is a validation error, never a hung request or worker."""

from __future__ import annotations

import time

import pytest
from factories import new_friend_spec

from sop_templates.rendering import RenderBudgetError, RenderError, build_context, render_string
from sop_templates.service import TemplateValidationError, parse_spec

NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HOSTILE = [
    (NESTED, "200 ms"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "20,000"),
    ("{{ 'a' * 100000000 }}", "20,000"),
    ("{{ [1] * 100000000 }}", "a list"),
    ("{% set s = 'a' * 20000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", "200 ms"),
    # recursion: a macro calling itself, twice per level
    ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
     "200 ms"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "递归"),
    # doubling a string in a loop, with ~ and with +
    ("{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}", "20,000"),
    ("{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
     "{% endfor %}", "20,000"),
    # filters and methods that would build a huge string in one call
    ("{{ ('a' * 20000)|replace('a', 'b' * 20000) }}", "replace"),
    ("{{ range(100000)|join('x' * 20000) }}", "join"),
    ("{{ 'x'|center(100000000) }}", "center"),
    ("{{ 'a'.center(100000000) }}", "center"),
    ("{{ '%0100000000d' % 1 }}", "formatted"),
    ("{{ '%0100000000d'|format(1) }}", "formatted"),
    ("{{ '{:>100000000}'.format(1) }}", "formatted"),
    ("{{ 3 ** 100000000 }}", "too large"),
    ("{{ ('x' * 20000).join(['a'] * 100000) }}", "join"),
]  # fmt: skip


def _spec(content: str) -> dict:
    spec = new_friend_spec()
    spec["touchpoints"] = [{"name": "a", "timing": "+0m", "content": content}]
    return spec


@pytest.mark.parametrize(("content", "message"), HOSTILE)
def test_hostile_content_is_refused_at_validation_within_a_second(content, message):
    # The budget is the thread's CPU time (wall time on a busy machine is longer,
    # up to WALL_FACTOR budgets per render).
    started, cpu = time.perf_counter(), time.thread_time()
    with pytest.raises(TemplateValidationError) as caught:
        parse_spec(_spec(content))
    assert time.thread_time() - cpu < 1.0
    assert time.perf_counter() - started < 10.0
    (problem,) = caught.value.problems
    assert problem[0] == "touchpoints[0].content[0].text"
    assert message in problem[1]


def test_budget_errors_are_render_errors_so_a_send_fails_with_the_reason():
    context = build_context(
        target_kind="contact", target={"name": "李四"}, template_name="t", touchpoint_name="a"
    )
    with pytest.raises(RenderBudgetError) as caught:
        render_string(NESTED, context)
    assert isinstance(caught.value, RenderError)
    assert "200 ms" in str(caught.value)


def test_the_budget_comes_from_the_settings_and_can_be_passed():
    context = {"n": 30}
    assert render_string("{{ 'ab' * n }}", context, limits=(0.2, 60)) == "ab" * 30
    with pytest.raises(RenderBudgetError, match="60"):
        render_string("{{ 'ab' * n }}!", context, limits=(0.2, 60))


def test_ordinary_content_renders_as_before():
    context = build_context(
        target_kind="contact", target={"name": "李四"}, template_name="t", touchpoint_name="a"
    )
    text = "{{ contact.name }}，{{ 'a' * 3 }} {{ [1, 2]|join(',') }} {{ '%05d' % 7 }}{{ 'x'|center(5) }}"
    assert render_string(text, context) == "李四，aaa 1,2 00007  x  "


def test_a_misspelt_field_is_named_in_words():
    with pytest.raises(TemplateValidationError) as caught:
        parse_spec(_spec("{{ contact.nmae }}，你好"))
    message = dict(caught.value.problems)["touchpoints[0].content[0].text"]
    assert message.startswith("未定义的变量 contact.nmae")
    assert "dict object" not in message


def test_due_at_is_a_content_variable():
    spec = parse_spec(_spec("请在 {{ due_at }} 前回复"))
    assert spec.touchpoints[0].content[0].text.startswith("请在")


def test_validation_also_renders_for_real_targets():
    from sop_templates.rendering import validate_content
    from sop_templates.schemas import TemplateSpec

    spec = TemplateSpec.model_validate(
        _spec("{% for x in range(3000 if contact.name != '张三' else 0) %}"
              "{% for y in range(3000) %}{% endfor %}{% endfor %}")
    )  # fmt: skip
    assert validate_content(spec) == []  # the sample contact is 张三
    (problem,) = validate_content(spec, targets=[{"id": 7, "name": "王五", "attributes": {}}])
    assert "200 ms" in problem[1] and "王五" in problem[1]


def test_the_budget_counts_cpu_time_not_time_waiting_for_the_cpu():
    """A render preempted on a busy machine (or waiting for the GIL) is not the
    template's fault: past its wall-clock deadline it goes on while the
    thread's CPU time is under the budget, and stops once that is spent."""
    from sop_templates.sandbox import Budget, RenderTooSlow

    waited = Budget(0.2, 100, deadline=time.perf_counter() - 5.0)  # 5 s ago, no CPU used
    waited.check_time()
    assert waited.deadline > time.perf_counter()  # looks again when the rest could be spent

    spent = Budget(0.2, 100, deadline=time.perf_counter() - 5.0)
    spent.cpu_start = time.thread_time() - 0.25  # as if 250 ms of this thread's CPU were used
    with pytest.raises(RenderTooSlow, match="200 ms"):
        spent.check_time()

    ceiling = Budget(0.2, 100, deadline=time.perf_counter() - 5.0)
    ceiling.hard_deadline = time.perf_counter() - 1.0  # WALL_FACTOR budgets have gone by
    with pytest.raises(RenderTooSlow):
        ceiling.check_time()
