"""Checks of a template that need the database, run when it is validated,
saved as a draft and published (``service.check_spec``):
its content rendered for a few real targets of its segment (within the render
budget), and the limits of the channel it is bound to (WeCom's text size).

Shape, timings and the sample render are checked by ``service.parse_spec``,
which needs no database."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from sop_templates.rendering import RenderError, render_string, sample_context, validate_content
from sop_templates.schemas import TemplateSpec

REAL_TARGETS = 3  # how many members of the segment validation renders for


def publish_problems(session: Session, spec: TemplateSpec) -> list[tuple[str, str]]:
    """``(location, message)`` pairs, empty when the template may go live."""
    targets = real_targets(session, spec)
    # The sample alone was rendered by parse_spec; render again only with real targets.
    problems = validate_content(spec, targets) if targets else []
    return problems or _address_problems(session, spec) or channel_problems(session, spec, targets)


def _address_problems(session: Session, spec: TemplateSpec) -> list[tuple[str, str]]:
    """Links, AppIDs and page paths a send could not deliver (``part_rules``)."""
    from channels.models import ChannelInstance
    from sop_templates.part_rules import part_problems

    instance = session.exec(
        select(ChannelInstance).where(ChannelInstance.name == spec.channel)
    ).first()
    return part_problems(spec, instance.adapter if instance else None)


def real_targets(session: Session, spec: TemplateSpec, limit: int = REAL_TARGETS) -> list[Any]:
    """A few active members of the template's segment, as a send renders them."""
    if spec.segment is None:
        return []
    from audiences import service as audiences_service
    from audiences.segment_queries import segment_query

    try:
        query = segment_query(session, spec.target, spec.segment)  # type: ignore[arg-type]
    except (LookupError, ValueError):  # e.g. a tag nobody has yet: no members to try
        return []
    ids = list(session.execute(query.order_by(None).limit(limit)).scalars())
    return list(audiences_service.render_targets(session, spec.target, ids).values())


def _text_limit(adapter: str, mode: str) -> int | None:
    """Bytes of text one message may carry on ``adapter`` (None: no known limit)."""
    if adapter == "wecom":
        from channels.wecom import MAX_REMIND_TEXT_BYTES
        from channels.wecom_content import MAX_TASK_TEXT_BYTES

        return MAX_REMIND_TEXT_BYTES if mode == "remind" else MAX_TASK_TEXT_BYTES
    if adapter == "wecom_group_bot":
        from channels.wecom_group_bot import MAX_TEXT_BYTES

        return MAX_TEXT_BYTES
    return None


def channel_problems(
    session: Session, spec: TemplateSpec, targets: list[Any] | None = None
) -> list[tuple[str, str]]:
    """Each touchpoint's rendered text against the bound channel's own limit."""
    from channels.models import ChannelInstance

    instance = session.exec(
        select(ChannelInstance).where(ChannelInstance.name == spec.channel)
    ).first()
    if instance is None:
        return []
    problems = []
    for i, touchpoint in enumerate(spec.touchpoints):
        limit = _text_limit(instance.adapter, touchpoint.mode)
        if limit is None:
            continue
        size = max(_text_bytes(spec, i, target) for target in [None, *(targets or [])])
        if size > limit:
            problems.append(
                (
                    f"touchpoints[{i}].content",
                    f"文字 {size} 字节，超过渠道 {instance.name}（{instance.adapter}）"
                    f"每条消息 {limit} 字节的上限 (text is {size} bytes; channel "
                    f"{instance.name!r} ({instance.adapter}) allows at most {limit} bytes "
                    "per message)",
                )
            )
    return problems


def _text_bytes(spec: TemplateSpec, index: int, target: Any) -> int:
    """UTF-8 size of a touchpoint's text parts as one message (WeCom joins them
    with newlines)."""
    touchpoint = spec.touchpoints[index]
    context = sample_context(spec, touchpoint.name)
    if target is not None:
        context = {**context, "target": target, spec.target: target}
    texts = []
    for part in touchpoint.content:
        if part.kind == "text":
            try:
                texts.append(render_string(part.text, context))
            except RenderError:  # reported by validate_content
                continue
    return len("\n".join(texts).encode("utf-8"))
