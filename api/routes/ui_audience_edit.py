"""Operator UI: changing the audience without an engineer — add a contact or a
group, tag / untag / remove one, a selection or every row a filter matches,
staff accounts by display name, and the CSV import (check first, then import).

Every change to contacts, groups and tags goes through the audience write path
(``scheduler.flows.changes``), so SOPs enroll and exit as they do for events;
the page then says what the change triggered."""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlmodel import Session, col

from api import auth
from api.auth import Author
from api.deps import ClockDep, FormDep, SessionDep, SettingsDep
from api.i18n import N_
from api.import_progress import ImportProgress
from api.views import redirect, render, translator
from audiences import importer
from audiences import search as audiences_search
from audiences import service as audiences_service
from audiences.import_options import ImportOptions
from audiences.models import Account, Contact, GroupChat
from audiences.schemas import ContactIn, GroupIn
from scheduler.flows import changes
from sop_templates import service as templates_service
from sopbot.ids import parse_id

router = APIRouter(include_in_schema=False)

ACTIONS = ("tag", "untag", "remove")
ENCODINGS = ("auto", "utf-8", "gb18030")
FILTERS = ("q", "tag", "status", "account")
TEMPLATE_CSV = (
    "外部联系人ID,姓名,员工账号,添加时间,标签,城市\r\n"
    "wm_example_001,张三,客服小王,2027-03-01 21:30,春季班|VIP,上海\r\n"
)


def _kind(request: Request) -> tuple[str, str]:
    path_kind = request.url.path.strip("/").split("/")[0]
    return ("contact" if path_kind == "contacts" else "group"), path_kind


def _tags(raw: object) -> list[str]:
    return [t.strip() for t in re.split(r"[|,;，；、]", str(raw or "")) if t.strip()]


# -- one target, a selection, or everything a filter matches ------------------------------


