"""The audience benchmark (``python -m benchmarks.audiences``) at a tiny size: it
must keep working and verifying what it measures. Nothing here is timed."""

from __future__ import annotations

from benchmarks import audiences


def test_events_phase_runs_against_a_real_api_process():
    result = audiences.phase_events(1000)
    assert result["events"] == 1000
    assert result["events_verified"] is True


def test_publish_phase_enrolls_the_tagged_segment_minus_exits():
    result = audiences.phase_publish(500)
    assert result["publish_enrolled"] == 450  # every tenth contact carries the exit tag
    assert result["publish_verified"] is True
