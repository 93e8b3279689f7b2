"""Workspace settings saved in one process hold in every other, without a
restart: two apps (two engines, one database) and a separate scheduler runtime
(what ``sopbot worker`` runs). The one saving applies them at once; the others
at their next version check (``sopbot.workspace``), whose interval is driven
here by a fake monotonic clock instead of waited out."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from auth_helpers import ui_login as login
from factories import add_contact, enroll, new_friend_spec, publish
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from scheduler.outbox.models import Delivery
from scheduler.runtime import SchedulerRuntime
from sopbot.db import make_engine, session_scope

# 23:30 in Shanghai: inside 22:00-08:00 quiet hours
NIGHT = datetime(2027, 3, 2, 15, 30, tzinfo=UTC)


class Ticks:
    """A monotonic clock the test moves (from the real reading, which the
    watch took at start-up)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


FORM = {
    "default_timezone": "Asia/Tokyo",
    "quiet_start": "22:00",
    "quiet_end": "08:00",
    "quiet_hours_policy": "skip",
    "frequency_cap": "wecom_daily",
    "frequency_cap_policy": "defer",
}


@pytest.fixture
def other_engine(settings, engine):
    """A second engine on the same database: another process's connections."""
    other = make_engine(settings)
    yield other
    other.dispose()


async def test_a_save_in_one_process_is_applied_by_the_others(
    engine, other_engine, clock, settings
):
    clock.set(NIGHT)
    template_id = publish(engine, new_friend_spec(), NIGHT)
    worker_ticks = Ticks()
    # What `sopbot worker` runs: its own runtime on its own engine.
    worker = SchedulerRuntime(other_engine, clock, settings)
    worker.workspace._monotonic = worker_ticks
    await worker.workspace_tick()
    assert worker.dispatcher.workspace.quiet is None

    app_a = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    app_b = create_app(settings, engine=other_engine, clock=clock, run_scheduler=False)
    with TestClient(app_a) as a, TestClient(app_b) as b:
        b_ticks = Ticks()
        b.app.state.workspace._monotonic = b_ticks
        csrf_a = login(a, engine, clock, "root", roles=("admin",))
        login(b, engine, clock, "admin2", roles=("admin",))
        assert 'value="Asia/Shanghai" selected' in b.get("/settings").text

        saved = a.post("/settings", data={**FORM, "csrf_token": csrf_a})
        assert saved.status_code == 200 and "已保存" in saved.text
        assert a.app.state.settings.quiet_hours == "22:00-08:00"  # at once where saved

        # B checks again only after its interval: before it, the old page ...
        assert 'value="Asia/Shanghai" selected' in b.get("/settings").text
        b_ticks.now += settings.workspace_refresh_seconds
        # ... then the saved values, in its pages and its scheduler, no restart.
        page = b.get("/settings")
        assert 'value="Asia/Tokyo" selected' in page.text
        assert 'value="22:00"' in page.text
        assert b.app.state.runtime.settings.frequency_cap == "wecom_daily"
        assert b.app.state.runtime.dispatcher.workspace.quiet is not None

    # The worker's job checks the version and its dispatcher applies the quiet
    # hours: a welcome due at 23:30 is skipped for the quiet hours.
    worker_ticks.now += settings.workspace_refresh_seconds
    await worker.workspace_tick()
    assert worker.settings.quiet_hours == "22:00-08:00"
    contact_id = add_contact(engine, "wx_night", "夜猫子", NIGHT)
    enroll(engine, template_id, [(contact_id, NIGHT)], NIGHT)
    await worker.dispatch_tick()
    with session_scope(engine) as session:
        rows = session.execute(
            select(Delivery.status, Delivery.reason).where(
                Delivery.template_id == template_id, Delivery.due_at <= NIGHT
            )
        ).all()
    assert len(rows) == 1
    status, reason = rows[0]
    assert status == "skipped" and "quiet" in (reason or ""), rows
    await worker.http.aclose()


def test_an_unchanged_version_costs_one_read_and_changes_nothing(engine, settings):
    from sopbot.workspace import WorkspaceWatch

    ticks = Ticks()
    seen = []
    watch = WorkspaceWatch(engine, settings, monotonic=ticks)
    watch.listen(seen.append)
    watch.load()
    assert len(seen) == 1
    ticks.now += settings.workspace_refresh_seconds
    assert watch.refresh() is None
    assert len(seen) == 1  # nothing saved: listeners not called