@router.post("/contacts/bulk")
@router.post("/groups/bulk")
def bulk(
    request: Request, form: FormDep, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    """Tag, untag or remove the ticked rows, or every row the filter matches."""
    kind, path_kind = _kind(request)
    _ = translator(request)
    action = str(form.get("action") or "")
    filters = {k: str(form.get(k) or "").strip() for k in FILTERS}
    back = {k: v for k, v in filters.items() if v}
    if form.get("all_matching"):
        ids = audiences_search.matching_ids(
            session,
            kind,
            q=filters["q"] or None,
            tag=filters["tag"] or None,
            status=filters["status"] or None,
            account=filters["account"] or None,
        )
    else:
        ids = sorted({i for i in (parse_id(v) for v in form.getlist("ids")) if i is not None})
    tags = _tags(form.get("tags"))
    problem = None
    if action not in ACTIONS:
        problem = _("Choose what to do: tag, untag or remove.")
    elif not ids:
        problem = _("Tick at least one row, or choose all rows matching the filter.")
    elif action != "remove" and not tags:
        problem = _("Enter the tag(s) to add or remove.")
    if problem:
        return redirect(request, f"/{path_kind}?{urlencode({**back, 'error': problem})}")
    try:
        result = changes.act_on_targets(session, kind, ids, action, clock.now(), tags)
    except changes.EventsRejected as exc:
        session.rollback()
        message = _("Nothing was changed: %(why)s") % {"why": exc.detail()}
        return redirect(request, f"/{path_kind}?{urlencode({**back, 'error': message})}")
    auth.record(
        request,
        session,
        me,
        f"{kind}.{action}",
        object_kind=kind,
        summary=f"{result.targets} × {', '.join(tags)}" if tags else str(result.targets),
        detail={"ids": ids[:1000], "tags": tags, "enrolled": result.reaction.enrolled},
    )
    done = {
        "done": action,
        "n": result.targets,
        "tags": "、".join(tags),
        "sops": len(result.templates),
        "enrolled": result.reaction.enrolled,
        "exited": result.reaction.exited,
    }
    return redirect(request, f"/{path_kind}?{urlencode({**back, **done})}")


def done_message(_: Any, kind: str, params: dict[str, str]) -> str | None:
    """What the last action did, in the operator's words (the list page's flash)."""
    done = params.get("done")
    if not done:
        return None
    n = int(params.get("n") or 0)
    tags = params.get("tags", "")
    who = _("contacts") if kind == "contact" else _("group chats")
    if done == "tag":
        text = _("Tagged %(n)d %(who)s with %(tags)s.") % {"n": n, "who": who, "tags": tags}
    elif done == "untag":
        text = _("Removed %(tags)s from %(n)d %(who)s.") % {"n": n, "who": who, "tags": tags}
    elif done == "remove":
        text = _("Removed %(n)d %(who)s.") % {"n": n, "who": who}
    elif done == "created":
        text = _("Saved.")
    else:
        return None
    enrolled, exited = int(params.get("enrolled") or 0), int(params.get("exited") or 0)
    sops = int(params.get("sops") or 0)
    sep = "" if text.endswith("。") else " "  # Chinese sentences run on
    if enrolled:
        text += sep + _("%(sops)d SOP(s) enrolled %(n)d.") % {"sops": sops, "n": enrolled}
    if exited:
        text += sep + _("%(n)d left their SOPs.") % {"n": exited}
    if not enrolled and not exited:
        text += sep + _("No SOP reacted.")
    return text


@router.post("/contacts/new")
@router.post("/groups/new")
def create(
    request: Request, form: FormDep, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    """Add (or update) one contact or group chat from the list page's form."""
    kind, path_kind = _kind(request)
    _ = translator(request)
    raw = {
        "external_id": str(form.get("external_id") or "").strip(),
        "name": str(form.get("name") or "").strip(),
        "tags": _tags(form.get("tags")),
    }
    account = str(form.get("account") or "").strip() or None
    row: Any
    try:
        if kind == "contact":
            row, done = changes.upsert_contact(
                session, ContactIn(**raw, account=account), clock.now()
            )
        else:
            row, done = changes.upsert_group(session, GroupIn(**raw, owner=account), clock.now())
    except ValidationError as exc:
        session.rollback()
        fields = {"external_id": _("External id"), "name": _("Name"), "account": _("Account")}
        names = "、".join(
            sorted({fields.get(str(e["loc"][0]), str(e["loc"][0])) for e in exc.errors()})
        )
        message = _("Check these fields: %(fields)s") % {"fields": names}
        return redirect(request, f"/{path_kind}?{urlencode({'error': message})}")
    except changes.EventsRejected as exc:
        session.rollback()
        message = _("Nothing was changed: %(why)s") % {"why": exc.detail()}
        return redirect(request, f"/{path_kind}?{urlencode({'error': message})}")
    auth.record(
        request,
        session,
        me,
        f"{kind}.upsert",
        object_kind=kind,
        object_id=row.id,
        summary=row.external_id,
    )
    done_params = {
        "done": "created",
        "enrolled": done.reaction.enrolled,
        "exited": done.reaction.exited,
        "sops": 1 if done.reaction.enrolled else 0,
    }
    return redirect(request, f"/{path_kind}?{urlencode(done_params)}")


# -- staff accounts ----------------------------------------------------------------------


@router.get("/staff", response_class=HTMLResponse)
def accounts_page(
    request: Request, me: auth.Reader, session: SessionDep, done: str = ""
) -> Response:
    counts = dict(
        session.execute(
            select(col(Contact.account_id), func.count()).group_by(col(Contact.account_id))
        ).all()
    )
    groups = dict(
        session.execute(
            select(col(GroupChat.owner_account_id), func.count()).group_by(
                col(GroupChat.owner_account_id)
            )
        ).all()
    )
    _ = translator(request)
    return render(
        request,
        "ui/accounts.html",
        {
            "accounts": audiences_search.all_accounts(session),
            "contacts": counts,
            "groups": groups,
            "flash": _("Account saved.") if done == "saved" else None,
            "error": request.query_params.get("error"),
        },
    )


@router.post("/staff")
def save_account(request: Request, form: FormDep, me: Author, session: SessionDep) -> Response:
    """Register a staff account or rename it (the name the UI and the import use)."""
    _ = translator(request)
    external_id = str(form.get("external_id") or "").strip()
    name = str(form.get("name") or "").strip()
    if not external_id:
        return redirect(
            request, "/staff?" + urlencode({"error": _("An account needs an external id.")})
        )
    if len(external_id) > 128 or len(name) > 200:
        return redirect(
            request,
            "/staff?" + urlencode({"error": _("The external id or the name is too long.")}),
        )
    account = audiences_service.save_account(session, external_id, name)
    auth.record(
        request,
        session,
        me,
        "account.save",
        object_kind="account",
        object_id=account.id,
        summary=f"{account.external_id} {account.name}",
    )
    return redirect(request, "/staff?done=saved")


# -- CSV import --------------------------------------------------------------------------


@router.get("/contacts/import/template.csv")
def import_template(me: auth.Reader) -> Response:
    """A file Excel opens with the Chinese intact: UTF-8 with a BOM."""
    return Response(
        ("\ufeff" + TEMPLATE_CSV).encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="contacts-template.csv"'},
    )


@router.get("/contacts/import", response_class=HTMLResponse)
def import_page(request: Request, me: auth.Reader, session: SessionDep) -> Response:
    return _import_page(request, session)


def _import_page(request: Request, session: Session, **extra: Any) -> Response:
    return render(
        request,
        "ui/import.html",
        {
            "encodings": ENCODINGS,
            "accounts": audiences_search.all_accounts(session),
            "columns": importer.COLUMNS,
            "encoding": "auto",
            "progress_id": secrets.token_urlsafe(12),
            **extra,
        },
    )


@router.post("/contacts/import", response_class=HTMLResponse)
def import_upload(
    request: Request,
    form: FormDep,
    me: Author,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
) -> Response:
    """Check (``mode=check``: every error by line, nothing written) or import."""
    _ = translator(request)
    upload: Any = form.get("file")
    encoding = str(form.get("encoding") or "auto")
    mode = str(form.get("mode") or "check")
    if encoding not in ENCODINGS:
        encoding = "auto"
    if upload is None or isinstance(upload, str) or not upload.filename:
        return _import_page(
            request,
            session,
            encoding=encoding,
            error=_("Choose a CSV file first."),
        )
    data = upload.file.read(importer.MAX_BYTES + 1)
    options = ImportOptions(
        timezone=settings.default_timezone,
        encoding=encoding,
        dry_run=mode != "import",
        create_accounts=bool(form.get("create_accounts")),
    )
    # The import runs in the thread pool, off the event loop, so the page's
    # progress polls are answered while it writes (api.import_progress).
    tracker: ImportProgress = request.app.state.import_progress
    progress_id = str(form.get("progress_id") or "")[:64]
    written = 0

    def on_progress(done: int, total: int) -> None:
        nonlocal written
        written += done
        tracker.update(progress_id, written, total)

    track = bool(progress_id) and mode == "import"
    if track:
        tracker.start(progress_id)
    try:
        report = changes.import_file(
            session, data, clock.now(), options, progress=on_progress if track else None
        )
    finally:
        if track:
            tracker.finish(progress_id)
    if not report.applied:
        session.rollback()
    else:
        auth.record(
            request,
            session,
            me,
            "contacts.import",
            object_kind="contact",
            summary=f"{upload.filename}: {report.imported}",
            detail={"created": report.created, "updated": report.updated},
        )
    preview = importer.parse_csv(data, timezone=settings.default_timezone, encoding=encoding).rows[
        :10
    ]
    return _import_page(
        request,
        session,
        encoding=encoding,
        report=report,
        mode=mode,
        filename=upload.filename,
        detected=importer.detect_encoding(data) if encoding == "auto" else encoding,
        preview=preview,
        reasons=[(e.line, e.field, import_reason(_, e.reason)) for e in report.errors],
    )


@router.get("/contacts/import/progress")
def import_progress(request: Request, me: auth.Reader, id: str = "") -> JSONResponse:  # noqa: A002
    """``{"done", "total", "finished"}`` of the import with this progress id."""
    tracker: ImportProgress = request.app.state.import_progress
    return JSONResponse(tracker.get(id[:64]).as_dict())


# The importer's reasons (English, also the CLI's and the API's) in the operator's language.
_REASONS: tuple[tuple[str, str], ...] = (
    (r"^empty; required$", N_("empty; required")),
    (
        r"^'(?P<v>.*)' is not a date-time like .*$",
        N_("%(v)s is not a date-time like 2027-03-01 21:30"),
    ),
    (r"^'(?P<v>.*)' is not a valid date: .*$", N_("%(v)s is not a valid date")),
    (r"^'(?P<v>.*)' is not a number$", N_("%(v)s is not a number")),
    (r"^'(?P<v>.*)' is not a finite number$", N_("%(v)s is not a number")),
    (r"^'(?P<v>.*)' is not true/false$", N_("%(v)s is not yes/no")),
    (r"^longer than (?P<v>\d+) characters$", N_("longer than %(v)s characters")),
    (r"^unknown status '(?P<v>.*)'; .*$", N_("unknown status %(v)s")),
    (
        r"^'(?P<v>.*)' appears again \(first on line (?P<w>\d+)\)$",
        N_("%(v)s appears again (first on line %(w)s)"),
    ),
    (
        r"^unknown account '(?P<v>.*)'; .*$",
        N_("unknown staff account %(v)s: add it on the staff accounts page first"),
    ),
    (
        r"^account name '(?P<v>.*)' is shared .*$",
        N_("several staff accounts are named %(v)s: use the account's external id"),
    ),
    (
        r"^(?P<v>\d+) values but the header has (?P<w>\d+) columns$",
        N_("%(v)s values but the header has %(w)s columns"),
    ),
    (r"^unreadable CSV: .*$", N_("the CSV cannot be read from this line on")),
    (
        r"^not valid (?P<v>\S+) at byte (?P<w>\d+);.*$",
        N_("not valid %(v)s at byte %(w)s: choose the file's encoding (e.g. GB18030)"),
    ),
    (r"^the file is empty.*$", N_("the file is empty; the first row must be a header")),
    (r"^missing column; .*$", N_("the header has no 外部联系人ID (external_id) column")),
    (r"^the file is over (?P<v>\d+) MB$", N_("the file is over %(v)s MB")),
)


def import_reason(_: Any, reason: str) -> str:
    for pattern, message in _REASONS:
        match = re.match(pattern, reason)
        if match:
            return str(_(message) % match.groupdict())
    return reason


def templates_count(session: Session) -> int:
    return len(templates_service.list_templates(session))


__all__ = ["router", "done_message", "import_reason", "Account"]


# -- tags: rename and merge ---------------------------------------------------------------


@router.get("/tags", response_class=HTMLResponse)
def tags_page(request: Request, me: auth.Reader, session: SessionDep) -> Response:
    _ = translator(request)
    params = request.query_params
    flash = None
    if params.get("done") == "renamed":
        flash = _("“%(old)s” is now “%(new)s” on %(n)d contacts and groups.") % {
            "old": params.get("old", ""),
            "new": params.get("new", ""),
            "n": int(params.get("n") or 0),
        }
        enrolled, exited = int(params.get("enrolled") or 0), int(params.get("exited") or 0)
        sep = "" if flash.endswith("。") else " "
        if enrolled or exited:
            flash += sep + _("SOPs: %(e)d enrolled, %(x)d left.") % {"e": enrolled, "x": exited}
        else:
            flash += sep + _("No SOP reacted.")
    elif params.get("done") == "grouped":
        group = params.get("group", "")
        n = int(params.get("n") or 0)
        flash = (
            _("%(n)d tag(s) moved to the tag group “%(group)s”.") % {"n": n, "group": group}
            if group
            else _("%(n)d tag(s) taken out of their tag group.") % {"n": n}
        )
    elif params.get("done") == "group_renamed":
        flash = _("The tag group “%(old)s” is now “%(new)s” (%(n)d tags).") % {
            "old": params.get("old", ""),
            "new": params.get("new", ""),
            "n": int(params.get("n") or 0),
        }
    tags = audiences_search.tag_counts(session)  # named groups first, ungrouped last
    sections: dict[str, list[dict[str, Any]]] = {}
    for tag in tags:
        sections.setdefault(tag["group"], []).append(tag)
    return render(
        request,
        "ui/tags.html",
        {
            "tags": tags,
            "sections": list(sections.items()),
            "groups": audiences_search.group_names(session),
            "flash": flash,
            "error": params.get("error"),
        },
    )


@router.post("/tags/group")
def group_tags(
    request: Request, form: FormDep, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    """Move the ticked tags (and a new tag, if named) into a tag group — a new
    group is created this way — or out of any group (group left empty)."""
    _ = translator(request)
    group = str(form.get("group") or "").strip()
    tags = [str(t).strip() for t in form.getlist("tags") if str(t).strip()]
    new_tag = str(form.get("new_tag") or "").strip()
    if new_tag:
        tags.append(new_tag)
    if not tags:
        message = _("Tick at least one tag, or name a new tag, to put in the group.")
        return redirect(request, "/tags?" + urlencode({"error": message}))
    if len(group) > 100:
        message = _("A tag group name is at most 100 characters.")
        return redirect(request, "/tags?" + urlencode({"error": message}))
    try:
        changes.set_tag_group(session, tags, group or None, clock.now())
    except changes.EventsRejected as exc:
        session.rollback()
        message = _("Nothing was changed: %(why)s") % {"why": exc.detail()}
        return redirect(request, "/tags?" + urlencode({"error": message}))
    auth.record(
        request, session, me, "tag.group", object_kind="tag", summary=f"{', '.join(tags)} → {group}"
    )
    done = {"done": "grouped", "group": group, "n": len(set(tags))}
    return redirect(request, "/tags?" + urlencode(done))


@router.post("/tags/group/rename")
def rename_tag_group(
    request: Request, form: FormDep, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    """Rename a tag group (an existing name: the two groups are merged)."""
    _ = translator(request)
    old = str(form.get("old") or "").strip()
    new = str(form.get("new") or "").strip()
    if not old or not new or old == new or len(new) > 100:
        message = _("Choose a tag group and a different new name (at most 100 characters).")
        return redirect(request, "/tags?" + urlencode({"error": message}))
    try:
        moved, _done = changes.rename_tag_group(session, old, new, clock.now())
    except changes.EventsRejected:
        session.rollback()
        message = _("There is no tag group named “%(name)s”.") % {"name": old}
        return redirect(request, "/tags?" + urlencode({"error": message}))
    auth.record(
        request, session, me, "tag.group_rename", object_kind="tag", summary=f"{old} → {new}"
    )
    done = {"done": "group_renamed", "old": old, "new": new, "n": moved}
    return redirect(request, "/tags?" + urlencode(done))


@router.post("/tags/rename")
def rename_tag(
    request: Request, form: FormDep, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    """Rename a tag, or merge it into another: every contact and group carrying
    it gets the new tag and loses the old one, as events through the audience
    write path (SOPs on the new tag enroll them, SOPs on the old one see it go)."""
    _ = translator(request)
    old = str(form.get("old") or "").strip()
    new = str(form.get("new") or "").strip()
    if not old or not new or old == new:
        message = _("Choose a tag and a different new name.")
        return redirect(request, "/tags?" + urlencode({"error": message}))
    total = changes.BulkResult()
    try:
        for kind in ("contact", "group"):
            ids = audiences_search.matching_ids(session, kind, tag=old)
            if not ids:
                continue
            added = changes.act_on_targets(session, kind, ids, "tag", clock.now(), [new])
            removed = changes.act_on_targets(session, kind, ids, "untag", clock.now(), [old])
            total.targets += added.targets
            total.reaction.add(added.reaction)
            total.reaction.add(removed.reaction)
    except changes.EventsRejected as exc:
        session.rollback()
        message = _("Nothing was changed: %(why)s") % {"why": exc.detail()}
        return redirect(request, "/tags?" + urlencode({"error": message}))
    auth.record(
        request,
        session,
        me,
        "tag.rename",
        object_kind="tag",
        summary=f"{old} → {new}",
        detail={"targets": total.targets, "enrolled": total.reaction.enrolled},
    )
    done = {
        "done": "renamed",
        "old": old,
        "new": new,
        "n": total.targets,
        "enrolled": total.reaction.enrolled,
        "exited": total.reaction.exited,
    }
    return redirect(request, "/tags?" + urlencode(done))
