"""UI language: Simplified Chinese by default, English on request (gettext).

Source strings are English; ``api/locale/zh_CN/LC_MESSAGES/messages.po`` holds
the Chinese, compiled to ``messages.mo`` (committed, so the UI works straight
from a checkout; ``pybabel compile -d api/locale`` rebuilds it, and a test
checks the two agree). If the ``.mo`` is missing, the ``.po`` is compiled in
memory with Babel when it is installed.

Extract and update (see README "Translations")::

    pybabel extract -F api/babel.cfg -k N_ --no-location --sort-output -o api/locale/messages.pot .
    pybabel update -i api/locale/messages.pot -d api/locale -w 100 -N
    pybabel compile -d api/locale
"""

from __future__ import annotations

import gettext
import io
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from jinja2 import Environment, FileSystemLoader, select_autoescape

LOCALES = ("zh_CN", "en")
LANG_COOKIE = "sopbot_lang"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


def N_(message: str) -> str:
    """Mark a string for extraction; translated where it is shown."""
    return message


@lru_cache(maxsize=8)
def translations(locale: str) -> gettext.NullTranslations:
    if locale == "en":
        return gettext.NullTranslations()
    folder = LOCALE_DIR / locale / "LC_MESSAGES"
    mo = folder / "messages.mo"
    if mo.exists():
        with mo.open("rb") as handle:
            return gettext.GNUTranslations(handle)
    po = folder / "messages.po"
    if po.exists():
        try:
            from babel.messages.mofile import write_mo
            from babel.messages.pofile import read_po
        except ImportError:  # pragma: no cover - Babel is a test/dev dependency
            return gettext.NullTranslations()
        with po.open("rb") as handle:
            catalog = read_po(handle, locale=locale)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        return gettext.GNUTranslations(buffer)
    return gettext.NullTranslations()


def negotiate(request: Request, default: str) -> str:
    """``?lang=`` (this request), the language cookie, else the workspace default."""
    for value in (request.query_params.get("lang"), request.cookies.get(LANG_COOKIE)):
        if value in LOCALES:
            return value
    return default if default in LOCALES else "zh_CN"


WEEKDAYS = (N_("Mon"), N_("Tue"), N_("Wed"), N_("Thu"), N_("Fri"), N_("Sat"), N_("Sun"))


@lru_cache(maxsize=8)
def environment(locale: str) -> Environment:
    """One Jinja environment per language (autoescaping every .html template)."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=select_autoescape(["html", "xml"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    tr = translations(locale)
    env.install_gettext_translations(tr, newstyle=True)  # type: ignore[attr-defined]
    env.globals["locale"] = locale

    def local(value: datetime | None, zone: ZoneInfo, fmt: str = "%Y-%m-%d %H:%M") -> str:
        if value is None:
            return ""
        return value.astimezone(zone).strftime(fmt)

    def weekday_time(value: datetime | None, zone: ZoneInfo, with_date: bool = True) -> str:
        """``Tue 03-02 21:30`` / ``周二 03-02 21:30`` in the zone."""
        if value is None:
            return ""
        here = value.astimezone(zone)
        day = tr.gettext(WEEKDAYS[here.weekday()])
        return f"{day} {here:%m-%d %H:%M}" if with_date else f"{day} {here:%H:%M}"

    env.filters["local"] = local
    env.filters["weekday_time"] = weekday_time
    # the audit log in words (api.users.audit_words)
    from api.users import audit_words

    env.filters["audit_action"] = lambda action: audit_words.action_text(action, locale)
    env.filters["audit_object"] = lambda kind: audit_words.object_text(kind, locale)
    env.filters["audit_summary"] = lambda e: audit_words.summary_text(e.action, e.summary, locale)
    return env


def warm() -> None:
    """Compile every page template in every language now (about 0.5 s each),
    so the first operator to open each page does not wait for it; server
    processes run this in a thread at start-up (``api.app.warm_up_in_background``)."""
    for locale in LOCALES:
        env = environment(locale)
        for name in env.list_templates(extensions=["html"]):
            env.get_template(name)


def gettext_for(locale: str) -> Any:
    return translations(locale).gettext
