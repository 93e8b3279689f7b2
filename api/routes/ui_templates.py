"""Operator UI: SOP templates — the list, the editor (timeline, preview, test
send) and the lifecycle buttons. Thin: every decision is a service call
(``sop_templates``, ``scheduler.flows.authoring``, ``scheduler.flows.versions``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session, col, select

from api import auth, draft_diff, editor_errors, editor_forms, editor_modes, template_actions
from api.auth import Author, Reader
from api.deps import (
    ClockDep,
    FormDep,
    ReaderDep,
    SessionDep,
    SettingsDep,
)
from api.i18n import N_
from api.users import audit
from api.users import service as users_service
from api.views import error_text, is_htmx, locale_of, redirect, render, translator, zone_of
from audiences import service as audiences_service
from audiences.models import Contact, GroupChat
from channels import service as channels_service
from scheduler.analytics import stats
from scheduler.analytics.stats.snapshot import CountsSnapshot, NextSendsSnapshot
from scheduler.flows import authoring, fan_out, impact
from scheduler.outbox import policies
from scheduler.outbox import service as scheduler_service
from sop_templates import approvals, library, wording
from sop_templates import service as templates_service
from sop_templates.models import SopTemplate, TemplateVersion
from sop_templates.service import TemplateError, TemplateValidationError
from sop_templates.timing import as_instant, get_zone

router = APIRouter(include_in_schema=False)

# The text a touchpoint added in the editor starts with (contact SOP, group SOP).
NEW_STEP_TEXT = {False: N_("Hello {{ contact.name }}!"), True: N_("Hello everyone!")}
# The built-in scenarios in the operator's language (their specs stay as written).
LIBRARY_WORDS = {
    "new_friend": (
        N_("New friends SOP"),
        N_(
            "Welcome and questionnaire at once, mini-program and coupon 3 hours later, a reminder on day 2 at 20:00"
        ),
    ),
    "tagged_class": (
        N_("Tagged customers SOP"),
        N_(
            "Class reminder on day 1 at 20:00, preview on day 2 at 19:30, follow-up on day 3 at 09:00, from the tag time"
        ),
    ),
    "store_groups": (
        N_("Group chats SOP"),
        N_("Menu every day at 11:00 and a tip every day at 18:00 to every store group"),
    ),
}
INSERT_VARS = {
    "contact": (
        ("{{ contact.name }}", N_("Customer nickname")),
        ("{{ account.name }}", N_("Staff name")),
        ("{{ template.name }}", N_("SOP name")),
    ),
    "group": (
        ("{{ group.name }}", N_("Group name")),
        ("{{ group.member_count }}", N_("Member count")),
        ("{{ account.name }}", N_("Staff name")),
    ),
}

DONE_MESSAGES = {
    "created": N_("Template created."),
    "saved": N_("Draft saved."),
    "submitted": N_("Submitted for approval."),
    "approved": N_("Approved: it can be published now."),
    "rejected": N_("Sent back to the authors."),
    "published": N_("Published."),
    "paused": N_("Paused: deliveries are held until you resume."),
    "resumed": N_("Resumed: held deliveries go out now (once each)."),
    "archived": N_("Archived: pending deliveries were cancelled."),
    "test_sent": N_("Test message sent."),
    "exclusive": N_("Exclusivity saved in the draft: it holds once this version is published."),
}


# -- list --------------------------------------------------------------------------


def template_counts(request: Request) -> CountsSnapshot:
    """This process's snapshot of the list's delivery counts."""
    state = request.app.state
    if getattr(state, "template_counts", None) is None:
        state.template_counts = CountsSnapshot(state.engine)
    return state.template_counts  # type: ignore[no-any-return]


def template_next_sends(request: Request) -> NextSendsSnapshot:
    """This process's snapshot of each live template's next send."""
    state = request.app.state
    if getattr(state, "template_next_sends", None) is None:
        state.template_next_sends = NextSendsSnapshot(state.engine)
    return state.template_next_sends  # type: ignore[no-any-return]


@router.get("/templates", response_class=HTMLResponse)
def template_list(request: Request, me: Reader, session: ReaderDep, clock: ClockDep) -> Response:
    counts = template_counts(request).counts(clock.now())
    templates = templates_service.list_templates(session)
    ids = [t.id for t in templates if t.id is not None]
    reviews = approvals.open_reviews(session, ids)
    version_ids = [t.current_version_id for t in templates if t.current_version_id]
    versions: dict[int, int] = dict(
        session.execute(
            select(TemplateVersion.id, TemplateVersion.version).where(  # type: ignore[call-overload]
                col(TemplateVersion.id).in_(version_ids)
            )
        ).all()
        if version_ids
        else []
    )
    rows: list[dict[str, Any]] = []
    for template in templates:
        review = reviews.get(template.id)  # type: ignore[arg-type]
        rows.append(
            {
                "template": template,
                "counts": counts.get(template.id) or stats.Counts(),  # type: ignore[arg-type]
                "review": review.state if review else None,
                "version": versions.get(template.current_version_id)
                if template.current_version_id
                else None,
            }
        )
    from api.routes.calendar_pages import next_send_lines

    now = clock.now()
    sends = template_next_sends(request).get(now)
    upcoming = next_send_lines(session, now, zone_of(request), locale_of(request), sends)
    for row in rows:
        row["next_send"] = upcoming.get(row["template"].id)  # type: ignore[union-attr]
    return render(request, "ui/templates.html", {"rows": rows})


# -- editor ---------------------------------------------------------------------------


@router.post("/templates/live", response_class=HTMLResponse)
def live_panels_new(
    request: Request,
    data: FormDep,
    me: Author,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> Response:
    return _live(request, session, settings, clock.now(), data)


@router.get("/templates/new", response_class=HTMLResponse)
def new_template(
    request: Request, me: Author, session: SessionDep, settings: SettingsDep, start: str = ""
) -> Response:
    """Pick a starting point (blank or a library scenario), then edit before saving."""
    if not start:
        scenarios = [
            {
                **item,
                "title": LIBRARY_WORDS.get(item["key"], ("", ""))[0],
                "summary": LIBRARY_WORDS.get(item["key"], ("", ""))[1],
            }
            for item in library.catalog()
        ]
        return render(request, "ui/template_new.html", {"library": scenarios})
    if start in library.names():
        form = editor_forms.form_from_spec(library.load(start))
    else:
        target = "group" if start == "blank-group" else "contact"
        form = editor_forms.blank_form(target, settings.default_timezone)
    return _editor(request, session, settings, None, form)


@router.post("/templates/new", response_class=HTMLResponse)
def new_template_post(
    request: Request,
    data: FormDep,
    me: Author,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> Response:
    return _editor_post(request, me, session, settings, clock, None, data)


@router.get("/templates/{template_id}", response_class=HTMLResponse)
def edit_template(
    template_id: int,
    request: Request,
    me: Reader,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    sample_at: str = "",
    target: str = "",
    done: str = "",
    error: str = "",
) -> Response:
    template = templates_service.get_template(session, template_id)
    form = editor_forms.form_from_spec(template.draft)
    _ = translator(request)
    flash = _(DONE_MESSAGES[done]) if done in DONE_MESSAGES else None
    return _editor(
        request,
        session,
        settings,
        template,
        form,
        clock=clock,
        sample_at=sample_at,
        preview_target=target,
        flash=flash,
        flash_error=error[:500] or None,
    )


@router.post("/templates/{template_id}", response_class=HTMLResponse)
def edit_template_post(
    template_id: int,
    request: Request,
    data: FormDep,
    me: Author,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> Response:
    templates_service.get_template(session, template_id)
    return _editor_post(request, me, session, settings, clock, template_id, data)


def _editor_post(
    request: Request,
    me: auth.Principal,
    session: Session,
    settings: Any,
    clock: Any,
    template_id: int | None,
    data: Any,
) -> Response:
    """Save (validate, then create or update the draft) or change the form's shape."""
    form = editor_forms.form_from_request(data)
    action = str(data.get("action") or "save")
    template = templates_service.get_template(session, template_id) if template_id else None
    _ = translator(request)
    if action != "save" and action != "check":
        focus = None
        if action == "add_touchpoint":
            extra = {
                "_step_name": _("Step %d"),
                "_step_text": _(NEW_STEP_TEXT[form["target"] == "group"]),
            }
            editor_forms.apply_action(form, action, extra)
            focus = f"tp-{len(form['touchpoints']) - 1}-name"
        else:
            editor_forms.apply_action(form, action, data)
            if action.startswith("add_part:"):
                focus = f"{action.split(':')[1]}-new-part"
                focus = f"tp-{focus}"
        return _editor(
            request,
            session,
            settings,
            template,
            form,
            clock=clock,
            with_panels=False,
            focus_id=focus,
        )
    spec = editor_forms.spec_from_form(form)
    try:
        parsed = templates_service.check_spec(session, spec)
    except TemplateValidationError as exc:
        errors = editor_errors.map_problems(exc.problems, form, locale_of(request))
        return _editor(
            request, session, settings, template, form, errors=errors, clock=clock, status=422
        )
    if action == "check":
        return _editor(
            request,
            session,
            settings,
            template,
            form,
            clock=clock,
            check_passed=_("Check passed: no problems found."),
        )
    try:
        if template_id is None:
            saved = template_actions.create(request, session, me, parsed, clock.now())
            done = "created"
        else:
            saved = template_actions.update(request, session, me, template_id, parsed, clock.now())
            done = "saved"
    except TemplateError as exc:
        errors = editor_errors.map_problems(
            [("name" if "named" in str(exc) else "template", str(exc))], form, locale_of(request)
        )
        return _editor(
            request, session, settings, template, form, errors=errors, clock=clock, status=409
        )
    return redirect(request, f"/templates/{saved.id}?done={done}")


