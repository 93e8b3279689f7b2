"""Ids as a person or a URL spells them: ASCII digits, nothing else.

``str.isdigit()`` and ``int()`` accept far more: ``²`` and ``①`` are digits to
``isdigit()`` but not to ``int()`` (a 500 where a 4xx was due), ``٣`` and ``１``
are 3 and 1 to ``int()`` (a silent match on another id). Every id read from a
path, a query string or a form goes through here."""

from __future__ import annotations

import re
import unicodedata

# At most 18 digits: every such number fits a 64-bit integer column.
_ID = re.compile(r"[0-9]{1,18}")


def parse_id(text: object) -> int | None:
    """The id ``text`` spells in ASCII digits, else None (an ``int`` is itself)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if isinstance(text, str) and _ID.fullmatch(text):
        return int(text)
    return None


def is_id(text: object) -> bool:
    """Whether ``text`` is an id in ASCII digits (see ``parse_id``)."""
    return parse_id(text) is not None


def plain_identifier(value: str | None) -> str | None:
    """``value`` if it holds no control character (NUL, newline, tab, DEL, …) and
    no lone surrogate: an external id or a name to look things up by is printed,
    logged, exported and compared, and must read the same everywhere."""
    for char in value or "":
        category = unicodedata.category(char)
        if category in ("Cc", "Cs"):
            raise ValueError(
                f"must not contain control characters (found U+{ord(char):04X}); "
                "use letters, digits and punctuation"
            )
    return value
