"""The delivery state machine: every way ``deliveries.status`` changes.

Each transition is one named, set-based statement fenced by the status it
starts from (and by the lease owner where a worker holds the row). ``TABLE`` is
the one list of allowed moves; every function here checks the statuses it
writes against it, so a move that is not in the table raises
:class:`TransitionRefused` before any SQL runs, and a row that is not in the
transition's start status (or not held by the caller) is simply not touched.

::

    scheduled ─claim─► claimed ─mark_sending─► sending ─record_outcome─► sent / failed / unknown
      ▲  ▲  │              │  │                   │  │                    │
      │  │  │ miss         │  │ skip/fail/miss    │  │ record_outcome     │ (late outcome of
      │  │  ▼              │  ▼ (before sending)  │  │ (retry)            │  the lease owner)
      │  │ missed/failed   │ skipped/failed/missed│  │                    ▼
      │  └── release, reap_claimed, defer ────────┘  │            resolve_unknown ─► sent/failed/scheduled
      └──────────── record_outcome (retry), reap_resend (deduplicating channel) ──┘
                                          reap_sending: sending ─► unknown
    claim takes due welcomes first (URGENT_MODE); claim_siblings: scheduled ─► claimed for
      the due task/moment rows of a touchpoint occurrence already in the batch
    unmark: sending ─► scheduled (marked as next in line, a stop came before the call)
    cancel: scheduled/claimed ─► cancelled      repoint: scheduled ─► scheduled/skipped
    task_failed / task_expired: sent ─► failed / unknown (mass-send task polls)
    task_skipped / task_cancelled: sent ─► skipped / cancelled (quota used; task recalled)
    record_outcome may also end sending ─► skipped (the channel applied the touchpoint's rule)
    remind mode (scheduler.staff): claimed ─assign_staff─► awaiting_staff ─staff_done─► done
      awaiting_staff ─staff_skip─► skipped_by_staff, ─staff_miss─► missed (deadline passed),
      ─cancel─► cancelled
"""

from scheduler.outbox.transitions.decisions import (
    cancel,
    confirm_task,
    repoint,
    staff_done,
    staff_miss,
    staff_skip,
    task_cancelled,
    task_expired,
    task_failed,
    task_skipped,
)
from scheduler.outbox.transitions.held import (
    CLAIM_COLUMNS,
    Claimed,
    _write,
    claim,
    claim_siblings,
    mark_sending,
    record_outcome,
    release,
    renew,
    resolve_unknown,
    settle,
    unmark,
)
from scheduler.outbox.transitions.machine import (
    TABLE,
    Outcome,
    TransitionRefused,
    allowed,
    check,
    starts,
)
from scheduler.outbox.transitions.reaping import (
    REAPED_RESEND,
    REAPED_UNKNOWN,
    expired_sending_channels,
    miss_overdue,
    reap,
    reap_claimed,
    reap_resend,
    reap_sending,
)

__all__ = [
    "CLAIM_COLUMNS",
    "REAPED_RESEND",
    "REAPED_UNKNOWN",
    "TABLE",
    "Claimed",
    "Outcome",
    "TransitionRefused",
    "_write",
    "allowed",
    "cancel",
    "check",
    "claim",
    "claim_siblings",
    "confirm_task",
    "expired_sending_channels",
    "mark_sending",
    "miss_overdue",
    "reap",
    "reap_claimed",
    "reap_resend",
    "reap_sending",
    "record_outcome",
    "release",
    "renew",
    "repoint",
    "resolve_unknown",
    "settle",
    "staff_done",
    "staff_miss",
    "staff_skip",
    "starts",
    "task_cancelled",
    "task_expired",
    "task_failed",
    "task_skipped",
    "unmark",
]
