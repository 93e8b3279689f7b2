"""The foreign keys of a publish's set-based rows, checked once for the set on
PostgreSQL instead of by a trigger per row.

PostgreSQL enforces a foreign key with a trigger per inserted row: a lookup
of the referenced row and a ``FOR KEY SHARE`` lock on it. Publishing a
fixed-start template over 1,000,000 contacts writes 900,000 enrollments (two
keys each) and 2,700,000 deliveries (two keys each): at 100,000 contacts those
7.2 million trigger calls were 2.5 s of the 6 s the publish took.

For the rows ``set_enroll`` writes, every referenced row is known before the
statements run, and almost all of them are this transaction's own:

* ``enrollments.version_id`` and the deliveries' ``touchpoint_id`` point at
  the version and touchpoints ``freeze_draft`` wrote in this same transaction
  -- checked below (the version row's ``xmin`` is this transaction), else the
  per-row triggers stay on. Rows no other transaction can see, so none can
  delete them before this one commits, and none can add an enrollment to that
  version (its own key check would not find the version).
* ``deliveries.enrollment_id`` comes from a join with ``enrollments`` on that
  version: only enrollments this transaction wrote, by the point above.
* ``enrollments.template_id`` is the template's row, committed long ago: it is
  locked ``FOR KEY SHARE`` here once, the lock the trigger would take on it
  for every row, so deleting it or changing its key waits for this commit and
  then finds the new enrollments.

The touchpoints are locked too, though the point above already covers them.
The triggers on the referenced tables (what stops a delete of an enrollment a
delivery refers to) are untouched: they fire in the deleting transaction.

Switching the per-row triggers off for a statement is ``SET LOCAL
session_replication_role = replica``, which PostgreSQL lets a superuser do, or
(PostgreSQL 15 and later) a role granted ``SET ON PARAMETER
session_replication_role``. Without that right, or on SQLite (whose key
checks are cheap rowid lookups), the rows are written with the per-row checks,
as before: the same rows, only slower.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

# The version row's xmin (a 32-bit transaction id) is this transaction's own id
# when this transaction wrote it outside any savepoint.
_WRITTEN_HERE = text(
    "SELECT xmin::text::bigint = txid_current() % 4294967296"
    " FROM template_versions WHERE id = :version_id"
)


@contextmanager
def checked_once(
    session: Session, template_id: int, version_id: int, touchpoint_ids: Sequence[int]
) -> Iterator[bool]:
    """Run the block with PostgreSQL's per-row foreign-key triggers off, the
    referenced rows checked and locked once (the module docstring says why
    that keeps every key valid); yields whether it did. On SQLite, or when the
    version was not written by this transaction, or the role may not switch
    triggers, the block runs with the per-row checks (yields False)."""
    if session.get_bind().dialect.name != "postgresql" or not version_written_here(
        session, version_id
    ):
        yield False
        return
    _lock(session, "sop_templates", [template_id])
    _lock(session, "touchpoints", touchpoint_ids)
    previous = session.execute(
        text("SELECT current_setting('session_replication_role')")
    ).scalar_one()
    try:
        with session.begin_nested():  # a refusal must not abort the publish
            session.execute(text("SET LOCAL session_replication_role = replica"))
    except DBAPIError:
        yield False
        return
    yield True
    # Not in a ``finally``: if the block failed the transaction is rolled back,
    # and the setting with it.
    session.execute(
        text("SELECT set_config('session_replication_role', :value, true)"), {"value": previous}
    )


def version_written_here(session: Session, version_id: int) -> bool:
    """PostgreSQL: whether this transaction wrote the version's row (outside
    any savepoint), so no other transaction can see it yet."""
    return bool(session.execute(_WRITTEN_HERE, {"version_id": version_id}).scalar())


def _lock(session: Session, table: str, ids: Sequence[int]) -> None:
    """``FOR KEY SHARE`` on the rows, as a foreign-key check locks the row it finds."""
    if ids:
        session.execute(
            text(f"SELECT 1 FROM {table} WHERE id = ANY(:ids) FOR KEY SHARE"),  # noqa: S608 -- fixed names
            {"ids": list(ids)},
        )
