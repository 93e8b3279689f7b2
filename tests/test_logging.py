"""SOPBOT_LOG_FORMAT=json: one JSON object per line, with delivery ids on the
dispatch lines so a complaint about one message can be traced."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from datetime import UTC, datetime

import pytest
from factories import add_contact, deliveries, enroll, new_friend_spec, publish

from channels.registry import ensure_instance
from sopbot.db import session_scope
from sopbot.logging import CHATTY_LOGGERS, JsonFormatter, configure_logging, uvicorn_log_config
from sopbot.settings import Settings

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def json_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({"worker_id": "w-1"}))
    logger = logging.getLogger("sopbot.dispatch")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def test_dispatch_lines_carry_delivery_ids(engine, clock, runtime, json_lines):
    clock.set(T0)
    with session_scope(engine) as session:
        ensure_instance(session, "broken", "mock", {"fail_mode": "permanent"})
    ok = publish(engine, new_friend_spec(), T0)
    broken = publish(engine, new_friend_spec(name="坏渠道 SOP", channel="broken"), T0)
    a = add_contact(engine, "wm_a", "A", T0)
    b = add_contact(engine, "wm_b", "B", T0)
    enroll(engine, ok, [(a, T0)], T0)
    enroll(engine, broken, [(b, T0)], T0)

    await runtime.dispatch_tick()

    sent = {d.id for d in deliveries(engine, status="sent")}
    failed = {d.id for d in deliveries(engine, status="failed")}
    assert len(sent) == len(failed) == 1
    lines = json_lines()
    batch = next(line for line in lines if line["message"].startswith("dispatched batch"))
    assert set(batch["delivery_ids"]) == sent | failed
    assert batch["outcomes"] == {"failed": list(failed), "sent": list(sent)}
    assert batch["level"] == "INFO" and batch["logger"] == "sopbot.dispatch"
    assert batch["worker_id"] == "test-worker"  # the record's own field wins
    warning = next(line for line in lines if line["level"] == "WARNING")
    assert warning["delivery_ids"] == list(failed)
    assert warning["status"] == "failed" and "simulated permanent error" in warning["reason"]
    assert str(next(iter(failed))) in warning["message"]  # readable in text logs too


def test_json_formatter_keeps_exceptions_and_non_json_values():
    record = logging.LogRecord("sopbot.x", logging.ERROR, __file__, 1, "boom %s", ("now",), None)
    record.when = T0  # not JSON-serialisable as such
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter({"process_role": "worker"}).format(record))
    assert line["message"] == "boom now" and line["process_role"] == "worker"
    assert line["when"] == str(T0)
    assert "ValueError: bad" in line["exc"]


def test_configure_logging_switches_the_root_handler():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(Settings(log_format="json", _env_file=None), worker_id="w-9")  # type: ignore[call-arg]
        (handler,) = root.handlers
        assert isinstance(handler.formatter, JsonFormatter)
        assert handler.formatter.fields == {"worker_id": "w-9"}
        configure_logging(Settings(_env_file=None))  # type: ignore[call-arg]
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_routine_library_chatter_is_held_to_warnings_unless_debugging():
    """APScheduler logs two INFO lines per job run (the dispatch tick runs every
    second): at the default level they would bury sopbot's own lines."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(Settings(_env_file=None))  # type: ignore[call-arg]
        executor = logging.getLogger("apscheduler.executors.default")
        assert not executor.isEnabledFor(logging.INFO)
        assert executor.isEnabledFor(logging.WARNING)  # a failing job still shows
        assert not logging.getLogger("alembic.runtime.plugins").isEnabledFor(logging.INFO)
        assert logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO)
        assert logging.getLogger("sopbot.dispatch").isEnabledFor(logging.INFO)
        configure_logging(Settings(log_level="debug", _env_file=None))  # type: ignore[call-arg]
        assert executor.isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_uvicorn_gets_a_json_config_only_when_asked():
    assert uvicorn_log_config(Settings(_env_file=None)) is None  # type: ignore[call-arg]
    config = uvicorn_log_config(Settings(log_format="json", _env_file=None))  # type: ignore[call-arg]
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logging.config.dictConfig(config)
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
