"""Login throttling: after ``max_failures`` wrong passwords for one username, or
from one address, within ``window``, further attempts for it are refused
(without checking the password) until the oldest failure is ``window`` old.

Kept in this process's memory: a restart lifts the locks, and each API process
counts on its own (with N processes an attacker gets N times the attempts).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from datetime import datetime, timedelta
from threading import Lock

# Keys remembered at most (the least recently failed are forgotten first), so
# a flood of made-up usernames cannot grow the table without bound.
MAX_KEYS = 100_000


class LoginThrottle:
    def __init__(self, max_failures: int, window: timedelta) -> None:
        self.max_failures, self.window = max_failures, window
        self._failures: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._lock = Lock()

    @staticmethod
    def _keys(username: str, address: str | None) -> list[str]:
        keys = [f"user:{username.strip().casefold()}"]
        if address:
            keys.append(f"addr:{address}")
        return keys

    def _recent(self, key: str, now: datetime) -> deque[datetime]:
        times = self._failures.get(key, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            self._failures.pop(key, None)
        return times

    def wait(self, username: str, address: str | None, now: datetime) -> timedelta | None:
        """How long until an attempt for ``username`` from ``address`` is allowed
        again, or None when it is allowed now."""
        with self._lock:
            waits = [
                times[0] + self.window - now
                for key in self._keys(username, address)
                if len(times := self._recent(key, now)) >= self.max_failures
            ]
        return max(waits) if waits else None

    def failed(self, username: str, address: str | None, now: datetime) -> None:
        with self._lock:
            for key in self._keys(username, address):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times
                self._failures.move_to_end(key)
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, username: str) -> None:
        """A right password clears the username's count (not the address's: one
        valid account must not unlock guessing at the others)."""
        with self._lock:
            self._failures.pop(self._keys(username, None)[0], None)
