"""The material library page (素材库): upload images and files, save link and
mini-program cards, and serve what was uploaded (``sop_templates.materials``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from api import auth, error_codes
from api.auth import Author, Reader
from api.deps import ClockDep, FormDep, SessionDep, SettingsDep
from api.views import locale_of, redirect, render
from sop_templates import materials

router = APIRouter(include_in_schema=False)
# signed addresses: no login (the signature is the credential), see app.py
public_router = APIRouter(include_in_schema=False)


def storage_of(settings: Any) -> materials.LocalStorage:
    return materials.LocalStorage(settings.materials_dir)


def _page(request: Request, session: Any, error: str | None = None, status: int = 200) -> Response:
    return render(
        request,
        "ui/materials.html",
        {
            "materials": materials.list_materials(session),
            "error": error,
            "done": request.query_params.get("done") == "1",
        },
        status_code=status,
    )


@router.get("/materials", response_class=HTMLResponse)
def material_list(request: Request, me: Reader, session: SessionDep) -> Response:
    return _page(request, session)


@router.post("/materials/upload", response_class=HTMLResponse)
def material_upload(
    request: Request,
    form: FormDep,
    me: Author,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> Response:
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        return _page(request, session, _message("upload_empty", {}, request), 422)
    data = upload.file.read(materials.MAX_FILE_BYTES + 1)
    try:
        materials.upload(
            session, storage_of(settings), upload.filename or "", data, clock.now(), who=me.username
        )
    except materials.MaterialError as exc:
        return _page(request, session, _message(exc.code, exc.params, request), 422)
    return redirect(request, "/materials?done=1")


@router.post("/materials/card", response_class=HTMLResponse)
def material_card(
    request: Request, form: FormDep, me: Author, session: SessionDep, clock: ClockDep
) -> Response:
    kind = str(form.get("kind") or "")
    fields = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    try:
        materials.save_card(session, kind, fields, clock.now(), who=me.username)
    except materials.MaterialError as exc:
        return _page(request, session, _message(exc.code, exc.params, request), 422)
    return redirect(request, "/materials?done=1")


@router.get("/materials/{material_id}/{name}")
def material_file(
    material_id: int, name: str, me: Reader, session: SessionDep, settings: SettingsDep
) -> Response:
    return _serve(session, settings, material_id, None)


@public_router.get("/materials/s/{token}/{name}")
def signed_material_file(
    token: str,
    name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> Response:
    """A material by its signed address (channels, the staff inbox): no login;
    an address that is not one is unknown (404), a changed or expired one is
    refused (403)."""
    try:
        material_id = materials.verify_address(auth.secret_key(request), token, name, clock.now())
    except materials.LinkRefused as exc:
        status = 404 if str(exc) == "malformed" else 403
        return Response(status_code=status, headers={"Cache-Control": "no-store"})
    return _serve(session, settings, material_id, name)


def _serve(session: Any, settings: Any, material_id: int, name: str | None) -> Response:
    material = session.get(materials.Material, material_id)
    if material is None or material.storage_key is None or name not in (None, material.name):
        return Response(status_code=404)
    try:
        data = storage_of(settings).load(material.storage_key)
    except (OSError, materials.MaterialError):
        return Response(status_code=404)
    headers = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}
    if material.kind != "image":
        headers["Content-Disposition"] = "attachment"
    return Response(data, media_type=material.content_type, headers=headers)


def _message(code: str, params: dict[str, Any], request: Request) -> str:
    field = params.pop("field", None)
    location = str(field) if field else ""
    return error_codes.render(code, params, locale_of(request), location)
