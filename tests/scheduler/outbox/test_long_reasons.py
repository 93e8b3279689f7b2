"""Reasons longer than ``deliveries.reason`` holds (an adapter's error page, an
exception with a long message): they are cut to fit, and the batch is recorded.
PostgreSQL rejects an over-long VARCHAR, so without the cut one such reason
failed the whole batch's write (its sent deliveries then ended ``unknown``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from factories import add_contact, deliveries, enroll, mock_sends, new_friend_spec, publish

from channels.base import OutboundMessage, SendResult
from scheduler.outbox.models import REASON_LENGTH, clip_reason

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
LONG = "上游返回了一整页错误信息 " * 400  # 5,200 characters


def _welcome_due(engine, n: int) -> None:
    spec = new_friend_spec(
        touchpoints=[{"name": "hi", "timing": "+0m", "content": "你好", "grace": "1h"}]
    )
    template_id = publish(engine, spec, T0)
    contacts = [add_contact(engine, f"wm_{i}", f"客户{i}", T0) for i in range(n)]
    enroll(engine, template_id, [(c, T0) for c in contacts], T0)


def test_clip_reason_keeps_short_reasons_and_marks_the_cut():
    assert clip_reason(None) is None
    assert clip_reason("HTTP 503") == "HTTP 503"
    clipped = clip_reason(LONG)
    assert clipped is not None and len(clipped) == REASON_LENGTH
    assert clipped.endswith("…") and LONG.startswith(clipped[:-1])


async def test_an_adapter_raising_a_long_message_still_gets_its_batch_recorded(
    engine, clock, runtime
):
    clock.set(T0)
    _welcome_due(engine, 3)
    mock = runtime.channels.get("mock")

    async def raises(messages: Sequence[OutboundMessage]) -> list[SendResult]:
        raise RuntimeError(LONG)

    mock.send = raises  # type: ignore[method-assign]
    await runtime.dispatch_tick()

    rows = deliveries(engine)
    assert {r.status for r in rows} == {"unknown"}
    for row in rows:
        assert row.reason.startswith("channel mock raised RuntimeError: 上游返回了")
        assert len(row.reason) == REASON_LENGTH and row.reason.endswith("…")


async def test_a_long_retryable_error_is_kept_cut_through_retry_and_give_up(engine, clock, runtime):
    clock.set(T0)
    _welcome_due(engine, 2)
    mock = runtime.channels.get("mock")

    async def overloaded(messages: Sequence[OutboundMessage]) -> list[SendResult]:
        return [SendResult.retryable(LONG) for _ in messages]

    mock.send = overloaded  # type: ignore[method-assign]
    await runtime.dispatch_tick()
    rows = deliveries(engine)
    assert {(r.status, r.attempts) for r in rows} == {("scheduled", 1)}
    assert all(r.reason.startswith("attempt 1 failed, retrying: 上游") for r in rows)
    assert all(len(r.reason) == REASON_LENGTH for r in rows)

    # The grace period (1 h) runs out before the retry: given up in SQL, with the
    # last error quoted, still cut to fit.
    clock.advance(hours=2)
    await runtime.dispatch_tick()
    rows = deliveries(engine)
    assert {r.status for r in rows} == {"failed"}
    for row in rows:
        assert row.reason.startswith(
            "gave up: retries ran past the grace period (last error: attempt 1 failed"
        )
        assert len(row.reason) == REASON_LENGTH
    assert mock_sends(engine) == []
