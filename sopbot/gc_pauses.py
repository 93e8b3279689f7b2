"""Shorter garbage-collector pauses for long-running processes.

A full (generation 2) collection walks every tracked object. A started
``serve`` holds hundreds of thousands of them that live as long as the process
(modules, SQLAlchemy's metadata and statement caches, the compiled page
templates), and walking them took 65-135 ms every second or two while events
were posted: the slowest page probes were exactly those pauses. Moving what
exists once start-up is over into the permanent generation (``gc.freeze``)
leaves the collector only the objects made since.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect once, then exempt every object alive now from future full
    collections. Call when a process has started, never in tests: frozen
    objects are not freed by the collector if they later become garbage."""
    gc.collect()
    gc.freeze()
