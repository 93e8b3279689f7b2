"""What an empty workspace should do next (the dashboard's first steps):
connect a channel, add contacts (or connect WeCom), create an SOP from the
library."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from api.i18n import N_
from audiences.models import Contact, GroupChat
from channels.models import ChannelInstance
from sop_templates.models import SopTemplate


def steps(session: Session) -> list[dict[str, Any]]:
    """The three first steps with whether each is done; empty once all are."""
    channels = session.execute(
        select(func.count())
        .select_from(ChannelInstance)
        .where(col(ChannelInstance.adapter) != "mock", col(ChannelInstance.enabled))
    ).scalar_one()
    audience = (
        session.execute(select(func.count()).select_from(Contact)).scalar_one()
        + session.execute(select(func.count()).select_from(GroupChat)).scalar_one()
    )
    templates = session.execute(select(func.count()).select_from(SopTemplate)).scalar_one()
    out = [
        {
            "key": "channel",
            "title": N_("Connect a channel"),
            "help": N_("WeCom or a webhook: where the messages go out."),
            "href": "/channels",
            "done": channels > 0,
        },
        {
            "key": "contacts",
            "title": N_("Add contacts"),
            "help": N_("Import a CSV, add them one by one, or let WeCom send new friends."),
            "href": "/contacts/import",
            "done": audience > 0,
        },
        {
            "key": "sop",
            "title": N_("Create an SOP from the library"),
            "help": N_("New friends, tagged customers or group chats: start from a ready one."),
            "href": "/templates/new",
            "done": templates > 0,
        },
    ]
    return [] if all(s["done"] for s in out) else out
