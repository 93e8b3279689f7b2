"""Page latency under load: what an operator waits for while one ``sopbot serve``
ingests a burst of new friends and drains the deliveries they make due.

A real ``sopbot serve`` process (API, pages and scheduler in one process, as a
single-machine deployment runs) on SQLite, with a published new-friend template
of 10 touchpoints all due at ``+0m`` on the mock channel. This process is the
client: it posts ``friend_added`` events (batches of 500) as fast as the server
takes them, so every event makes 10 deliveries due at once, while a process of
its own (as an operator's browser is) probes the pages every 100 ms, one after
another, until every delivery is sent. Probing starts once the server has
started: each page opened once and the server idle (``settle_s``):

* ``/healthz`` -- liveness and backlog (what a load balancer polls);
* ``/api/deliveries?limit=20`` -- the first page of the delivery log;
* ``/api/templates`` -- the template list (API);
* ``/templates`` -- the template list page, with each template's delivery counts.

For each page: p50, p99 and max milliseconds, and how many probes. Targets: p99
<= 100 ms and none over 500 ms. Verified exactly once from the mock channel's
own record: every delivery ``sent``, each received once.

Run from the repository root::

    python -m benchmarks.pages --json            # 10,000 events, 100,000 deliveries
    python -m benchmarks.pages --quick --json    # 1,000 events, 10,000 deliveries

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from audiences import service as audiences_service
from benchmarks.audiences import _api_token, _free_port
from benchmarks.machine import describe, process_cpu
from channels.models import MockMessage
from channels.registry import ensure_instance
from scheduler.flows import lifecycle
from scheduler.outbox.models import Delivery, DeliveryStatus
from sop_templates import service as templates_service
from sopbot.db import make_engine, reader, session_scope
from sopbot.migrate import upgrade

BATCH = 500
TOUCHPOINTS = 10
PROBE_INTERVAL_S = 0.1
PAGES = {
    "healthz": "/healthz",
    "deliveries": "/api/deliveries?limit=20",
    "templates_api": "/api/templates",
    "templates_page": "/templates",
}
TARGETS = {"p99_ms": 100.0, "max_ms": 500.0}
# ``sopbot serve``, dumping every thread's stack on SIGUSR1 (a probe that hangs).
_SERVE = (
    "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "sys.argv[0] = 'sopbot'; from api.cli import main; main()"
)
_ACTOR = lifecycle.Actor(require_approval=False, audit=lambda *entry: None)


def _log(msg: str) -> None:
    print(f"[pages] {msg}", file=sys.stderr, flush=True)


def _setup(engine: Engine) -> None:
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        ensure_instance(session, "bench", "mock", {"max_batch": 1000, "persist": True})
        audiences_service.ensure_account(session, "staff_1", "客服小王")
        # Other templates on the list, as an operator's workspace has.
        for k in range(5):
            draft: dict[str, Any] = {
                "name": f"草稿 {k}",
                "target": "contact",
                "touchpoints": [{"name": "hi", "timing": "+1d", "content": "你好"}],
            }
            templates_service.create_template(session, draft, now)
        spec: dict[str, Any] = {
            "name": "新好友 SOP（基准）",
            "target": "contact",
            "segment": {"kind": "new_friends"},
            "channel": "bench",
            "touchpoints": [
                {"name": f"第{i + 1}步", "timing": "+0m", "content": "{{ contact.name }} 你好"}
                for i in range(TOUCHPOINTS)
            ],
        }
        template = templates_service.create_template(session, spec, now)
        lifecycle.publish(session, template.id, now, _ACTOR)  # type: ignore[arg-type]


@contextlib.contextmanager
def _serve(url: str, workdir: Path, keep_log: str | None) -> Iterator[tuple[str, int]]:
    """``sopbot serve`` on a free port against ``url``; yields its base URL and pid."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPBOT_")}
    env.update(
        SOPBOT_DATABASE_URL=url,
        SOPBOT_LOG_LEVEL="WARNING",
        SOPBOT_LOG_FORMAT="text",
        SOPBOT_SECRET_KEY="benchmark-secret-key-benchmark-secret-key",
    )
    log = (workdir / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sopbot serve exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("sopbot serve did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield base, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        if keep_log:
            shutil.copy(workdir / "serve.log", keep_log)


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of process ``pid`` and its children (serve's
    scheduler process) (Linux /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return process_cpu(pid) + sum(_process_cpu_s(int(child)) for child in children)


def _settle(base: str, pid: int, token: str) -> float:
    """Open every page once, then wait until ``serve`` has finished starting up
    (its scheduler process, compiling the page templates): the figures are for a
    running server, not for its first second. Returns the seconds waited."""
    started = time.perf_counter()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        for path in PAGES.values():
            client.get(path, timeout=30).raise_for_status()
    deadline = time.monotonic() + 30
    before = _process_cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _process_cpu_s(pid)
        if now - before < 0.05:  # under 10% of a core: idle
            break
        before = now
    return time.perf_counter() - started


def _pending(engine: Engine) -> int:
    with reader(engine).connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(
                    Delivery.status.in_(DeliveryStatus.PENDING)  # type: ignore[attr-defined]
                )
            ).scalar_one()
        )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _probe(
    base: str,
    pid: int,
    token: str,
    ready: EventType,
    go: EventType,
    stop: EventType,
    phase: Any,
    results: Any,
) -> None:
    """The prober, a process of its own (as an operator's browser is): in the
    posting process its timings would include waiting for that process's GIL.
    Once started it sets ``ready``, and probes from ``go`` to ``stop``;
    ``phase`` is 0 while the events are posted, 1 while they drain; the
    samples go back through ``results``."""
    out: dict[str, list[float]] = {name: [] for name in PAGES}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        ready.set()
        go.wait()
        while not stop.is_set():
            started = time.perf_counter()
            for name, path in PAGES.items():
                t0 = time.perf_counter()
                try:
                    response = client.get(path, timeout=5)
                except httpx.TimeoutException:
                    os.kill(pid, signal.SIGUSR1)  # the stacks go to the server's log
                    response = client.get(path)
                elapsed = time.perf_counter() - t0
                if response.status_code != 200:
                    out.setdefault("errors", []).append(float(response.status_code))
                out[name].append(elapsed * 1000)
                when = "drain" if phase.value else "ingest"
                out.setdefault(f"{when}:{name}", []).append(elapsed * 1000)
            stop.wait(max(0.0, PROBE_INTERVAL_S - (time.perf_counter() - started)))
    results.put(out)


def run(*, quick: bool = False, serve_log: str | None = None) -> dict[str, Any]:
    events = 1_000 if quick else 10_000
    result: dict[str, Any] = {
        "benchmark": "pages",
        "database": "sqlite",
        "quick": quick,
        "events": events,
        "deliveries_due": events * TOUCHPOINTS,
        "machine": describe(),
    }
    with tempfile.TemporaryDirectory(prefix="sopbot-bench-pages-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'sopbot.db'}"
        engine = make_engine(url)
        upgrade(engine)
        _setup(engine)
        token = _api_token(engine)
        with _serve(url, Path(tmp), serve_log) as (base, pid):
            context = multiprocessing.get_context("spawn")
            ready, go, stop = context.Event(), context.Event(), context.Event()
            phase = context.Value("i", 0)  # which part of the run a probe fell in
            results = context.Queue()
            prober = context.Process(
                target=_probe, args=(base, pid, token, ready, go, stop, phase, results), daemon=True
            )
            prober.start()  # its start-up (imports) done before the posting starts
            if not ready.wait(60):
                raise RuntimeError("the prober process did not start within 60 s")
            result["settle_s"] = round(_settle(base, pid, token), 2)
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            cpu_before = _process_cpu_s(pid)
            with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
                _log(f"{events:,} friend_added, {events * TOUCHPOINTS:,} deliveries due at once")
                go.set()
                started = time.perf_counter()
                for b in range(events // BATCH):
                    occurred = datetime.now(UTC).isoformat()
                    batch = [
                        {
                            "kind": "friend_added",
                            "id": f"pages-{b}-{i}",
                            "account": "staff_1",
                            "external_id": f"wm_{b:05d}_{i:03d}",
                            "name": f"客户{b}-{i}",
                            "occurred_at": occurred,
                        }
                        for i in range(BATCH)
                    ]
                    response = client.post(
                        "/api/events", content=json.dumps(batch, ensure_ascii=False).encode()
                    )
                    if response.status_code != 200:
                        tail = (Path(tmp) / "serve.log").read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"POST /api/events: {response.status_code}\n{tail}")
                ingested = time.perf_counter() - started
                _log(f"ingested in {ingested:.1f} s; draining")
                phase.value = 1
                deadline = time.monotonic() + 600
                while _pending(engine) and time.monotonic() < deadline:
                    time.sleep(0.5)
                drained = time.perf_counter() - started
            stop.set()
            samples: dict[str, list[float]] = results.get(timeout=60)
            prober.join()
            cpu = _process_cpu_s(pid) - cpu_before
        with engine.connect() as conn:
            statuses: dict[str, int] = dict(
                conn.execute(
                    select(Delivery.status, func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
                ).all()
            )
            reasons = [
                f"{status}: {reason}"
                for status, reason, _ in conn.execute(
                    select(Delivery.status, Delivery.reason, func.count())  # type: ignore[call-overload]
                    .where(Delivery.status != DeliveryStatus.SENT)
                    .group_by(Delivery.status, Delivery.reason)
                ).all()
            ]
            total, distinct = conn.execute(
                select(func.count(), func.count(MockMessage.delivery_id.distinct()))  # type: ignore[attr-defined]
            ).one()
        engine.dispose()
    n = events * TOUCHPOINTS
    errors = samples.pop("errors", [])
    result.update(
        ingest_s=round(ingested, 2),
        drain_s=round(drained, 2),
        serve_cpu_s=round(cpu, 2),
        client_cpu_s=round(resource.getrusage(resource.RUSAGE_SELF).ru_utime, 2),
        probe_errors=len(errors),
        not_sent=reasons,
    )
    by_phase: dict[str, dict[str, float]] = {}
    for key in [k for k in samples if ":" in k]:
        when, name = key.split(":", 1)
        values = samples.pop(key)
        by_phase.setdefault(when, {})[f"{name}_p99_ms"] = round(_percentile(values, 0.99), 1)
        by_phase[when]["probes"] = len(values)
    result["p99_by_phase"] = by_phase  # while the events are posted / while they drain
    for name, values in samples.items():
        result[name] = {
            "probes": len(values),
            "p50_ms": round(_percentile(values, 0.5), 1),
            "p99_ms": round(_percentile(values, 0.99), 1),
            "max_ms": round(max(values), 1),
        }
        _log(f"{name}: {result[name]}")
    result["load_avg_end"] = round(os.getloadavg()[0], 2)
    result["targets"] = TARGETS
    result["meets_targets"] = {
        name: result[name]["p99_ms"] <= TARGETS["p99_ms"]
        and result[name]["max_ms"] <= TARGETS["max_ms"]
        for name in PAGES
    }
    result["verified"] = (
        statuses == {DeliveryStatus.SENT: n} and total == n and distinct == n and not errors
    )
    _log(f"statuses={statuses} mock={total}/{distinct} verified={result['verified']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller (smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--serve-log", help="keep the server's log at this path")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, serve_log=args.serve_log)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
