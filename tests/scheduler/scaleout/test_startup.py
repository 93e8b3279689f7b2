"""Four `sopbot worker` processes starting at the same instant on a new,
empty database (just `sopbot db upgrade`d, as the compose file starts its
workers): every one runs. None may lose a race on what start-up creates
(the default `mock` channel) and exit 1.

"The same instant" is made exact, not left to luck: the test holds an
exclusive lock on the channel table while the workers start, so each one
queues on it at its first look, and all four go on together when it is let
go. (A start-up that never reads the table does not wait at all.)"""

from __future__ import annotations

import pytest
from harness import live_workers, start_worker, wait_until
from sqlalchemy import func, select, text

from channels.models import ChannelInstance

pytestmark = [pytest.mark.postgres, pytest.mark.faults]

N_WORKERS = 4


def _waiting_on_a_lock(engine, names: set[str]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND application_name = ANY(:names)"
                ),
                {"names": sorted(names)},
            ).scalar_one()
        )


def test_four_workers_starting_together_on_an_empty_database_all_run(
    scale_url, scale_engine, workdir
):
    names = {f"w{i + 1}" for i in range(N_WORKERS)}
    procs = []
    gate = scale_engine.connect()
    try:
        gate.execute(text("LOCK TABLE channel_instances IN ACCESS EXCLUSIVE MODE"))
        procs = [start_worker(scale_url, name, workdir) for name in sorted(names)]

        def at_the_gate() -> bool:
            exited = [p for p in procs if not p.alive()]
            return bool(exited) or _waiting_on_a_lock(scale_engine, names) == N_WORKERS

        wait_until(at_the_gate, 90, interval=0.1, what="every worker at the start line")
        gate.commit()  # all four go on at once
        gate.close()

        def all_running() -> bool:
            if any(not p.alive() for p in procs):
                return True
            return names <= live_workers(scale_engine).keys()

        wait_until(all_running, 60, interval=0.1, what="every worker heartbeating")
        crashed = {p.worker_id: p.process.returncode for p in procs if not p.alive()}
        assert not crashed, "\n".join(
            f"{p.worker_id} exited {p.process.returncode}:\n{p.output()[-1500:]}"
            for p in procs
            if not p.alive()
        )
        assert names <= live_workers(scale_engine).keys()
        codes = [p.terminate(timeout=30) for p in procs]
    finally:
        if not gate.closed:
            gate.close()
        for p in procs:
            p.close()
    assert codes == [0] * N_WORKERS
    with scale_engine.connect() as conn:
        mocks = conn.execute(
            select(func.count()).where(ChannelInstance.name == "mock")
        ).scalar_one()
    assert mocks == 1  # the default channel, created once
