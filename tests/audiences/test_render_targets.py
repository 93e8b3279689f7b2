"""What dispatch reads of its targets (``render_targets``) is what was stored:
attributes with Chinese keys and nested values, an empty set, the join time as
an aware UTC instant -- on SQLite (read as text and decoded here) and
PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from factories import add_contact
from sqlmodel import Session

from audiences.service import render_targets

JOINED = datetime(2027, 3, 1, 21, 30, 15, 123456, tzinfo=timezone(timedelta(hours=8)))


def test_targets_read_back_as_stored(engine) -> None:
    rich = add_contact(
        engine, "wm_1", "张三", JOINED, attributes={"城市": "上海", "等级": 3, "标签": ["a", "b"]}
    )
    bare = add_contact(engine, "wm_2", "李四", JOINED)
    with Session(engine) as session:
        found = render_targets(session, "contact", [rich, bare, 999])
    assert set(found) == {rich, bare}
    assert found[rich]["attributes"] == {"城市": "上海", "等级": 3, "标签": ["a", "b"]}
    assert found[bare]["attributes"] == {}
    assert found[rich]["joined_at"] == JOINED and found[rich]["joined_at"].tzinfo == UTC
    assert found[rich]["name"] == "张三" and found[rich]["status"] == "active"
