"""Recording outcomes: retries or gives up on a failed attempt, writes what the
channel said through a database outage, and logs every batch."""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError

from channels import service as channels_service
from scheduler.outbox import tasks, transitions
from scheduler.outbox.models import DeliveryStatus
from scheduler.outbox.transitions import Outcome
from sopbot.clock import Clock
from sopbot.db import session_scope
from sopbot.settings import Settings

log = logging.getLogger("sopbot.dispatch")

S = DeliveryStatus
T = TypeVar("T")

# Errors waiting cannot heal: a bug, not an outage.
_NOT_AN_OUTAGE = (IntegrityError, DataError, ProgrammingError)


def is_outage(exc: BaseException) -> bool:
    """A database error that may pass: connection lost, server restarting."""
    if not isinstance(exc, DBAPIError) or isinstance(exc, _NOT_AN_OUTAGE):
        return False
    # SQLite reports a bad statement as an OperationalError too.
    message = str(exc.orig or exc)
    return "syntax error" not in message and "no such " not in message


def through_outage(
    work: Callable[[], T],
    *,
    what: str,
    seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    extra: dict[str, Any] | None = None,
    retry_if: Callable[[BaseException], bool] = is_outage,
) -> T:
    """``work()``, tried again through database outages for ``seconds`` (backoff
    0.2 s doubling to 5 s). ``work`` must be safe to repeat (fenced writes)."""
    give_up = monotonic() + seconds
    delay = 0.2
    while True:
        try:
            return work()
        except DBAPIError as exc:
            if not retry_if(exc) or monotonic() + delay > give_up:
                raise
            log.warning(
                "database unavailable while %s (%s); retrying in %.1f s",
                what,
                type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
                delay,
                extra=extra,
            )
            sleep(delay)
            delay = min(5.0, delay * 2)


class OutcomeRecording:
    """The dispatcher's recording half (mixed into ``Dispatcher``)."""

    engine: Engine
    clock: Clock
    settings: Settings
    worker_id: str
    rng: random.Random
    _channel_policies: dict[str, channels_service.EffectivePolicy]
    # How long a write of outcomes may wait out an outage (the lease by default;
    # a graceful stop shortens it to its bound).
    _sleep: Callable[[float], None] = time.sleep
    _monotonic: Callable[[], float] = time.monotonic
    _stop_by: float | None = None

    def _outage_budget(self) -> float:
        seconds = float(self.settings.lease_seconds)
        if self._stop_by is not None:
            seconds = min(seconds, max(0.0, self._stop_by - self._monotonic()))
        return seconds

    def _retry_or_fail(self, row: Any, outcome: Outcome) -> Outcome:
        attempts = row.attempts + 1  # this attempt
        error = outcome.reason or "retryable error"
        channel_policy = self._channel_policies.get(row.channel)
        max_attempts = channel_policy.max_attempts if channel_policy else self.settings.max_attempts
        if attempts >= max_attempts:
            return Outcome(
                S.FAILED, f"gave up after {attempts} attempts: {error}", rendered=outcome.rendered
            )
        backoff = min(
            self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** (attempts - 1)
        )
        backoff *= 0.5 + self.rng.random() / 2  # equal jitter: spread retries of a burst
        # The platform's Retry-After wins when it asks for a longer wait.
        run_at = self.clock.now() + timedelta(seconds=max(backoff, outcome.retry_after or 0))
        if run_at > row.expires_at:
            return Outcome(
                S.FAILED,
                f"gave up: next retry would be past the grace period ({error})",
                rendered=outcome.rendered,
            )
        return Outcome(
            S.SCHEDULED,
            f"attempt {attempts} failed, retrying: {error}",
            run_at=run_at,
            rendered=outcome.rendered,
        )

    def _finish(
        self,
        results: dict[int, Outcome],
        created: dict[tuple[str, str, str], list[int]] | None = None,
    ) -> None:
        """Write the channel's outcomes. The messages are out: losing these
        writes would turn sent deliveries into ``unknown``, so a database outage
        is waited out for up to a lease (the writes are fenced by owner and
        status, so repeating them is safe). Meanwhile another worker may reap
        the rows to ``unknown``; the owner's outcome then resolves them."""

        def write() -> None:
            now = self.clock.now()
            with session_scope(self.engine) as session:
                transitions.record_outcome(session, owner=self.worker_id, outcomes=results, now=now)
                if created:
                    tasks.record_created(session, created, now, self.settings)

        if results or created:
            through_outage(
                write,
                what=f"recording {len(results)} outcomes",
                seconds=self._outage_budget(),
                sleep=self._sleep,
                monotonic=self._monotonic,
                extra={"worker_id": self.worker_id, "delivery_ids": list(results)},
            )


ERROR_KINDS = {"retry": "retryable", S.FAILED: "permanent", S.UNKNOWN: "unknown"}


def log_batch(
    worker_id: str,
    rows: Sequence[Any],
    outcomes: dict[int, Outcome],
    results: dict[int, Outcome],
    lease_lost: list[int],
) -> None:
    """One INFO line per batch with every delivery id, and one WARNING line per
    (status, reason) for what did not go out, so a delivery id in a complaint
    can be found in the logs (``SOPBOT_LOG_FORMAT=json`` keeps them as fields)."""
    by_status: dict[str, list[int]] = defaultdict(list)
    problems: dict[tuple[str, str], list[int]] = defaultdict(list)
    for delivery_id, outcome in (*outcomes.items(), *results.items()):
        by_status[outcome.status].append(delivery_id)
        if outcome.status in (S.FAILED, S.UNKNOWN, S.SCHEDULED):
            problems[(outcome.status, outcome.reason or "")].append(delivery_id)
    if lease_lost:
        by_status["lease_lost"] = list(lease_lost)
    if log.isEnabledFor(logging.INFO):  # its id lists cost a batch's worth of work
        _log_summary(worker_id, rows, by_status)
    for (status, reason), ids in problems.items():
        log.log(
            logging.INFO if status == S.SCHEDULED else logging.WARNING,
            "%d deliveries %s: %s (ids %s)",
            len(ids),
            "deferred" if status == S.SCHEDULED else status,
            reason,
            _id_list(ids),
            extra={"worker_id": worker_id, "status": status, "delivery_ids": ids, "reason": reason},
        )
    if lease_lost:
        log.warning(
            "%d deliveries lost their lease before sending (ids %s)",
            len(lease_lost),
            _id_list(lease_lost),
            extra={"worker_id": worker_id, "delivery_ids": list(lease_lost)},
        )


def _id_list(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown if len(ids) <= limit else f"{shown}, ... {len(ids) - limit} more"


def _log_summary(worker_id: str, rows: Sequence[Any], by_status: dict[str, list[int]]) -> None:
    log.info(
        "dispatched batch of %d: %s",
        len(rows),
        ", ".join(f"{status}={len(ids)}" for status, ids in sorted(by_status.items())),
        extra={
            "worker_id": worker_id,
            "delivery_ids": [r.id for r in rows],
            "outcomes": {status: ids for status, ids in sorted(by_status.items())},
        },
    )
