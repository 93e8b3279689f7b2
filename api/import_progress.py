"""How far a CSV import from the UI has got, for its progress bar: rows written
of rows in the file, reported by the import's chunks (``audiences.importer``)
and read by the page's polling (``GET /contacts/import/progress``).

Kept in the memory of the process running the import: behind several API
processes the page's polls must reach the same one (sticky sessions), else
the bar waits and the result still arrives with the import's answer."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

KEEP = 200  # imports remembered at most (the oldest are forgotten)


@dataclass
class Progress:
    done: int = 0
    total: int = 0
    finished: bool = False
    started: float = 0.0

    def as_dict(self) -> dict[str, int | bool]:
        return {"done": self.done, "total": self.total, "finished": self.finished}


class ImportProgress:
    """Thread-safe: the import runs in a worker thread, polls on the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._imports: dict[str, Progress] = {}

    def start(self, import_id: str) -> None:
        with self._lock:
            self._imports[import_id] = Progress(started=time.monotonic())
            if len(self._imports) > KEEP:
                oldest = min(self._imports, key=lambda k: self._imports[k].started)
                self._imports.pop(oldest, None)

    def update(self, import_id: str, done: int, total: int) -> None:
        with self._lock:
            entry = self._imports.setdefault(import_id, Progress(started=time.monotonic()))
            entry.done, entry.total = done, total

    def finish(self, import_id: str) -> None:
        with self._lock:
            entry = self._imports.get(import_id)
            if entry is not None:
                entry.finished = True

    def get(self, import_id: str) -> Progress:
        with self._lock:
            entry = self._imports.get(import_id)
            return Progress(entry.done, entry.total, entry.finished) if entry else Progress()
