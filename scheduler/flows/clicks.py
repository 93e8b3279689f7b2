"""Clicks on tracked links, written in batches through the one audience write path.

The redirect (``api/routes/links.py``) answers at once and hands each click to
a :class:`ClickRecorder`. Its thread writes what has queued every
``flush_seconds`` (default 0.2 s), in one transaction per batch: the batch
becomes ``link_clicked`` audience events (``audiences.events.LinkClicked``)
applied by ``scheduler.flows.changes.apply``, which writes the ``link_clicks``
rows and runs the SOP reactions — goals reached, segments that now match
("clicked in the last N days"), exit conditions (``exit.clicked``).

Whether a person's click is a ``repeat`` is decided here, at write time: one
query per batch for the tokens a person opened before, then the batch in order.

What a crash costs: a process killed without its shutdown (SIGKILL, power
loss) loses the clicks not yet written — normally those of the last
``flush_seconds`` or so; the customers were redirected, their clicks are not
counted. SIGTERM (and the app's shutdown)
writes everything queued first. A database that cannot be written keeps the
batch queued and retried (up to ``max_queue`` clicks, then the oldest are
dropped with an error in the log); ``flush_seconds = 0`` writes each click in
its request instead (nothing lost, a write per click).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from audiences.events import LinkClicked
from scheduler.flows import changes
from scheduler.outcomes import links
from sopbot.clock import Clock
from sopbot.db import session_scope

log = logging.getLogger("sopbot.clicks")


@dataclass(frozen=True)
class Opened:
    """One request to a short link, as the redirect saw it."""

    link: links.Link
    at: datetime
    user_agent: str
    bot: bool


class ClickRecorder:
    """Queues clicks and writes them in batches from its own thread."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        *,
        flush_seconds: float = 0.2,
        max_batch: int = 2000,
        max_queue: int = 200_000,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._queue: deque[Opened] = deque()
        self._lock = threading.Lock()  # one writer at a time (thread, flush, stop)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the request side ------------------------------------------------------------

    def opened(self, link: links.Link, at: datetime, user_agent: str) -> None:
        """Record a request to ``link`` (never raises, never waits on the database
        unless ``flush_seconds`` is 0)."""
        agent = (user_agent or "")[:500]
        self._queue.append(Opened(link, at, agent, links.is_bot(agent)))
        if self.flush_seconds <= 0:
            self.flush()
        elif len(self._queue) > self.max_queue:
            dropped = self._queue.popleft()
            log.error("click queue full: a click on %s was dropped", dropped.link.token)

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- the writer --------------------------------------------------------------------

    def start(self) -> None:
        if self.flush_seconds <= 0 or self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="sopbot-clicks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write everything queued and stop the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except OperationalError as exc:  # the database blinked: the batch stays queued
                log.warning("clicks not written yet (%s); retrying", exc.orig)
                self._stopping.wait(min(5.0, self.flush_seconds * 10))
            except Exception:  # never let the writer die
                log.exception("clicks could not be written")

    def flush(self) -> int:
        """Write what is queued now, in batches; returns how many clicks."""
        written = 0
        with self._lock:
            while self._queue:
                batch = [self._queue[i] for i in range(min(self.max_batch, len(self._queue)))]
                try:
                    self._write(batch)
                except OperationalError:
                    raise
                except Exception:
                    # A click that cannot be applied fails alone; the rest are written.
                    log.exception("a batch of clicks failed; writing them one by one")
                    for one in batch:
                        try:
                            self._write([one])
                        except OperationalError:
                            raise
                        except Exception:
                            log.exception("click on %s dropped", one.link.token)
                        self._queue.popleft()
                    written += len(batch)
                    continue
                for _ in batch:
                    self._queue.popleft()
                written += len(batch)
        return written

    def _write(self, batch: list[Opened]) -> None:
        with session_scope(self.engine) as session:
            before = links.persons_clicked_before(
                session, [o.link.token for o in batch if not o.bot]
            )
            events = []
            for o in batch:
                repeat = not o.bot and o.link.token in before
                if not o.bot:
                    before.add(o.link.token)
                events.append(
                    LinkClicked(
                        occurred_at=o.at,
                        target=o.link.target_kind,  # type: ignore[arg-type]
                        target_id=o.link.target_id,
                        token=o.link.token,
                        delivery_id=o.link.delivery_id,
                        enrollment_id=o.link.enrollment_id,
                        template_id=o.link.template_id,
                        touchpoint_name=o.link.touchpoint_name,
                        url=o.link.url,
                        user_agent=o.user_agent,
                        bot=o.bot,
                        repeat=repeat,
                    )
                )
            changes.apply_clicks(session, events, self.clock.now())
