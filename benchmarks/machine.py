"""What a benchmark ran on: cores, CPU model, load, and a reference figure for
the speed of one core at the kind of work sopbot's hot paths do in Python.

Machines of the same size differ: two 2-core machines can run the same code
at rates 1.7x apart. Every benchmark prints ``python_reference_ms`` with its
figures, so that figures from different machines can be compared (a machine
twice as fast takes half of it).
"""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime
from pathlib import Path
from typing import Any


def _reference_work() -> int:
    """A fixed mix of what the export, render and enrol loops do: parse stored
    times, build f-strings, look up dicts, make tuples. Deterministic."""
    names = {i: f"联系人{i}" for i in range(1000)}
    parse = datetime.fromisoformat
    total = 0
    for i in range(30_000):
        stamp = f"2027-03-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}.{i:06d}"
        late = (parse(stamp) - parse(stamp[:17] + "00.000000")).total_seconds()
        line = f"{i},{names[i % 1000]},{stamp[:19]},{late:.3f},{(i, i % 7)!r}\r\n"
        total += len(line)
    return total


def python_reference_ms(repeat: int = 5) -> float:
    """Best wall-clock milliseconds of the reference work (lower is faster)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        _reference_work()
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """The machine, as every benchmark reports it."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "python_reference_ms": python_reference_ms(),
        "load_avg_start": round(os.getloadavg()[0], 2),
    }


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far, read from
    ``/proc`` (Linux; 0 for a process that is gone): a worker's, or a database
    backend's when the server runs on this machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
