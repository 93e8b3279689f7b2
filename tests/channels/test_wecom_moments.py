"""mode: moment against the fake WeCom: one moment for the batch, visible to
the owning staff members' customers and the chosen tags; each member's
publish status is polled into the delivery log."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from factories import add_contact, deliveries, enroll, new_friend_spec, publish
from wecom_kit import CHANNEL, CONFIG

from channels.base import AdapterContext, OutboundMessage, ResultStatus
from channels.registry import ensure_instance
from channels.wecom import WeComAdapter, WeComConfig
from channels.wecom_fake import FakeWeCom
from scheduler.runtime import SchedulerRuntime
from sopbot.db import session_scope

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def fake(engine, clock) -> FakeWeCom:
    with session_scope(engine) as session:
        ensure_instance(session, CHANNEL, "wecom", CONFIG)
    clock.set(T0)
    fake = FakeWeCom(clock)
    fake.add_corp_tag("阶段", "vip")
    return fake


@pytest.fixture
async def wecom_runtime(engine, clock, settings, fake):
    http = httpx.AsyncClient(transport=fake.transport())
    yield SchedulerRuntime(engine, clock, settings, http=http)
    await http.aclose()


async def test_a_moment_reports_each_members_publish_status(
    engine, clock, settings, fake, wecom_runtime
):
    spec = new_friend_spec(
        name="新品朋友圈",
        channel=CHANNEL,
        touchpoints=[
            {
                "name": "moment",
                "timing": "+0m",
                "content": ["春季新品上市", {"image": "wecom-media:MEDIA_1"}],
                "mode": "moment",
                "visible_to": {"tags": ["vip"]},
            }
        ],
    )
    template_id = publish(engine, spec, T0)
    owners = {"wm_1": "staff_li", "wm_2": "staff_li", "wm_3": "staff_zhao"}
    ids = {}
    for external, staff in owners.items():
        fake.add_contact(staff, external)
        ids[external] = add_contact(engine, external, external, T0, account=staff)
    enroll(engine, template_id, [(i, T0) for i in ids.values()], T0)

    await wecom_runtime.dispatch_tick()
    assert fake.calls["externalcontact/add_moment_task"] == 1
    [moment] = fake.moments.values()
    assert moment.members == ["staff_li", "staff_zhao"]
    assert moment.tags == [fake.add_corp_tag("阶段", "vip")]
    assert moment.content["attachments"] == [{"msgtype": "image", "image": {"media_id": "MEDIA_1"}}]
    assert {r.status for r in deliveries(engine)} == {"sent"}
    [jobid] = fake.moment_jobs
    assert {r.provider_message_id for r in deliveries(engine)} == {f"moment:{jobid}"}

    fake.publish_moment(moment.moment_id, "staff_li")
    clock.advance(seconds=settings.task_poll_seconds)
    stats = await wecom_runtime.poll_tasks_tick()
    assert (stats.polled, stats.confirmed) == (2, 2)
    rows = {r.target_id: r for r in deliveries(engine)}
    for external in ("wm_1", "wm_2"):
        assert rows[ids[external]].reason == (
            f"confirmed by staff staff_li: moment {moment.moment_id} published by staff staff_li"
        )
    assert "awaiting staff confirmation" in rows[ids["wm_3"]].reason  # zhao has not published


async def test_moment_content_rules(clock, fake):
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        context = AdapterContext(http=http, engine=None, clock=clock)  # type: ignore[arg-type]
        adapter = WeComAdapter(WeComConfig.model_validate(CONFIG), context)

        def message(*parts: dict) -> OutboundMessage:
            return OutboundMessage(
                1, "d1", "contact", "wm_1", "staff_li", list(parts), mode="moment"
            )

        image = {"kind": "image", "url": "https://example.com/a.png"}
        link = {"kind": "link", "title": "活动", "url": "https://example.com"}
        media = {"kind": "image", "url": "wecom-media:M"}
        results = await adapter.send([message(image), message(media, link), message(*[media] * 10)])
    assert [r.status for r in results] == [ResultStatus.PERMANENT] * 3
    assert "upload the image to WeCom" in results[0].error
    assert "up to 9 images, or one video, or one link" in results[1].error
    assert "add_moment_task" not in str(fake.calls)


async def test_a_video_moment_goes_out_as_one_video_attachment(
    engine, clock, settings, fake, wecom_runtime
):
    spec = new_friend_spec(
        name="新品视频",
        channel=CHANNEL,
        touchpoints=[
            {
                "name": "video",
                "timing": "+0m",
                "content": ["新品开箱视频", {"video": "wecom-media:VIDEO_1"}],
                "mode": "moment",
            }
        ],
    )
    template_id = publish(engine, spec, T0)
    fake.add_contact("staff_li", "wm_1")
    contact = add_contact(engine, "wm_1", "王女士", T0, account="staff_li")
    enroll(engine, template_id, [(contact, T0)], T0)

    await wecom_runtime.dispatch_tick()

    [moment] = fake.moments.values()
    assert moment.content["text"] == {"content": "新品开箱视频"}
    assert moment.content["attachments"] == [{"msgtype": "video", "video": {"media_id": "VIDEO_1"}}]
    fake.publish_moment(moment.moment_id, "staff_li")
    clock.advance(seconds=settings.task_poll_seconds)
    await wecom_runtime.poll_tasks_tick()
    [row] = deliveries(engine)
    assert row.status == "sent" and "published by staff staff_li" in row.reason


async def test_the_fake_refuses_a_video_with_anything_else(clock, fake):
    from channels.wecom import WeComAPIError

    video = {"msgtype": "video", "video": {"media_id": "V"}}
    image = {"msgtype": "image", "image": {"media_id": "I"}}
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        context = AdapterContext(http=http, engine=None, clock=clock)  # type: ignore[arg-type]
        adapter = WeComAdapter(WeComConfig.model_validate(CONFIG), context)
        for attachments in ([video, image], [video, video]):
            with pytest.raises(WeComAPIError, match="up to 9 images, or 1 video, or 1 link"):
                await adapter._call("externalcontact/add_moment_task", {"attachments": attachments})
        accepted = await adapter._call(
            "externalcontact/add_moment_task", {"text": {"content": "看"}, "attachments": [video]}
        )
    assert accepted["jobid"]


@pytest.mark.parametrize(
    ("content", "code", "zh"),
    [
        (
            ["看视频", {"video": "wecom-media:V"}, {"image": "wecom-media:I"}],
            "moment_mixed",
            "朋友圈只能是：文字加最多 9 张图片，或 1 个视频，或 1 个链接，不能混用",
        ),
        (
            [{"video": "wecom-media:V1"}, {"video": "wecom-media:V2"}],
            "moment_mixed",
            "朋友圈只能是",
        ),
        (
            [{"video": "wecom-media:V"}, {"link": {"title": "活动", "url": "https://e.com"}}],
            "moment_mixed",
            "不能混用",
        ),
        ([{"image": "wecom-media:I"}] * 10, "moment_images", "朋友圈最多 9 张图片，现在有 10 张"),
        (
            [{"miniprogram": {"appid": "wx0123456789abcdef", "page": "a.html", "title": "t"}}],
            "moment_kinds",
            "朋友圈只能包含文字、图片、视频或链接",
        ),
    ],
)
def test_mixed_moments_are_refused_in_chinese(content, code, zh):
    from api import error_codes
    from sop_templates.service import TemplateValidationError, parse_spec

    spec = new_friend_spec(
        channel=CHANNEL,
        touchpoints=[{"name": "m", "timing": "+0m", "content": content, "mode": "moment"}],
    )
    with pytest.raises(TemplateValidationError) as caught:
        parse_spec(spec)
    [(location, message)] = caught.value.problems
    assert location == "touchpoints[0].content"
    found, params = error_codes.classify(location, message)
    assert found == code
    rendered = error_codes.render(found, params, "zh_CN", location)
    assert zh in rendered


def test_a_video_must_be_uploaded_wecom_media(engine):
    from sop_templates.part_rules import part_problems
    from sop_templates.service import parse_spec

    spec = parse_spec(
        new_friend_spec(
            channel=CHANNEL,
            touchpoints=[
                {
                    "name": "m",
                    "timing": "+0m",
                    "content": [{"video": "https://example.com/v.mp4"}],
                    "mode": "moment",
                }
            ],
        )
    )
    [(location, message)] = part_problems(spec, "wecom")
    from api import error_codes

    code, params = error_codes.classify(location, message)
    assert code == "video_media"
    assert error_codes.render(code, params, "zh_CN", location).startswith(
        "视频「https://example.com/v.mp4」不是已上传到企业微信的素材"
    )
