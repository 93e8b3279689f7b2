"""Rules of the WeCom execution modes, checked with the template's shape
(``service.parse_spec``), so the YAML file, the API and the editor refuse the
same things:

* ``mode: welcome`` greets a new friend with the WelcomeCode of the add event,
  valid for 20 s: only a contact SOP counted from the friend-added time, at
  ``+0`` (developer.work.weixin.qq.com/document/path/92137).
* ``mode: moment`` (朋友圈) is text plus up to 9 images, or one video, or one
  link (``add_moment_task``, document/path/95094).

Messages are read by ``api.error_codes`` into codes and the operator's language.
"""

from __future__ import annotations

from datetime import timedelta

from sop_templates.schemas import TemplateSpec, TouchpointSpec
from sop_templates.timing import OffsetTiming, parse_duration


def mode_problems(spec: TemplateSpec) -> list[tuple[str, str]]:
    """``(location, message)`` for every touchpoint its mode cannot run."""
    from channels.wecom_moments import moment_shape_problem  # WeCom's own rule

    problems: list[tuple[str, str]] = []
    for i, touchpoint in enumerate(spec.touchpoints):
        if touchpoint.mode == "welcome" and not _is_new_friend_start(spec, touchpoint):
            problems.append(
                (
                    f"touchpoints[{i}].mode",
                    "mode welcome is only for a new-friend +0 touchpoint "
                    "(contacts, counted from the friend-added time, timing +0)",
                )
            )
        if touchpoint.mode == "moment":
            contents = [touchpoint.content]
            contents += [v.content for v in touchpoint.variants or []]
            for content in contents:
                problem = moment_shape_problem([p.kind for p in content])
                if problem:
                    problems.append((f"touchpoints[{i}].content", problem))
                    break
    return problems


def _is_new_friend_start(spec: TemplateSpec, touchpoint: TouchpointSpec) -> bool:
    if spec.target != "contact" or spec.anchor != "join":
        return False
    timing = touchpoint.timing
    if not isinstance(timing, OffsetTiming):
        return False
    try:
        return parse_duration(timing.offset) == timedelta(0)
    except ValueError:
        return False
