"""Tag sync against the fake WeCom: a tag a staff member sets in the WeCom
client starts the tagged-customer SOP; tags sopbot adds are written back."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from factories import deliveries, new_friend_spec
from sqlmodel import Session, select
from wecom_kit import CHANNEL, CONFIG, befriend, contact_callback, create_and_publish

from audiences import inbox, wecom_events
from audiences.models import Contact, InboxEvent, Tag, TagAssignment
from channels.registry import ensure_instance
from channels.wecom_fake import FakeWeCom
from scheduler.flows import changes, wecom_sync
from scheduler.outbox.models import Enrollment
from scheduler.runtime import SchedulerRuntime
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CLASS_TAG = "spring-class-2027"


@pytest.fixture
def fake(engine, clock) -> FakeWeCom:
    with session_scope(engine) as session:
        ensure_instance(session, CHANNEL, "wecom", CONFIG)
    clock.set(T0)
    fake = FakeWeCom(clock)
    fake.add_corp_tag("班级", CLASS_TAG)
    fake.add_corp_tag("阶段", "purchased")
    return fake


@pytest.fixture
async def wecom_runtime(engine, clock, settings, fake):
    http = httpx.AsyncClient(transport=fake.transport())
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


def class_spec() -> dict:
    return new_friend_spec(
        name="春季班",
        channel=CHANNEL,
        anchor="tag",
        anchor_tag=CLASS_TAG,
        segment={"tag": CLASS_TAG},
        touchpoints=[{"name": "d1", "timing": "+1h", "content": "今晚上课", "mode": "task"}],
    )


def tags_of(engine, external: str) -> set[str]:
    with Session(engine) as session:
        return set(
            session.exec(
                select(Tag.name)
                .join(TagAssignment, TagAssignment.tag_id == Tag.id)
                .join(Contact, Contact.id == TagAssignment.target_id)
                .where(Contact.external_id == external, TagAssignment.target_kind == "contact")
            )
        )


async def test_a_tag_set_in_the_wecom_client_starts_the_tagged_sop(
    engine, clock, fake, wecom_runtime
):
    create_and_publish(engine, class_spec(), T0)
    befriend(engine, fake, T0, "staff_li", "wm_1", name="王女士")
    wecom_runtime.apply_inbox_now()
    await wecom_sync.sync_edited(wecom_runtime)  # first run: nothing to do
    with Session(engine) as session:
        assert not session.exec(select(Enrollment)).all()

    clock.advance(minutes=5)
    fake.staff_sets_tag("staff_li", "wm_1", fake.add_corp_tag("班级", CLASS_TAG))
    contact_callback(engine, clock.now(), "edit_external_contact", "staff_li", "wm_1")
    wecom_runtime.apply_inbox_now()
    stats = await wecom_sync.sync_edited(wecom_runtime)

    assert (stats.customers, stats.tags_added) == (1, 1)
    assert fake.calls["externalcontact/get"] == 1
    assert tags_of(engine, "wm_1") == {CLASS_TAG}
    [row] = deliveries(engine)  # the SOP's first touchpoint, an hour after the tag
    assert row.status == "scheduled" and row.due_at == clock.now() + timedelta(hours=1)
    with Session(engine) as session:
        [enrollment] = session.exec(select(Enrollment)).all()
    assert enrollment.anchor_at == clock.now()

    # The staff member removes it again: the tag exit fires through the same path.
    clock.advance(minutes=5)
    fake.staff_sets_tag("staff_li", "wm_1", fake.add_corp_tag("班级", CLASS_TAG), add=False)
    contact_callback(engine, clock.now(), "edit_external_contact", "staff_li", "wm_1")
    wecom_runtime.apply_inbox_now()
    stats = await wecom_sync.sync_edited(wecom_runtime)
    assert stats.tags_removed == 1
    assert tags_of(engine, "wm_1") == set()


async def test_tags_sopbot_adds_are_written_back_with_mark_tag(engine, clock, fake, wecom_runtime):
    befriend(engine, fake, T0, "staff_li", "wm_1")
    wecom_runtime.apply_inbox_now()
    await wecom_sync.sync_edited(wecom_runtime)
    clock.advance(minutes=1)
    with session_scope(engine) as session:  # an exit action's add_tags
        contact_id = session.exec(select(Contact.id).where(Contact.external_id == "wm_1")).one()
        changes.add_tags(
            session, "contact", [contact_id], ["purchased", "sopbot-only"], clock.now()
        )
    clock.advance(seconds=10)
    stats = await wecom_sync.sync_edited(wecom_runtime)

    assert stats.written_back == 1  # "sopbot-only" is not a WeCom corp tag: left alone
    assert fake.contacts["wm_1"]["follow"]["staff_li"] == {fake.add_corp_tag("阶段", "purchased")}
    assert fake.calls["externalcontact/mark_tag"] == 1
    assert tags_of(engine, "wm_1") == {"purchased", "sopbot-only"}  # nothing removed


async def test_reconcile_checks_everyone_and_logs_progress(
    engine, clock, fake, wecom_runtime, caplog
):
    for i in range(3):
        befriend(engine, fake, T0, "staff_li", f"wm_{i}")
    wecom_runtime.apply_inbox_now()
    fake.staff_sets_tag("staff_li", "wm_2", fake.add_corp_tag("阶段", "purchased"))
    with caplog.at_level(logging.INFO, logger="sopbot.wecom_sync"):
        stats = await wecom_sync.reconcile(wecom_runtime)
    assert (stats.customers, stats.tags_added) == (3, 1)
    assert tags_of(engine, "wm_2") == {"purchased"}
    assert "WeCom reconcile wecom-a: 3/3 customers checked, 1 tags added" in caplog.text


def tag_group_callback(engine, now: datetime, change: str = "update") -> None:
    """A change_external_tag callback, stored as the callback route does."""
    fields = {
        "ToUserName": "ww_corp",
        "FromUserName": "sys",
        "CreateTime": str(int(now.timestamp())),
        "MsgType": "event",
        "Event": "change_external_tag",
        "ChangeType": change,
        "Id": "et_group1",
        "TagType": "tag_group",
    }
    with session_scope(engine) as session:
        inbox.enqueue(
            session,
            dedupe_key=wecom_events.dedupe_key(fields),
            source=wecom_events.SOURCE,
            kind=wecom_events.event_kind(fields),
            payload={"fields": fields},
            now=now,
        )


def groups_of(engine) -> dict[str, str | None]:
    with Session(engine) as session:
        return {tag.name: tag.group_name for tag in session.exec(select(Tag))}


async def test_a_tag_group_renamed_in_wecom_renames_it_in_sopbot(
    engine, clock, fake, wecom_runtime
):
    befriend(engine, fake, T0, "staff_li", "wm_1")
    wecom_runtime.apply_inbox_now()
    await wecom_sync.reconcile(wecom_runtime)
    assert groups_of(engine) == {CLASS_TAG: "班级", "purchased": "阶段"}

    fake.rename_corp_tag_group("班级", "2027 春季班级")
    fake.add_corp_tag("阶段", "vip")
    tag_group_callback(engine, T0 + timedelta(minutes=1))
    wecom_runtime.apply_inbox_now()
    stats = await wecom_sync.sync_edited(wecom_runtime)
    assert stats.catalogue_refreshed
    assert groups_of(engine) == {CLASS_TAG: "2027 春季班级", "purchased": "阶段", "vip": "阶段"}

    # nothing changed in WeCom: nothing is written again
    with Session(engine) as session:
        before = session.exec(select(InboxEvent)).all()
    assert (
        await wecom_sync.refresh_catalogue(
            engine, T0, CHANNEL, wecom_sync._adapter(wecom_runtime, CHANNEL)
        )
        == 0
    )
    with Session(engine) as session:
        assert len(session.exec(select(InboxEvent)).all()) == len(before)
