"""The CI regression guard reads its figures from the README and fails a ratio
below half of them."""

from __future__ import annotations

from pathlib import Path

from benchmarks.guard import README, judge, readme_ratios

TABLE = """
| guard key | figure | quick run |
|---|---|---|
| `ratio_enroll` | enroll, sopbot / naive peer | 1,200× |
| `ratio_dispatch` | dispatch | 25.5× |
| not a guard row | 3× |
"""


def test_the_figures_are_read_from_the_table() -> None:
    assert readme_ratios(TABLE) == {"ratio_enroll": 1200.0, "ratio_dispatch": 25.5}


def test_a_ratio_below_half_of_the_readme_fails() -> None:
    verdicts = judge({"ratio_enroll": 601.0, "ratio_dispatch": 12.0}, readme_ratios(TABLE))
    assert verdicts["ratio_enroll"]["ok"] is True
    assert verdicts["ratio_dispatch"]["ok"] is False


def test_a_missing_measurement_fails() -> None:
    assert judge({}, {"ratio_burst_p99": 2.0})["ratio_burst_p99"]["ok"] is False


def test_the_readme_has_the_guard_figures() -> None:
    figures = readme_ratios(Path(README).read_text(encoding="utf-8"))
    assert {"ratio_enroll", "ratio_dispatch", "ratio_burst_p99"} <= figures.keys()