def _choices(session: Session, target_kind: str) -> list[tuple[str, str]]:
    """Recent contacts (or groups) to preview and test-send with."""
    model: Any = Contact if target_kind == "contact" else GroupChat
    rows = session.exec(select(model).order_by(col(model.id).desc()).limit(50)).all()
    return [(r.external_id, f"{r.name or r.external_id} ({r.external_id})") for r in rows]


def _sample_instant(value: str, zone_name: str, now: datetime) -> datetime:
    if value:
        try:
            return as_instant(datetime.fromisoformat(value), get_zone(zone_name))
        except ValueError:
            pass
    return now.replace(second=0, microsecond=0)


def _panels(
    request: Request,
    session: Session,
    settings: Any,
    template: SopTemplate,
    now: datetime,
    sample_at: str,
    preview_target: str,
) -> dict[str, Any]:
    """Timeline and preview of the saved draft (what would be published)."""
    try:
        spec = templates_service.parse_spec(template.draft)
    except TemplateValidationError:
        return {}
    sample = _sample_instant(sample_at, spec.timezone, now)
    line = authoring.timeline(
        spec, sample, defaults=policies.WorkspaceDefaults.from_settings(settings)
    )
    preview_error = None
    try:
        preview = authoring.preview(session, spec, preview_target or None)
    except (audiences_service.NotFound, authoring.AuthoringError) as exc:
        preview = authoring.preview(session, spec, None)
        preview_error = error_text(request, exc)
    targets = _choices(session, spec.target)
    me = getattr(request.state, "principal", None)
    own = users_service.get_user(session, me.user_id).test_contact if me else None
    if own and spec.target == "contact":
        _ = translator(request)
        targets = [(own, _("My test contact (%(id)s)", id=own)), *targets]
    return {
        "spec": spec,
        "timeline": line,
        "template_zone": get_zone(spec.timezone),
        "sample_value": sample.astimezone(get_zone(spec.timezone)).strftime("%Y-%m-%dT%H:%M"),
        "preview": preview,
        "preview_error": preview_error,
        "preview_target": preview_target,
        "targets": targets,
    }


