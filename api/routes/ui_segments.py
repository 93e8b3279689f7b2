"""Operator UI: saved segments (人群) built with the tag picker — chips for
tags every member has (AND), tags of which one is enough (OR) and tags that
exclude (NOT) — with the live count and sample members, reused to start a
tagged-customer SOP."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from api import auth, template_actions
from api.auth import Author, Reader
from api.deps import ClockDep, FormDep, SessionDep
from api.i18n import N_
from api.views import error_text, redirect, render, translator
from audiences import saved_segments
from audiences import search as audiences_search
from audiences.saved_segments import Picked, SegmentError
from sop_templates import library
from sop_templates.service import TemplateError

router = APIRouter(include_in_schema=False)
CLICK_CHOICES = (3, 7, 14, 30)  # "clicked a tracked link in the last N days"

ERRORS = {
    "no_tags": N_("Pick at least one tag that every member has, or one of several."),
    "no_name": N_("Give the segment a name."),
    "long_name": N_("The name is longer than 100 characters."),
    "invalid": N_("This combination of tags cannot be used."),
    "kind": N_("Unknown segment kind."),
    "attribute": N_("Write an attribute filter as name=value, e.g. 城市=上海."),
    "attribute_name": N_("An attribute name is at most 64 characters, without quotes."),
}


def _picker(
    session: Any,
    picked: Picked,
    accounts: list[str],
    name: str,
    attrs: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    attrs = attrs or []
    offered = [f"{k}={v}" for k, v, _n in audiences_search.attribute_values(session)]
    context: dict[str, Any] = {
        "all_tags": audiences_search.all_tags(session),
        "tag_groups": audiences_search.tag_groups(session),
        "accounts": audiences_search.all_accounts(session),
        "attribute_chips": offered + [a for a in attrs if a not in offered],
        "picked": picked,
        "chosen_accounts": accounts,
        "chosen_attrs": attrs,
        "name": name,
        "click_choices": CLICK_CHOICES,
        "result": None,
        **extra,
    }
    return context


def _definition(
    picked: Picked, accounts: list[str], attrs: list[str], days: int | None
) -> dict[str, Any]:
    attributes = saved_segments.parse_attribute_chips(attrs)
    return saved_segments.definition(
        picked, accounts=accounts, attributes=attributes, clicked_days=days
    )


@router.get("/segments/build", response_class=HTMLResponse)
def build_page(
    request: Request,
    me: Reader,
    session: SessionDep,
    clock: ClockDep,
    all: list[str] = Query([]),  # noqa: A002 - the form's field names
    any: list[str] = Query([]),  # noqa: A002
    none: list[str] = Query([]),
    account: list[str] = Query([]),
    attr: list[str] = Query([]),
    attr_new: str = "",
    name: str = "",
    id: int | None = None,  # noqa: A002
    done: str = "",
    clicked: str = "",
) -> Response:
    """The picker with the live count and the first members of what is picked."""
    _ = translator(request)
    saved = saved_segments.get(session, id) if id else None
    accounts, attrs = [a for a in account if a], [a for a in attr if a.strip()]
    if attr_new.strip():
        attrs.append(attr_new.strip())
    if saved is not None and not (all or any or none):
        picked = saved_segments.chips(saved.definition)
        name = name or saved.name
        accounts = accounts or list(saved.definition.get("accounts") or [])
        attrs = attrs or saved_segments.attribute_chips(saved.definition)
        days = saved_segments.clicked_days(saved.definition)
    else:
        picked = Picked(list(all), list(any), list(none))
        days = _days(clicked)
    context = _picker(session, picked, accounts, name, attrs, saved=saved, clicked=days)
    if done == "saved":
        context["flash"] = _("Segment saved.")
    if picked.all or picked.any or picked.none:
        try:
            raw = _definition(picked, accounts, attrs, days)
            result = saved_segments.evaluate(session, raw, now=clock.now())
            context.update(result=result, expression=_expression_text(raw))
        except SegmentError as exc:
            context["error"] = _(ERRORS.get(exc.code, ERRORS["invalid"]))
    return render(request, "ui/segment_build.html", context)


def _days(value: str) -> int | None:
    """A choice of the "clicked in the last N days" field; anything else: no condition."""
    return int(value) if value.isdigit() and int(value) in CLICK_CHOICES else None


def _expression_text(raw: dict[str, Any]) -> str:
    from audiences.tag_expressions import parse_tag_expr

    return str(parse_tag_expr(raw["tags"]))


@router.post("/segments/build")
def save_segment(
    request: Request, form: FormDep, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    _ = translator(request)
    picked = Picked(
        [str(v) for v in form.getlist("all")],
        [str(v) for v in form.getlist("any")],
        [str(v) for v in form.getlist("none")],
    )
    accounts = [str(a).strip() for a in form.getlist("account") if str(a).strip()]
    attrs = [str(a).strip() for a in form.getlist("attr") if str(a).strip()]
    if str(form.get("attr_new") or "").strip():
        attrs.append(str(form.get("attr_new")).strip())
    name = str(form.get("name") or "")
    days = _days(str(form.get("clicked") or ""))
    try:
        raw = _definition(picked, accounts, attrs, days)
        row = saved_segments.save(session, name, raw, clock.now())
    except SegmentError as exc:
        session.rollback()
        context = _picker(
            session,
            picked,
            accounts,
            name,
            attrs,
            error=_(ERRORS.get(exc.code, ERRORS["invalid"])),
        )
        return render(request, "ui/segment_build.html", context, status_code=422)
    auth.record(
        request,
        session,
        me,
        "segment.save",
        object_kind="segment",
        object_id=row.id,
        summary=row.name,
    )
    return redirect(request, f"/segments/build?{urlencode({'id': row.id, 'done': 'saved'})}")


@router.post("/segments/saved/{segment_id}/sop")
def new_sop(
    segment_id: int,
    request: Request,
    form: FormDep,
    me: Author,
    session: SessionDep,
    clock: ClockDep,
) -> Response:
    """A tagged-customer SOP draft for this segment (the library's, to edit),
    counted from the time the first required tag was added."""
    _ = translator(request)
    saved = saved_segments.get(session, segment_id)
    if saved is None:
        return redirect(request, "/segments")
    picked = saved_segments.chips(saved.definition)
    if not picked.all:
        context = _picker(
            session,
            picked,
            [],
            saved.name,
            saved=saved,
            error=_("An SOP counts from when a tag was added: pick a tag every member has."),
        )
        return render(request, "ui/segment_build.html", context, status_code=422)
    spec = library.load("tagged_class")
    spec.update(name=f"{saved.name} SOP", segment=saved.definition)
    if form.get("start") == "fixed":
        # everyone in the segment now is enrolled at publish, counted from
        # tomorrow 00:00 in the template's zone (the editor changes it)
        local = clock.now().astimezone(ZoneInfo(spec["timezone"])).date() + timedelta(days=1)
        spec.update(anchor="fixed", start_at=f"{local.isoformat()}T00:00:00")
        spec.pop("anchor_tag", None)
    else:
        spec.update(anchor_tag=picked.all[0])
    try:
        template = template_actions.create(request, session, me, spec, clock.now())
    except TemplateError as exc:
        session.rollback()
        context = _picker(
            session, picked, [], saved.name, saved=saved, error=error_text(request, exc)
        )
        return render(request, "ui/segment_build.html", context, status_code=409)
    return redirect(request, f"/templates/{template.id}?done=created")
