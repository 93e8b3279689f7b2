"""Regression guard for CI: the quick benchmarks, judged against the naive peer.

Absolute times say little on a shared or noisy CI machine; the ratio of sopbot
to the naive one-APScheduler-job-per-message peer measured in the same run
says much more, since both slow down together. This runs
``benchmarks.engine --quick`` (with the peer) and ``benchmarks.pages --quick``
and fails when

* a ratio falls below half of the figure the README's "Regression guard"
  table gives for it (``| `ratio_…` | what | 25× |`` rows), or
* any run's exactly-once verification fails.

The ratios of one quick run swing by up to 2× with what else the machine is
doing (the peer's thread pool suffers more from a busy machine than sopbot's
batches do, so load *raises* them, and an idle machine gives the lowest). So
the README's figures are the lowest seen on idle machines, and when a ratio
falls under its floor the engine run is repeated once and each ratio judged
on the better of the two runs: a real regression fails both, a noisy run
does not fail CI.

Run from the repository root::

    python -m benchmarks.guard --json

Exit status 0 when every check holds, 1 otherwise; the last line of stdout is
one JSON object with the ratios, the README's figures and the verdicts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\|\s*`(ratio_\w+)`\s*\|[^|]*\|\s*([\d,.]+)\s*×\s*\|")
TOLERANCE = 0.5  # fail below half of the README's ratio


def readme_ratios(text: str) -> dict[str, float]:
    """The guard's figures from the README: ``{ratio key: figure}``."""
    found = {}
    for line in text.splitlines():
        match = _ROW.match(line.strip())
        if match:
            found[match.group(1)] = float(match.group(2).replace(",", ""))
    return found


def judge(measured: dict[str, Any], expected: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each README ratio against the measured one: ok when at least half of it."""
    verdicts = {}
    for key, figure in expected.items():
        value = measured.get(key)
        ok = isinstance(value, int | float) and value >= figure * TOLERANCE
        verdicts[key] = {"measured": value, "readme": figure, "ok": bool(ok)}
    return verdicts


def _ratios(run: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in run.items()
        if k.startswith("ratio_") and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _log(msg: str) -> None:
    print(f"[guard] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--skip-pages", action="store_true", help="only the engine benchmark")
    args = parser.parse_args(argv)

    from benchmarks import engine, pages

    expected = readme_ratios(README.read_text(encoding="utf-8"))
    if not expected:
        _log("the README has no regression guard figures")
        return 1
    result: dict[str, Any] = {"benchmark": "guard", "readme": expected}
    runs = [engine.run(quick=True)]
    measured = _ratios(runs[0])
    if not all(v["ok"] for v in judge(measured, expected).values()):
        _log("a ratio is under its floor; running the engine benchmark once more")
        runs.append(engine.run(quick=True))
        second = _ratios(runs[1])
        measured = {k: max(measured.get(k, 0.0), second.get(k, 0.0)) for k in measured | second}
    result["engine"] = {
        "machine": [run["machine"] for run in runs],
        "runs": len(runs),
        "ratios": measured,
        "verified": all(run["verified"] for run in runs),
    }
    result["verdicts"] = judge(measured, expected)
    ok = result["engine"]["verified"] and all(v["ok"] for v in result["verdicts"].values())
    if not args.skip_pages:
        page_run = pages.run(quick=True)
        result["pages"] = {name: page_run[name] for name in pages.PAGES} | {
            "verified": page_run["verified"]
        }
        ok = ok and bool(page_run["verified"])
    for key, verdict in result["verdicts"].items():
        _log(
            f"{key}: {verdict['measured']} (README {verdict['readme']}×, "
            f"floor {verdict['readme'] * TOLERANCE:g}×) {'ok' if verdict['ok'] else 'REGRESSED'}"
        )
    result["ok"] = ok
    print(json.dumps(result, ensure_ascii=False) if args.json else json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
