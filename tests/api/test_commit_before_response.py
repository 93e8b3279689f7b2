"""A write request commits before its response is sent: a client that got its
answer (or followed its redirect) always finds the data, read by anyone else;
a commit that fails is the request's 500, with nothing written.

A real uvicorn server answers here (the test client waits for the whole app to
finish, so it could not tell a response sent before the commit)."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from auth_helpers import PASSWORD, make_auth_headers, make_user
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select
from sqlmodel import Session

from api.app import create_app
from audiences.models import Contact
from sopbot.db import make_engine, reader


class LiveServer:
    """The app under uvicorn in a thread, on a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return f"http://127.0.0.1:{self.port}"
            threading.Event().wait(0.02)
        raise RuntimeError("the test server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live(engine, clock, settings) -> Iterator[str]:
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with LiveServer(app) as url:
        yield url


@pytest.fixture
def other_connection(settings):
    """A second engine: what another process would read."""
    other = make_engine(settings)
    yield other
    other.dispose()


@pytest.fixture
def slow_commits() -> Iterator[None]:
    """Every commit takes 0.3 s more (a busy disk): a response sent before its
    commit is then always seen before the data."""

    def slow(_session: Session) -> None:
        threading.Event().wait(0.3)

    event.listen(Session, "before_commit", slow)
    yield
    event.remove(Session, "before_commit", slow)


def _contacts(engine: Any) -> int:
    with reader(engine).connect() as conn:
        return conn.execute(select(func.count()).select_from(Contact)).scalar_one()


def _login(http: httpx.Client, username: str) -> httpx.Response:
    page = http.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return http.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )


def test_a_created_contact_is_readable_when_the_answer_arrives(
    live, engine, clock, other_connection, slow_commits
):
    headers = make_auth_headers(engine, clock.now())
    with httpx.Client(base_url=live, headers=headers, timeout=30) as http:
        for i in range(3):
            created = http.post("/api/contacts", json={"external_id": f"wm_{i}", "name": "张三"})
            assert created.status_code == 201, created.text
            assert _contacts(other_connection) == i + 1


def test_a_page_view_right_after_logging_in_is_never_sent_back_to_login(
    live, engine, clock, slow_commits
):
    make_user(engine, clock.now(), "wang", ["operator"])
    with httpx.Client(base_url=live, timeout=30) as http:
        done = _login(http, "wang")
        assert done.status_code == 303 and done.headers["location"] == "/"
        page = http.get("/", follow_redirects=False)
        assert page.status_code == 200, page.headers.get("location")


def test_forty_logins_each_followed_at_once_by_a_page_view(live, engine, clock):
    make_user(engine, clock.now(), "wang", ["operator"])
    bounced = 0
    for _ in range(40):
        with httpx.Client(base_url=live, timeout=30) as http:
            assert _login(http, "wang").status_code == 303
            bounced += http.get("/", follow_redirects=False).status_code != 200
    assert bounced == 0


def test_a_commit_that_fails_is_a_500_and_nothing_is_written(engine, clock, settings):
    headers = make_auth_headers(engine, clock.now())

    def note(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO CONTACT"):
            conn.info["wrote_contact"] = True

    def refuse(conn: Any) -> None:
        if conn.info.pop("wrote_contact", False):
            raise RuntimeError("disk full")

    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    event.listen(engine, "before_cursor_execute", note)
    event.listen(engine, "commit", refuse)
    try:
        with TestClient(app, headers=headers, raise_server_exceptions=False) as client:
            answer = client.post("/api/contacts", json={"external_id": "wm_1", "name": "张三"})
    finally:
        event.remove(engine, "commit", refuse)
        event.remove(engine, "before_cursor_execute", note)
    assert answer.status_code == 500
    assert _contacts(engine) == 0


def test_the_audit_entry_of_a_change_is_there_when_the_answer_arrives(
    live, engine, clock, other_connection, slow_commits
):
    from api.users.models import AuditEntry

    headers = make_auth_headers(engine, clock.now())
    with httpx.Client(base_url=live, headers=headers, timeout=30) as http:
        answer = http.post("/api/events/inbox/apply")
        assert answer.status_code == 200, answer.text
    with reader(other_connection).connect() as conn:
        actions = conn.execute(select(AuditEntry.action)).scalars().all()  # type: ignore[call-overload]
    assert "api.post" in actions
