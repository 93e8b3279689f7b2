"""The material library (素材库): images and files uploaded once and reused
across SOPs, and link and mini-program cards saved for reuse.

Uploads are checked (type by content, not by name; size) and stored behind a
small storage interface: :class:`LocalStorage` keeps them under the data
directory (``SOPBOT_MATERIALS_DIR``); an S3-compatible store only has to offer
the same three methods. A message part refers to a material by its address
``/materials/<id>/<name>``, which the preview shows as the real image; that
address is served to signed-in users only. What leaves sopbot (a message for a
channel, the staff inbox) carries a signed, expiring address instead
(:func:`public_parts`): ``<public base>/materials/s/<id>.<expiry>.<signature>/<name>``,
an HMAC-SHA256 of the id, expiry and name with the workspace secret key. It names
no person; rotating the secret key revokes every address given out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote

from sqlalchemy import Column
from sqlmodel import Field, Session, SQLModel, col, select

from sopbot.db import JSONType, UTCDateTime

# Within WeCom's limits (images 10 MB, files 20 MB) and under the API's request
# size limit (SOPBOT_MAX_BODY_BYTES, 10 MB by default).
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_FILE_BYTES = 9 * 1024 * 1024
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
FILE_TYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "txt": "text/plain; charset=utf-8",
    "zip": "application/zip",
}
KINDS = ("image", "file", "link", "miniprogram")
PREFIX = "/materials/"


class Material(SQLModel, table=True):
    __tablename__ = "materials"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16, index=True)
    name: str = Field(max_length=200)
    content_type: str | None = Field(default=None, max_length=120)
    size: int = 0
    storage_key: str | None = Field(default=None, max_length=300)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_by: str | None = Field(default=None, max_length=100)

    @property
    def url(self) -> str:
        """The address message parts use."""
        return f"{PREFIX}{self.id}/{self.name}"


class MaterialError(ValueError):
    """An upload or card that cannot be kept: ``code`` and ``params`` for the message
    (``api.error_codes``)."""

    def __init__(self, code: str, **params: Any) -> None:
        self.code, self.params = code, params
        super().__init__(f"{code}: {params}")


class Storage(Protocol):
    def save(self, key: str, data: bytes) -> None: ...
    def load(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...


class LocalStorage:
    """Files under ``root`` (the data directory), one per material."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{32}\.[a-z0-9]+", key):
            raise MaterialError("not_found")
        return self.root / key[:2] / key

    def save(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)

    def load(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def sniff(data: bytes) -> str | None:
    """The type of an upload by its first bytes (``png``, ``jpg``, ``pdf``, ...)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"%PDF-"):
        return "pdf"
    return None


def _clean_name(name: str) -> str:
    base = Path(name or "").name.strip()
    base = re.sub(r"[\\/\x00-\x1f?#%]", "_", base)[:120]
    return base or "file"


def upload(
    session: Session,
    storage: Storage,
    name: str,
    data: bytes,
    now: datetime,
    *,
    who: str | None = None,
) -> Material:
    """Keep an uploaded image or file (type checked by content, size by kind)."""
    clean = _clean_name(name)
    extension = clean.rsplit(".", 1)[-1].lower() if "." in clean else ""
    if extension == "jpeg":
        extension = "jpg"
    sniffed = sniff(data)
    if not data:
        raise MaterialError("upload_empty")
    if sniffed in IMAGE_TYPES:
        kind, extension, limit = "image", sniffed, MAX_IMAGE_BYTES
        content_type = IMAGE_TYPES[sniffed]
    elif extension in FILE_TYPES and (extension != "pdf" or sniffed == "pdf"):
        if extension in ("docx", "xlsx", "pptx", "zip") and not data.startswith(b"PK\x03\x04"):
            raise MaterialError("upload_type", name=clean)
        kind, limit, content_type = "file", MAX_FILE_BYTES, FILE_TYPES[extension]
    else:
        raise MaterialError("upload_type", name=clean)
    if len(data) > limit:
        raise MaterialError("upload_too_large", name=clean, max=f"{limit // (1024 * 1024)} MB")
    if kind == "image" and not clean.lower().endswith(f".{extension}"):
        clean = f"{clean.rsplit('.', 1)[0]}.{extension}"
    key = f"{uuid.uuid4().hex}.{extension}"
    storage.save(key, data)
    material = Material(
        kind=kind,
        name=clean,
        content_type=content_type,
        size=len(data),
        storage_key=key,
        created_at=now,
        created_by=who,
    )
    session.add(material)
    session.flush()
    return material


CARD_FIELDS = {
    "link": ("title", "url", "description", "image_url"),
    "miniprogram": ("title", "appid", "page", "pic_url"),
}


def save_card(
    session: Session, kind: str, fields: dict[str, str], now: datetime, *, who: str | None = None
) -> Material:
    """Keep a link or mini-program card for reuse (addresses checked as on send)."""
    from sop_templates.part_rules import APPID, PAGE, is_https_url

    if kind not in CARD_FIELDS:
        raise MaterialError("invalid")
    data = {k: str(fields.get(k) or "").strip() for k in CARD_FIELDS[kind]}
    if not data["title"]:
        raise MaterialError("required", field="title")
    for key in ("url", "image_url", "pic_url"):
        if data.get(key) and not is_https_url(data[key]):
            raise MaterialError("url_invalid", value=data[key])
    if kind == "link" and not data["url"]:
        raise MaterialError("url_invalid", value="")
    if kind == "miniprogram":
        if not APPID.match(data["appid"]):
            raise MaterialError("appid_invalid", value=data["appid"])
        if not PAGE.match(data["page"]):
            raise MaterialError("page_invalid", value=data["page"])
    material = Material(
        kind=kind, name=data["title"][:200], data=data, created_at=now, created_by=who
    )
    session.add(material)
    session.flush()
    return material


def list_materials(session: Session, kind: str | None = None) -> list[Material]:
    query = select(Material).order_by(col(Material.id).desc())
    if kind:
        query = query.where(Material.kind == kind)
    return list(session.exec(query).all())


# -- signed addresses (channels, the staff inbox) ----------------------------------------

SIGNED_PREFIX = "/materials/s/"
# part kind → fields that may hold a material's address
ADDRESS_FIELDS = {
    "image": ("url",),
    "file": ("url",),
    "link": ("image_url",),
    "miniprogram": ("pic_url",),
}
_LOCAL = re.compile(r"^/materials/(\d+)/([^/?#]+)$")


class LinkRefused(ValueError):
    """A signed address that is malformed, changed or expired."""


def _signature(key: str, material_id: int, expires: int, name: str) -> str:
    payload = f"material:{material_id}.{expires}.{name}".encode()
    digest = hmac.new(key.encode("utf-8"), payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def link_expiry(now: datetime, days: float) -> datetime:
    """``days`` after the end of ``now``'s UTC day: the same address all day long
    (receivers and caches see one address per material per day)."""
    day_end = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return day_end + timedelta(days=days)


def signed_address(
    key: str, base_url: str, material_id: int, name: str, expires_at: datetime
) -> str:
    """The public address of a material until ``expires_at``."""
    expires = int(expires_at.timestamp())
    token = f"{int(material_id)}.{expires}.{_signature(key, material_id, expires, name)}"
    return f"{base_url.rstrip('/')}{SIGNED_PREFIX}{token}/{quote(name, safe='')}"


def verify_address(key: str, token: str, name: str, now: datetime) -> int:
    """The material id a signed address opens, or :class:`LinkRefused`."""
    pieces = (token or "").split(".")
    if len(pieces) != 3 or not pieces[0].isdigit() or not pieces[1].isdigit():
        raise LinkRefused("malformed")
    material_id, expires = int(pieces[0]), int(pieces[1])
    if not hmac.compare_digest(_signature(key, material_id, expires, name), pieces[2]):
        raise LinkRefused("changed")
    if now.timestamp() >= expires:
        raise LinkRefused("expired")
    return material_id


def has_local_address(parts: list[dict[str, Any]]) -> bool:
    """Whether any part refers to the material library by its local address."""
    return any(
        str(part.get(name) or "").startswith(PREFIX)
        for part in parts
        for name in ADDRESS_FIELDS.get(str(part.get("kind")), ())
    )


def public_parts(
    parts: list[dict[str, Any]], key: str, base_url: str, expires_at: datetime
) -> list[dict[str, Any]]:
    """``parts`` with every local material address (``/materials/<id>/<name>``)
    replaced by its signed public address; other addresses are left as they are."""
    out = []
    for part in parts:
        fields = ADDRESS_FIELDS.get(str(part.get("kind")), ())
        changed = dict(part)
        for name in fields:
            match = _LOCAL.match(str(part.get(name) or ""))
            if match:
                changed[name] = signed_address(
                    key, base_url, int(match.group(1)), unquote(match.group(2)), expires_at
                )
        out.append(changed)
    return out