def _editor(
    request: Request,
    session: Session,
    settings: Any,
    template: SopTemplate | None,
    form: dict[str, Any],
    *,
    errors: editor_errors.FieldErrors | None = None,
    clock: Any = None,
    sample_at: str = "",
    preview_target: str = "",
    flash: str | None = None,
    flash_error: str | None = None,
    status: int = 200,
    with_panels: bool = True,
    focus_id: str | None = None,
    check_passed: str | None = None,
) -> HTMLResponse:
    _ = translator(request)
    context: dict[str, Any] = {
        "focus_id": focus_id,
        "check_passed": check_passed,
        "anchor_words": _anchor_words(request),
        "insert_vars": [(expr, _(label)) for expr, label in INSERT_VARS[form["target"]]],
        "live_url": f"/templates/{template.id}/live" if template else "/templates/live",
        "library_materials": _library_materials(session),
        "template": template,
        "form": form,
        "errors": errors or editor_errors.FieldErrors(),
        "channels": channels_service.instance_names(session),
        "part_kinds": editor_forms.PART_KINDS,
        "timing_kinds": editor_forms.TIMING_KINDS,
        "modes": editor_forms.MODES,
        "wecom_channels": channels_service.instance_names(
            session, adapters=editor_modes.WECOM_ADAPTERS
        ),
        "all_modes": editor_modes.MODES + editor_modes.WECOM_MODES,
        "wecom_modes": editor_modes.WECOM_MODES,
        "modes_offered": editor_modes.offered,
        "cap_presets": editor_forms.CAP_PRESETS,
        "flash": flash,
        "flash_error": flash_error,
        "require_approval": users_service.requires_approval(session, settings.require_approval),
        "action_url": f"/templates/{template.id}" if template else "/templates/new",
    }
    if template is not None:
        now = clock.now() if clock else request.app.state.clock.now()
        context.update(
            {
                "review": approvals.review_state(session, template),
                "versions": templates_service.list_versions(session, template.id),  # type: ignore[arg-type]
                "counts": scheduler_service.delivery_counts(session, template.id),
                "planned_later": fan_out.waiting(session, template.id),  # type: ignore[arg-type]
                "plan_ahead_minutes": fan_out.AHEAD_MINUTES,
                "history": audit.entries(
                    session, object_kind="template", object_id=template.id, limit=20
                ),
                "test_sends": authoring.test_sends(session, template.id, limit=10),  # type: ignore[arg-type]
                "unpublished": _unpublished(session, template),
                "impact": impact.publish_impact(session, template, now),
                "overlaps": impact.overlaps(session, template, now),
                "exclusives": impact.exclusive_partners(session, template),
                "draft_diff": draft_diff.draft_diff(session, template)
                if _unpublished(session, template)
                else None,
            }
        )
        if with_panels:
            context.update(
                _panels(request, session, settings, template, now, sample_at, preview_target)
            )
    name = "ui/template_editor.html"
    if is_htmx(request) and request.method == "POST":
        name = "ui/_editor_form.html"  # the form only; the page around it stays
    return render(request, name, context, status_code=status)


