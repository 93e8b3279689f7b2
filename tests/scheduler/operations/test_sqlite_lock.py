"""One scheduler per SQLite file (the two-process proof is in
tests/scheduler/scaleout/test_sqlite_one_scheduler.py)."""

from __future__ import annotations

import pytest

from scheduler.operations.sqlite_lock import SchedulerAlreadyRunning, hold_scheduler_lock, lock_path


def test_a_second_hold_on_one_file_is_refused_naming_postgresql(tmp_path):
    url = f"sqlite:///{tmp_path / 'sopbot.db'}"
    first = hold_scheduler_lock(url)
    assert first is not None
    try:
        with pytest.raises(SchedulerAlreadyRunning) as refused:
            hold_scheduler_lock(url)
        assert "PostgreSQL" in str(refused.value) and "sopbot.db" in str(refused.value)
    finally:
        first.close()
    again = hold_scheduler_lock(url)  # released with its holder
    assert again is not None
    again.close()


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://postgres@127.0.0.1/x", "sqlite://", "sqlite:///:memory:"]
)
def test_postgresql_and_in_memory_sqlite_take_no_lock(url):
    assert lock_path(url) is None
    assert hold_scheduler_lock(url) is None
