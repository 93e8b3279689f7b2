"""Channels benchmark: dispatch through real adapters.

Two figures, each through the real code paths:

* ``webhook`` -- deliveries per second sent by the ``Dispatcher`` through the webhook
  adapter to a local fake HTTP server (a uvicorn subprocess on 127.0.0.1) that answers
  every request after 20 ms. Concurrency is bounded twice: ``send_concurrency`` adapter
  calls per tick, each with the webhook's ``max_concurrency`` requests in flight; the
  server reports the peak number of requests it held at once, which must stay within
  that bound (no unbounded queue growth). Verified: every delivery ``sent`` and exactly
  one request per delivery.
* ``wecom`` -- deliveries per ``add_msg_template`` call for a 100,000-contact broadcast in
  ``task`` mode (one staff account, identical content) over ``httpx.MockTransport``:
  the adapter alone (one ``send`` of everything) and through the ``Dispatcher`` at the
  default and the largest claim batch size.
* ``wecom_modes`` -- WeCom API calls per 1,000 deliveries for each execution mode,
  through the ``Dispatcher`` against the fake WeCom server (``channels.wecom_fake``,
  which enforces WeCom's rules), counting every call: tokens, sends, and the result
  polls until every delivery is resolved (staff confirm every task, publish every
  moment). 1,000 customers of 10 staff members (or 1,000 customer groups).

Run from the repository root::

    python -m benchmarks.channels --json          # full size
    python -m benchmarks.channels --quick --json  # 10x smaller

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from audiences.models import Account, Contact
from benchmarks.machine import describe
from channels.base import AdapterContext, OutboundMessage
from channels.http import channel_http_client
from channels.registry import ensure_instance
from channels.webhook import WebhookConfig
from channels.wecom import WeComAdapter, WeComConfig
from scheduler.outbox import service as scheduler_service
from scheduler.outbox.dispatch import Dispatcher
from scheduler.outbox.models import Delivery, DeliveryStatus
from scheduler.runtime import build_channel_pool
from sop_templates import service as templates_service
from sopbot.clock import ManualClock
from sopbot.db import create_all, make_engine, session_scope
from sopbot.settings import Settings

NOW = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai: no quiet hours involved
LATENCY_S = 0.020
TARGETS = {"webhook_per_s": 500}


def _log(msg: str) -> None:
    print(f"[channels] {msg}", file=sys.stderr, flush=True)


def _rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


# -- the fake webhook receiver (its own process, so it does not share our GIL) ------


def _serve(port: int, latency: float) -> None:
    import uvicorn

    state = {"in_flight": 0, "peak": 0, "requests": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if scope["path"] == "/stats":
            body = json.dumps(state).encode()
        else:
            state["in_flight"] += 1
            state["peak"] = max(state["peak"], state["in_flight"])
            try:
                await asyncio.sleep(latency)
            finally:
                state["in_flight"] -= 1
            state["requests"] += 1
            body = json.dumps({"id": f"m{state['requests']}"}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"fake webhook server did not start on port {port}")


# -- shared set-up ----------------------------------------------------------------


def _contacts(engine: Engine, n: int, account: str | None = None) -> list[int]:
    with session_scope(engine) as session:
        account_id = None
        if account:
            session.execute(insert(Account).values(external_id=account, name=account))
            account_id = session.execute(
                select(Account.id).where(Account.external_id == account)
            ).scalar_one()
        rows = [
            {
                "external_id": f"wm_{i}",
                "account_id": account_id,
                "name": f"客户{i}",
                "joined_at": NOW,
                "status": "active",
                "attributes": {},
            }
            for i in range(n)
        ]
        for start in range(0, n, 10_000):
            session.execute(insert(Contact), rows[start : start + 10_000])
        return list(session.execute(select(Contact.id).order_by(Contact.id)).scalars())


def _enroll(engine: Engine, spec: dict[str, Any], ids: list[int]) -> None:
    with session_scope(engine) as session:
        template = templates_service.create_template(session, spec, NOW)
        templates_service.freeze_draft(session, template.id, NOW)  # type: ignore[arg-type]
    for start in range(0, len(ids), 10_000):
        with session_scope(engine) as session:
            template = templates_service.get_template(session, template.id)  # type: ignore[arg-type]
            scheduler_service.enroll(
                session, template, [(i, NOW) for i in ids[start : start + 10_000]], NOW
            )


def _counts(engine: Engine) -> dict[str, int]:
    with session_scope(engine) as session:
        return dict(
            session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()  # type: ignore[call-overload]
        )


async def _drain(dispatcher: Dispatcher) -> int:
    sent = 0
    while True:
        stats = await dispatcher.run_once()
        sent += stats.sent
        if not stats.claimed:
            return sent


# -- phase 1: webhook throughput ----------------------------------------------------


async def _webhook(n: int, settings: Settings, max_concurrency: int) -> dict[str, Any]:
    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(port, LATENCY_S), daemon=True
    )
    server.start()
    try:
        _wait_for(port)
        with tempfile.TemporaryDirectory(prefix="sopbot-bench-channels-") as tmp:
            engine = make_engine(f"sqlite:///{os.path.join(tmp, 'webhook.db')}")
            create_all(engine)
            with session_scope(engine) as session:
                ensure_instance(
                    session,
                    "hook",
                    "webhook",
                    {
                        "url": f"http://127.0.0.1:{port}/hook",
                        "secret": "bench-secret",
                        "max_concurrency": max_concurrency,
                    },
                )
            ids = _contacts(engine, n)
            spec = {
                "name": "webhook bench",
                "channel": "hook",
                "touchpoints": [
                    {"name": "hi", "timing": "+0m", "content": "{{ contact.name }}，你好"}
                ],
            }
            _enroll(engine, spec, ids)
            # The webhook adapter bounds requests in flight per channel instance; the
            # client is the one the runtime lends adapters (channels.http).
            bound = max_concurrency
            async with channel_http_client() as http:
                clock = ManualClock(NOW)
                dispatcher = Dispatcher(
                    engine, clock, build_channel_pool(engine, clock, http), settings, "bench"
                )
                _log(f"webhook: dispatching {n} deliveries (20 ms per call)")
                started, cpu_started = time.perf_counter(), time.process_time()
                sent = await _drain(dispatcher)
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                stats = (await http.get(f"http://127.0.0.1:{port}/stats")).json()
            counts = _counts(engine)
            engine.dispose()
    finally:
        server.terminate()
        server.join(5)
    ok = sent == n and counts == {DeliveryStatus.SENT: n} and stats["requests"] == n
    return {
        "deliveries": n,
        "sent": sent,
        "seconds": round(elapsed, 3),
        "per_s": round(n / elapsed, 1),
        # This process's CPU per delivery (dispatcher + httpx): the figure to read
        # when the machine is shared and wall-clock throughput is noisy.
        "cpu_ms_per_delivery": round(cpu / n * 1000, 3),
        "cpu_bound_per_s": round(n / cpu, 1),
        "server_latency_ms": LATENCY_S * 1000,
        "peak_in_flight": stats["peak"],
        "in_flight_bound": bound,
        "send_concurrency": settings.send_concurrency,
        "webhook_max_concurrency": max_concurrency,
        "claim_batch_size": settings.claim_batch_size,
        "requests": stats["requests"],
        "verified": ok,
    }


# -- phase 2: WeCom batching -------------------------------------------------------


class _CountingWeCom:
    def __init__(self) -> None:
        self.task_calls = 0
        self.sizes: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/gettoken"):
            return httpx.Response(200, json={"errcode": 0, "access_token": "t", "expires_in": 7200})
        self.task_calls += 1
        self.sizes.append(len(json.loads(request.content)["external_userid"]))
        return httpx.Response(
            200, json={"errcode": 0, "msgid": f"msg{self.task_calls}", "fail_list": []}
        )


async def _wecom_adapter(n: int) -> dict[str, Any]:
    fake = _CountingWeCom()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        adapter = WeComAdapter(
            WeComConfig(corp_id="ww", corp_secret="s"),
            AdapterContext(http=http, engine=None, clock=ManualClock(NOW)),  # type: ignore[arg-type]
        )
        messages = [
            OutboundMessage(
                delivery_id=i,
                idempotency_key=f"sopbot-d{i}",
                target_kind="contact",
                target_external_id=f"wm_{i}",
                account_external_id="staff_li",
                parts=[{"kind": "text", "text": "周末大促，点击查看"}],
                mode="task",
            )
            for i in range(n)
        ]
        started = time.perf_counter()
        results = await adapter.send(messages)
        elapsed = time.perf_counter() - started
    assert all(r.status == "sent" for r in results)
    return {
        "api_calls": fake.task_calls,
        "deliveries_per_call": round(n / fake.task_calls, 1),
        "largest_call": max(fake.sizes),
        "seconds": round(elapsed, 3),
    }


async def _wecom_dispatch(n: int, settings: Settings) -> dict[str, Any]:
    fake = _CountingWeCom()
    with tempfile.TemporaryDirectory(prefix="sopbot-bench-channels-") as tmp:
        engine = make_engine(f"sqlite:///{os.path.join(tmp, 'wecom.db')}")
        create_all(engine)
        with session_scope(engine) as session:
            ensure_instance(session, "wecom", "wecom", {"corp_id": "ww", "corp_secret": "s"})
        ids = _contacts(engine, n, account="staff_li")
        spec = {
            "name": "wecom broadcast",
            "channel": "wecom",
            "touchpoints": [
                {"name": "promo", "timing": "+0m", "content": "周末大促，点击查看", "mode": "task"}
            ],
        }
        _enroll(engine, spec, ids)
        async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
            clock = ManualClock(NOW)
            dispatcher = Dispatcher(
                engine, clock, build_channel_pool(engine, clock, http), settings, "bench"
            )
            started = time.perf_counter()
            sent = await _drain(dispatcher)
            elapsed = time.perf_counter() - started
        engine.dispose()
    return {
        "claim_batch_size": settings.claim_batch_size,
        "sent": sent,
        "api_calls": fake.task_calls,
        "deliveries_per_call": round(n / max(1, fake.task_calls), 1),
        "seconds": round(elapsed, 3),
        "per_s": round(n / elapsed, 1),
    }


# -- phase 3: WeCom API calls per mode ----------------------------------------------

WECOM_MODES: dict[str, dict[str, Any]] = {
    "welcome": {"mode": "welcome", "codes": True},
    "welcome_without_code_to_task": {"mode": "welcome", "codes": False},
    "task": {"mode": "task"},
    "task_groups": {"mode": "task", "target": "group"},
    "remind": {"mode": "remind"},
    "moment": {"mode": "moment"},
}


def _wecom_audience(
    engine: Engine, fake: Any, n: int, staff: int, *, codes: bool, groups: bool
) -> list[int]:
    from audiences.models import GroupChat

    with session_scope(engine) as session:
        session.execute(
            insert(Account), [{"external_id": f"staff_{k}", "name": ""} for k in range(staff)]
        )
        accounts = dict(session.execute(select(Account.external_id, Account.id)).all())  # type: ignore[call-overload]
        if groups:
            session.execute(
                insert(GroupChat),
                [
                    {
                        "external_id": f"wr_{i}",
                        "owner_account_id": accounts[f"staff_{i % staff}"],
                        "name": f"群{i}",
                        "joined_at": NOW,
                        "status": "active",
                        "attributes": {},
                        "member_count": 0,
                    }
                    for i in range(n)
                ],
            )
            for i in range(n):
                fake.add_group(f"wr_{i}", f"staff_{i % staff}")
            return list(session.execute(select(GroupChat.id).order_by(GroupChat.id)).scalars())
        rows = []
        for i in range(n):
            user = f"staff_{i % staff}"
            code = fake.add_contact(user, f"wm_{i}")
            attributes = (
                {"wecom_welcome_code": code, "wecom_welcome_at": NOW.isoformat()} if codes else {}
            )
            rows.append(
                {
                    "external_id": f"wm_{i}",
                    "account_id": accounts[user],
                    "name": f"客户{i}",
                    "joined_at": NOW,
                    "status": "active",
                    "attributes": attributes,
                }
            )
        session.execute(insert(Contact), rows)
        return list(session.execute(select(Contact.id).order_by(Contact.id)).scalars())


async def _wecom_mode(name: str, n: int, settings: Settings, staff: int = 10) -> dict[str, Any]:
    from channels.wecom_fake import FakeWeCom
    from scheduler.outbox import tasks

    case = WECOM_MODES[name]
    clock = ManualClock(NOW)
    fake = FakeWeCom(clock, corp_id="ww", corp_secret="s")
    with tempfile.TemporaryDirectory(prefix="sopbot-bench-wecom-") as tmp:
        engine = make_engine(f"sqlite:///{os.path.join(tmp, 'wecom.db')}")
        create_all(engine)
        with session_scope(engine) as session:
            config = {"corp_id": "ww", "corp_secret": "s", "agent_id": 1000002}
            ensure_instance(session, "wecom", "wecom", config)
        groups = case.get("target") == "group"
        ids = _wecom_audience(engine, fake, n, staff, codes=bool(case.get("codes")), groups=groups)
        content: list[Any] = ["周末大促，点击查看"]
        if case["mode"] == "moment":
            content.append({"image": "wecom-media:MEDIA"})
        spec = {
            "name": f"wecom {name}",
            "channel": "wecom",
            "target": "group" if groups else "contact",
            "touchpoints": [
                {"name": "step", "timing": "+0m", "content": content, "mode": case["mode"]}
            ],
        }
        _enroll(engine, spec, ids)
        async with httpx.AsyncClient(transport=fake.transport()) as http:
            pool = build_channel_pool(engine, clock, http)
            dispatcher = Dispatcher(engine, clock, pool, settings, "bench")
            started = time.perf_counter()
            await _drain(dispatcher)
            for msgid, task in fake.tasks.items():  # every staff member confirms
                fake.confirm(msgid, task.sender)
            for moment in fake.moments.values():
                for member in moment.members:
                    fake.publish_moment(moment.moment_id, member)
            for _ in range(20):
                clock.advance(seconds=settings.task_poll_seconds * 2**12)
                stats = await tasks.poll_tasks(engine, clock, pool, settings, limit=1000)
                if not stats.polled:
                    break
            elapsed = time.perf_counter() - started
        counts = _counts(engine)
        engine.dispose()
    calls = sum(fake.calls.values())
    return {
        "deliveries": n,
        "statuses": counts,
        "api_calls": dict(sorted(fake.calls.items())),
        "calls_per_1000_deliveries": round(calls * 1000 / n, 1),
        "seconds": round(elapsed, 3),
    }


# -- main ------------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    machine = describe()
    scale = 10 if args.quick else 1
    base = Settings(
        database_url="sqlite://",
        worker_id="bench",
        _env_file=None,  # type: ignore[call-arg]
    )
    if args.only_wecom_modes:
        modes = {}
        for name in WECOM_MODES:
            modes[name] = await _wecom_mode(name, args.wecom_mode_deliveries, base)
            _log(f"wecom {name}: {modes[name]['calls_per_1000_deliveries']} calls per 1,000")
        return {"benchmark": "channels", "wecom_modes": modes, "meets_targets": True}
    n_hook = args.webhook_deliveries or 20_000 // scale
    webhook = await _webhook(n_hook, base, args.webhook_concurrency)
    _log(f"webhook: {webhook['per_s']}/s, peak in flight {webhook['peak_in_flight']}")

    n_wecom = 100_000 // scale
    adapter = await _wecom_adapter(n_wecom)
    _log(f"wecom adapter: {adapter['deliveries_per_call']} deliveries per call")
    dispatch_default = await _wecom_dispatch(n_wecom, base)
    dispatch_large = await _wecom_dispatch(
        n_wecom, base.model_copy(update={"claim_batch_size": 10_000})
    )
    _log(
        "wecom via dispatcher: "
        f"{dispatch_default['deliveries_per_call']} (claim 500), "
        f"{dispatch_large['deliveries_per_call']} (claim 10000) deliveries per call"
    )
    n_modes = args.wecom_mode_deliveries
    modes = {}
    for name in WECOM_MODES:
        modes[name] = await _wecom_mode(name, n_modes, base)
        _log(f"wecom {name}: {modes[name]['calls_per_1000_deliveries']} API calls per 1,000")
    return {
        "benchmark": "channels",
        "quick": bool(args.quick),
        "machine": machine,
        "webhook": webhook,
        "wecom": {
            "contacts": n_wecom,
            "adapter": adapter,
            "dispatch_claim_500": dispatch_default,
            "dispatch_claim_10000": dispatch_large,
        },
        "wecom_modes": modes,
        "targets": TARGETS,
        "meets_targets": webhook["per_s"] >= TARGETS["webhook_per_s"]
        and webhook["peak_in_flight"] <= webhook["in_flight_bound"]
        and webhook["verified"],
        "peak_rss_mb": _rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    parser.add_argument("--quick", action="store_true", help="10x smaller")
    parser.add_argument("--webhook-deliveries", type=int, default=0)
    parser.add_argument(
        "--wecom-mode-deliveries", type=int, default=1_000, help="per WeCom mode (phase 3)"
    )
    parser.add_argument(
        "--only-wecom-modes", action="store_true", help="run phase 3 alone (small, quick)"
    )
    parser.add_argument(
        "--webhook-concurrency",
        type=int,
        default=WebhookConfig.model_fields["max_concurrency"].default,
        help="the webhook instance's max_concurrency (default: the adapter's default)",
    )
    args = parser.parse_args(argv)
    result = asyncio.run(_main(args))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0 if result["meets_targets"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
