"""Regression guard for CI: the quick benchmarks, judged against the naive peer.

Absolute times say little on a shared or noisy CI machine; the ratio of sopbot
to the naive one-APScheduler-job-per-message peer measured in the same run
says much more, since both slow down together. This runs
``benchmarks.engine --quick`` (with the peer) and ``benchmarks.pages --quick``
and fails when

* a ratio falls below half of the figure the README's "Regression guard"
  table gives for it (``| `ratio_…` | what | 25× |`` rows), or
* any run's exactly-once verification fails.

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
    run = engine.run(quick=True)
    measured = {
        k: v for k, v in run.items() if k.startswith("ratio_") and k != "ratio_burst_p99_note"
    }
    result["engine"] = {
        "machine": run["machine"],
        "ratios": measured,
        "verified": run["verified"],
    }
    result["verdicts"] = judge(measured, expected)
    ok = bool(run["verified"]) and all(v["ok"] for v in result["verdicts"].values())
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
