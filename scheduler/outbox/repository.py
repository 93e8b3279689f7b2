"""Set-based SQL for the outbox: the deliveries and enrollments tables, and the
bulk helpers (``insert_ignore``, ``chunked``, ``among``, ...), which are
``sopbot.sql``'s, importable from here too. Status changes, the claim included,
are ``scheduler.outbox.transitions``."""

from __future__ import annotations

from sqlalchemy import Table

from scheduler.outbox.models import Delivery, Enrollment
from sopbot.sql import CHUNK as CHUNK
from sopbot.sql import among as among
from sopbot.sql import chunked as chunked
from sopbot.sql import execute_many as execute_many
from sopbot.sql import insert_ignore as insert_ignore
from sopbot.sql import insert_rows as insert_rows
from sopbot.sql import instant_param as instant_param
from sopbot.sql import memoized as memoized
from sopbot.sql import sqlite_instant as sqlite_instant

DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
ENROLLMENTS: Table = Enrollment.__table__  # type: ignore[attr-defined]
