"""Material addresses in a message leaving sopbot: the library's local address
(``/materials/<id>/<name>``, served to signed-in users only) becomes its signed,
expiring public address (``sop_templates.materials.public_parts``), so a channel
(a webhook receiver, WeCom's media upload, the mock) and the staff inbox can
fetch the image or file without a login."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from scheduler.staff import links as staff_links
from sop_templates import materials
from sopbot.db import session_scope
from sopbot.settings import Settings


class MaterialSigner:
    """Signs the material addresses of rendered parts with the workspace secret
    key (read once, on the first message that needs it)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self._key: str | None = None

    def __call__(self, parts: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        if not materials.has_local_address(parts):
            return parts
        if self._key is None:
            with session_scope(self.engine) as session:
                self._key = staff_links.workspace_key(session, self.settings, now)
        expires_at = materials.link_expiry(now, self.settings.material_link_days)
        return materials.public_parts(parts, self._key, self.settings.public_base(), expires_at)
