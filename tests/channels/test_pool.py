"""The channel pool of one process sees changes made by another: within
``refresh_seconds`` of a change (its clock injected here), the next use gets an
adapter built from the new config, or the refusal of a disabled channel."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from channels import service as channels_service
from channels.base import AdapterContext, ChannelError
from channels.mock import MockAdapter
from channels.registry import ChannelPool, ensure_instance
from sopbot.clock import ManualClock
from sopbot.db import session_scope


class Ticks:
    """An injected monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pool(engine: Engine, clock: ManualClock) -> tuple[ChannelPool, Ticks]:
    ticks = Ticks()
    http = httpx.AsyncClient()

    def context(name: str) -> AdapterContext:
        return AdapterContext(http=http, engine=engine, clock=clock, instance_name=name)

    with session_scope(engine) as session:
        ensure_instance(session, "shop", "mock", {"latency_ms": 0})
    return ChannelPool(engine, context, refresh_seconds=1.0, monotonic=ticks), ticks


def _change(engine: Engine, **patch: Any) -> None:
    """What the API of another process does (this pool is not told)."""
    with session_scope(engine) as session:
        channels_service.update_instance(
            session, "shop", channels_service.ChannelInstanceUpdate(**patch)
        )


def _latency(adapter: Any) -> float:
    assert isinstance(adapter, MockAdapter)
    return adapter.config.latency_ms


def test_an_edit_elsewhere_is_used_after_the_refresh_interval(pool, engine) -> None:
    channels, ticks = pool
    first = channels.get("shop")
    _change(engine, config={"latency_ms": 7})

    ticks.now += 0.5  # within the interval: the built adapter is still used
    assert channels.get("shop") is first
    ticks.now += 0.6
    assert _latency(channels.get("shop")) == 7


def test_disabling_elsewhere_stops_sends_then_enabling_resumes(pool, engine) -> None:
    channels, ticks = pool
    channels.get("shop")
    _change(engine, enabled=False)
    ticks.now += 1.1
    with pytest.raises(ChannelError, match="'shop' is disabled"):
        channels.get("shop")

    _change(engine, enabled=True, config={"latency_ms": 3})
    ticks.now += 0.5
    with pytest.raises(ChannelError, match="disabled"):  # not yet seen
        channels.get("shop")
    ticks.now += 0.6
    assert _latency(channels.get("shop")) == 3


def test_a_policy_change_counts_as_a_change(pool, engine) -> None:
    channels, ticks = pool
    first = channels.get("shop")
    _change(engine, policy={"rate_per_second": 5})
    ticks.now += 1.1
    assert channels.get("shop") is not first


def test_a_channel_created_elsewhere_is_found(pool, engine) -> None:
    channels, ticks = pool
    with pytest.raises(ChannelError, match="no channel instance named 'later'"):
        channels.get("later")
    with session_scope(engine) as session:
        ensure_instance(session, "later", "mock")
    ticks.now += 1.1
    assert channels.get("later").name == "mock"
