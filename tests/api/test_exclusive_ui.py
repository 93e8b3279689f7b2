"""The one-click exclusivity where the editor flags an overlap: "此 SOP 中的客户
不再进入 …" stores it on the draft, the editor shows it, the publish impact
counts it, and once published a new friend gets one welcome."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from auth_helpers import ui_login as login
from factories import new_friend_spec, publish
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from audiences.models import Account
from scheduler.outbox.models import Enrollment
from sop_templates import service as templates_service
from sopbot.db import session_scope

START = datetime(2027, 3, 1, 1, 0, tzinfo=UTC)


@pytest.fixture
def client(engine, clock, settings):
    clock.set(START)
    with session_scope(engine) as session:
        session.add(Account(external_id="staff_1", name="客服小王"))
    with TestClient(create_app(settings, engine=engine, clock=clock, run_scheduler=False)) as c:
        yield c


def test_one_click_exclusivity_on_an_overlap(client, engine, clock):
    csrf = login(client, engine, clock)
    segment = {"kind": "new_friends"}
    live = publish(engine, new_friend_spec(name="欢迎老版", segment=segment), START)
    with session_scope(engine) as session:
        draft = templates_service.create_template(
            session, new_friend_spec(name="欢迎新版", segment=segment), START
        )
        draft_id = draft.id

    page = client.get(f"/templates/{draft_id}")
    assert 'id="overlap-warning"' in page.text
    assert "此 SOP 中的客户不再进入“欢迎老版”" in page.text

    done = client.post(
        f"/templates/{draft_id}/exclusive", data={"csrf_token": csrf, "other": str(live)}
    )
    assert done.status_code == 200, done.text
    assert "互斥已保存到草稿" in done.text
    assert 'id="overlap-warning"' not in done.text  # no longer a clash
    assert f'data-exclusive-with="{live}"' in done.text
    with session_scope(engine) as session:
        assert templates_service.get_template(session, draft_id).draft["exclusive_with"] == [live]

    # saving the editor form keeps it (carried by the form)
    editor = client.get(f"/templates/{draft_id}").text
    assert f'name="exclusive_with" value="{live}"' in editor

    assert (
        client.post(f"/templates/{draft_id}/publish", data={"csrf_token": csrf}).status_code == 200
    )
    clock.set(datetime(2027, 3, 1, 2, 0, tzinfo=UTC))
    added = client.post(
        "/contacts/new",
        data={"csrf_token": csrf, "external_id": "wm_new", "name": "新朋友", "account": "staff_1"},
    )
    assert added.status_code in (200, 303), added.text
    with session_scope(engine) as session:
        rows = sorted(session.execute(select(Enrollment.template_id, Enrollment.status)).all())
    assert rows in ([], [(live, "active"), (draft_id, "skipped")]), rows

    # an unknown SOP is refused with a message, nothing changes
    refused = client.post(
        f"/templates/{draft_id}/exclusive", data={"csrf_token": csrf, "other": "999"}
    )
    assert refused.status_code == 409
