"""Delivery statistics: how each SOP template and each of its touchpoints
performed — counts by status and reason, send rate, lateness percentiles, a time
series, breakdowns per channel instance and staff account, and exits.

Every figure is the sum of two disjoint parts:

* **settled** deliveries — finished, final, and already added to the rollup
  tables by ``scheduler.analytics.retention.roll_up`` (which also keeps them available after
  retention has archived the rows) — read from the rollups;
* **live** deliveries — the rest — aggregated from ``deliveries``. With the
  watermark ``(settled_max_id M, settled_before W)`` and the held-back ids H they
  are ``id > M``, ``id <= M AND due_at >= W`` and ``id IN H``, three index-driven
  reads whose size is the recent and pending part of the log, not its history.

Each part is read once: the live rows in one statement (one materialized CTE,
every breakdown a GROUP BY of it, joined by UNION ALL), the rollups in three
(per status and reason with their histograms, per hour, per account).

Lateness (``sent_at - due_at`` of sent deliveries) is counted in whole
milliseconds into buckets (``lateness_bucket``: 0.1 s wide below 10 s, 1 s below
10 min, 1 min below a day, 1 h beyond), so settled and live parts merge exactly;
percentiles are nearest-rank over the buckets and report a bucket's lower bound.
The mean and maximum are exact.

Time: the series is bucketed by due time, by UTC hour, shown in the workspace
zone. On settled deliveries a due range applies by whole hours (per-account
figures: whole days in the workspace zone), rounded outwards.

Where each part is decided: ``figures`` (the filter, result shapes, lateness
buckets and percentiles), ``settled`` (the watermark and the rollup read),
``live`` (the live read), ``report`` (``template_stats`` and ``overview``, which
add the parts up). The rollups are filled by ``scheduler.analytics.retention``.
"""

from scheduler.analytics.stats.figures import (
    AccountStats,
    ChannelStats,
    Counts,
    ExitCount,
    InvalidStatsQuery,
    Lateness,
    ReasonCount,
    SeriesPoint,
    StatsFilter,
    TemplateStats,
    TemplateSummary,
    TouchpointStats,
    hour_number,
    hour_start,
    lateness_bucket,
    lateness_bucket_sql,
    lateness_ms,
    percentile,
)
from scheduler.analytics.stats.live import sent_lateness_ms
from scheduler.analytics.stats.report import overview, template_stats
from scheduler.analytics.stats.settled import (
    ACCOUNT_ROLLUPS,
    HOLDS,
    ROLLUPS,
    STATE,
    Watermark,
    add_histograms,
    read_watermark,
)

__all__ = [
    "ACCOUNT_ROLLUPS",
    "HOLDS",
    "ROLLUPS",
    "STATE",
    "AccountStats",
    "ChannelStats",
    "Counts",
    "ExitCount",
    "InvalidStatsQuery",
    "Lateness",
    "ReasonCount",
    "SeriesPoint",
    "StatsFilter",
    "TemplateStats",
    "TemplateSummary",
    "TouchpointStats",
    "Watermark",
    "add_histograms",
    "hour_number",
    "hour_start",
    "lateness_bucket",
    "lateness_bucket_sql",
    "lateness_ms",
    "overview",
    "percentile",
    "read_watermark",
    "sent_lateness_ms",
    "template_stats",
]
