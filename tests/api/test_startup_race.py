"""Processes starting together on a new database agree on one secret key (it
signs every session cookie): none fails on the key's unique row."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from api.users import service as users_service
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, tzinfo=UTC)


def test_processes_starting_together_store_one_secret_key(engine):
    keys: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def boot() -> None:
        try:
            start.wait()
            with session_scope(engine) as session:
                keys.append(users_service.secret_key(session, None, T0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=boot) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(keys) == 4 and len(set(keys)) == 1
    with session_scope(engine) as session:  # and it stays the key
        assert users_service.secret_key(session, None, T0) == keys[0]