def _library_materials(session: Session) -> dict[str, list[Any]]:
    """The material library by kind, for the editor's pickers."""
    from sop_templates import materials

    out: dict[str, list[Any]] = {kind: [] for kind in materials.KINDS}
    for material in materials.list_materials(session)[:200]:
        out[material.kind].append(material)
    return out


def _anchor_words(request: Request) -> dict[str, str]:
    """``"join contact"`` → 加好友后 ...: the offset picker's label follows the
    anchor and target chosen in the form (ui.js)."""
    locale = locale_of(request)
    return {
        f"{anchor} {target}": wording.anchor_after(anchor, target, locale)
        for anchor in ("join", "tag", "fixed")
        for target in ("contact", "group")
    }


# -- live panels: timeline and preview of the unsaved form ---------------------------------


@router.post("/templates/{template_id}/live", response_class=HTMLResponse)
def live_panels(
    template_id: int,
    request: Request,
    data: FormDep,
    me: Author,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> Response:
    templates_service.get_template(session, template_id)
    return _live(request, session, settings, clock.now(), data)


def _live(request: Request, session: Session, settings: Any, now: datetime, data: Any) -> Response:
    """The timeline and preview of what is in the form now (not saved): content is
    checked against the sample only, so this stays quick while typing."""
    form = editor_forms.form_from_request(data)
    try:
        spec = templates_service.parse_spec(editor_forms.spec_from_form(form))
    except TemplateValidationError as exc:
        errors = editor_errors.map_problems(exc.problems, form, locale_of(request))
        return render(request, "ui/_live.html", {"live_errors": errors})
    sample = now.replace(second=0, microsecond=0)
    line = authoring.timeline(
        spec, sample, defaults=policies.WorkspaceDefaults.from_settings(settings)
    )
    return render(
        request,
        "ui/_live.html",
        {
            "spec": spec,
            "timeline": line,
            "template_zone": get_zone(spec.timezone),
            "preview": authoring.preview(session, spec, None),
            "live_errors": None,
        },
    )


def _unpublished(session: Session, template: SopTemplate) -> bool:
    if template.current_version_id is None:
        return True
    live = templates_service.get_version(session, template.current_version_id)
    return approvals.draft_digest(live.spec) != approvals.draft_digest(template.draft)


# -- panels (htmx fragments; without JS the editor page takes the same parameters) --------


@router.get("/templates/{template_id}/timeline", response_class=HTMLResponse)
def timeline_panel(
    template_id: int,
    request: Request,
    me: Reader,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    sample_at: str = "",
) -> Response:
    template = templates_service.get_template(session, template_id)
    context = _panels(request, session, settings, template, clock.now(), sample_at, "")
    return render(request, "ui/_timeline.html", {"template": template, **context})


@router.get("/templates/{template_id}/preview", response_class=HTMLResponse)
def preview_panel(
    template_id: int,
    request: Request,
    me: Reader,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    target: str = "",
) -> Response:
    template = templates_service.get_template(session, template_id)
    context = _panels(request, session, settings, template, clock.now(), "", target)
    return render(request, "ui/_preview.html", {"template": template, **context})


from api.routes import ui_materials, ui_template_lifecycle  # noqa: E402

router.include_router(ui_materials.router)
router.include_router(ui_template_lifecycle.router)
