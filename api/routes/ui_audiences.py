"""Operator UI: contacts, group chats and segments (search, tags, the SOPs each
target is in and what it received; segment counts)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlmodel import Session

from api import template_actions
from api.auth import Author, Reader
from api.deps import ClockDep, FormDep, SessionDep
from api.routes import ui_audience_edit
from api.views import error_text, redirect, render, translator
from audiences import saved_segments, segment_queries, segments
from audiences import search as audiences_search
from audiences import service as audiences_service
from audiences.models import Contact, ContactStatus, GroupChat, GroupStatus
from scheduler.analytics import log as delivery_log
from scheduler.flows import targets as scheduler_targets
from scheduler.outbox import service as scheduler_service
from sop_templates import service as templates_service
from sop_templates.models import TemplateStatus
from sop_templates.schemas import TemplateSpec
from sopbot.ids import parse_id

router = APIRouter(include_in_schema=False)

PAGE = 50


def _kind(path_kind: str) -> str:
    return "contact" if path_kind == "contacts" else "group"


@router.get("/contacts", response_class=HTMLResponse)
@router.get("/groups", response_class=HTMLResponse)
def target_list(
    request: Request,
    me: Reader,
    session: SessionDep,
    q: str = "",
    tag: str = "",
    status: str = "",
    account: str = "",
    page: int = 1,
    error: str = "",
) -> Response:
    path_kind = request.url.path.strip("/")
    kind = _kind(path_kind)
    page = max(page, 1)
    result = audiences_search.search(
        session,
        kind,
        q=q or None,
        tag=tag or None,
        status=status or None,
        account=account or None,
        limit=PAGE,
        offset=(page - 1) * PAGE,
    )
    filters = {"q": q, "tag": tag, "status": status, "account": account}
    return render(
        request,
        "ui/targets.html",
        {
            "kind": kind,
            "path_kind": path_kind,
            "result": result,
            "q": q,
            "tag": tag,
            "status": status,
            "account": account,
            "filters": filters,
            "filter_query": urlencode({k: v for k, v in filters.items() if v}),
            "statuses": ContactStatus.ALL if kind == "contact" else GroupStatus.ALL,
            "accounts": audiences_search.all_accounts(session),
            "flash": ui_audience_edit.done_message(
                translator(request), kind, dict(request.query_params)
            ),
            "flash_error": error or None,
            "page": page,
            "pages": max(1, -(-result.total // PAGE)),
            "all_tags": audiences_search.all_tags(session),
        },
    )


def _detail(request: Request, session: Session, kind: str, target_id: int, **extra: Any) -> Any:
    model: Any = Contact if kind == "contact" else GroupChat
    target = session.get(model, target_id)
    if target is None:
        raise audiences_service.NotFound(f"no {kind} with id {target_id}")
    tags = audiences_service.tags_of(session, kind, [target_id])[target_id]
    flt = delivery_log.LogFilter(
        contact_id=target_id if kind == "contact" else None,
        group_id=target_id if kind == "group" else None,
    )
    page = delivery_log.list_page(session, flt, sort="due_at", order="desc", limit=50)
    enrollable = [
        t
        for t in templates_service.list_templates(session)
        if t.target_kind == kind and t.status in (TemplateStatus.PUBLISHED, TemplateStatus.PAUSED)
    ]
    return render(
        request,
        "ui/target_detail.html",
        {
            "kind": kind,
            "path_kind": "contacts" if kind == "contact" else "groups",
            "target": target,
            "tags": sorted(tags),
            "sops": scheduler_targets.enrollments_of(session, kind, target_id),
            "deliveries": page.entries,
            "enrollable": enrollable,
            **extra,
        },
    )


@router.get("/contacts/{target_id}", response_class=HTMLResponse)
@router.get("/groups/{target_id}", response_class=HTMLResponse)
def target_detail(
    target_id: int, request: Request, me: Reader, session: SessionDep, done: str = ""
) -> Response:
    kind = _kind(request.url.path.strip("/").split("/")[0])
    _ = translator(request)
    flash = _("Enrolled.") if done == "enrolled" else None
    return _detail(request, session, kind, target_id, flash=flash)


@router.post("/contacts/{target_id}/enroll")
@router.post("/groups/{target_id}/enroll")
def enroll(
    target_id: int,
    request: Request,
    form: FormDep,
    me: Author,
    session: SessionDep,
    clock: ClockDep,
) -> Response:
    """Enroll this target into a published SOP by hand (anchored at its join time)."""
    kind = _kind(request.url.path.strip("/").split("/")[0])
    template_id = parse_id(form.get("template_id")) or 0
    try:
        template = templates_service.get_template(session, template_id)
        model: Any = Contact if kind == "contact" else GroupChat
        target = session.get(model, target_id)
        if target is None or template.target_kind != kind:
            raise scheduler_service.EnrollmentError(f"this SOP does not send to {kind}s")
        if form.get("confirm") != "1" and not _in_segment(session, template, kind, target_id):
            _ = translator(request)
            return _detail(
                request,
                session,
                kind,
                target_id,
                confirm_enroll={
                    "template_id": template.id,
                    "message": _("%(name)s is not in the segment of “%(sop)s”. Enroll anyway?")
                    % {"name": target.name or target.external_id, "sop": template.name},
                },
            )
        pairs = [(target_id, target.joined_at)]
        template_actions.enroll(
            request, session, me, template, pairs, clock.now(), named=f"{kind} {target_id}"
        )
    except (scheduler_service.EnrollmentError, templates_service.NotFound) as exc:
        return _detail(request, session, kind, target_id, flash_error=error_text(request, exc))
    path = "contacts" if kind == "contact" else "groups"
    return redirect(request, f"/{path}/{target_id}?done=enrolled")


def _in_segment(session: Session, template: Any, kind: str, target_id: int) -> bool:
    """Whether the target is in the segment of the SOP's live version (an SOP
    without a segment takes anyone enrolled by hand)."""
    if template.current_version_id is None:
        return True
    spec = templates_service.version_spec(
        templates_service.get_version(session, template.current_version_id)
    )
    if spec.segment is None:
        return True
    query = segment_queries.segment_query(session, kind, spec.segment)  # type: ignore[arg-type]
    ids = query.subquery()
    return bool(session.execute(select(ids.c[0]).where(ids.c[0] == target_id).limit(1)).first())


# -- segments ------------------------------------------------------------------------------


@router.get("/segments", response_class=HTMLResponse)
def segments_page(
    request: Request,
    me: Reader,
    session: SessionDep,
    target: str = "contact",
    kind: str = "",
    tags: str = "",
    accounts: str = "",
    name_pattern: str = "",
) -> Response:
    """Every template's segment with its live count, and a segment to try out."""
    rows = []
    for template in templates_service.list_templates(session):
        if template.status == TemplateStatus.ARCHIVED:
            continue
        try:
            spec = TemplateSpec.model_validate(template.draft)
        except ValidationError:
            continue
        if spec.segment is None:
            continue
        count = segment_queries.preview(session, spec.target, spec.segment, limit=0).count
        rows.append({"template": template, "segment": spec.segment, "count": count})
    trial: dict[str, Any] = {
        "target": target,
        "kind": kind,
        "tags": tags,
        "accounts": accounts,
        "name_pattern": name_pattern,
    }
    result = error = None
    if kind:
        raw: dict[str, Any] = {"kind": kind}
        names = [a.strip() for a in accounts.split(",") if a.strip()]
        if tags.strip():
            raw["tags"] = tags.strip()
        if kind == "groups":
            if name_pattern.strip():
                raw["name_pattern"] = name_pattern.strip()
            if names:
                raw["owners"] = names
        elif names:
            raw["accounts"] = names
        try:
            segment = segments.SEGMENT_KINDS[kind].model_validate(raw)
            result = segment_queries.preview(
                session,
                segments.SEGMENT_TARGET[kind],
                segment,  # type: ignore[arg-type]
                limit=20,
            )
        except (ValidationError, KeyError, ValueError) as exc:
            error = error_text(request, exc)
    return render(
        request,
        "ui/segments.html",
        {
            "rows": rows,
            "saved": [
                (saved, saved_segments.evaluate(session, saved.definition, limit=0).count)
                for saved in saved_segments.all_saved(session)
            ],
            "trial": trial,
            "result": result,
            "error": error,
            "all_tags": audiences_search.all_tags(session),
        },
    )
