"""Build a large, realistic delivery log fast, with set-based SQL only.

Used by ``benchmarks.log``. Layout (defaults for 2,000,000 deliveries):

* 50 staff accounts, 200,000 contacts (``客户<n>``, account ``n % 50``), 20 tags, two tags
  per contact;
* 10 published templates of 4 touchpoints each (``+0``, ``+3h``, ``+30h``, ``+54h``),
  three channel instances;
* ``rows / 4`` enrollments spread evenly over 58 days and interleaved across the
  templates (as they arrive in real life), each with its 4 deliveries — so rows are
  clustered by creation time, not by template;
* deliveries due before ``NOW`` finished: ~90 % sent (lateness 0–3 s, a few up to
  ~17 min), the rest failed / skipped / missed / cancelled / unknown with a reason;
  the ones due later are scheduled.

SQLite gets a recursive CTE, PostgreSQL ``generate_series``; timestamps on SQLite are
written in exactly the text format ``UTCDateTime`` stores, so comparisons in SQL and
keyset cursors see the same values as rows written by the application.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine

from channels.registry import ensure_instance
from sop_templates import service as templates_service
from sopbot.db import is_sqlite, session_scope

START = datetime(2027, 3, 1, 0, 0, tzinfo=UTC)
NOW = datetime(2027, 4, 28, 0, 0, tzinfo=UTC)  # a few days of scheduled rows remain
SPAN_SECONDS = 58 * 86400
TEMPLATES = 10
TOUCHPOINTS = [("welcome", "+0m"), ("coupon", "+3h"), ("reminder", "+30h"), ("follow-up", "+54h")]
OFFSETS_S = [0, 3 * 3600, 30 * 3600, 54 * 3600]
ACCOUNTS = 50
TAGS = 20
CHANNELS = ("mock", "wecom-corp-a", "webhook-b")


def build(engine: Engine, rows: int) -> dict[str, int]:
    """Fill an empty database with about ``rows`` deliveries; return the counts."""
    enrollments = max(1, rows // len(TOUCHPOINTS))
    contacts = max(1000, min(200_000, enrollments))
    template_ids = _templates(engine)
    sqlite = is_sqlite(engine)
    series = (
        "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n + 1 < :count) "
        if sqlite
        else ""
    )
    from_series = "FROM s" if sqlite else "FROM generate_series(0, :count - 1) AS s(n)"
    start_epoch = int(START.timestamp())

    def js(sql: str) -> str:
        return sql if sqlite else f"CAST({sql} AS json)"

    empty_json = js("'{}'")

    def ts(seconds_sql: str) -> str:
        # seconds after START (may be fractional) → the column's stored form
        if sqlite:
            return (
                f"strftime('%Y-%m-%d %H:%M:%S', {start_epoch} + CAST({seconds_sql} AS INTEGER), "
                f"'unixepoch') || printf('.%06d', CAST((({seconds_sql}) - CAST({seconds_sql} AS "
                "INTEGER)) * 1000000 AS INTEGER))"
            )
        return f"to_timestamp({start_epoch} + ({seconds_sql}))"

    with engine.begin() as conn:
        conn.execute(
            text(
                f"{series}INSERT INTO accounts (external_id, name, channel) "
                f"SELECT 'staff_' || n, '客服' || n, 'mock' {from_series}"
            ),
            {"count": ACCOUNTS},
        )
        conn.execute(
            text(
                f"{series}INSERT INTO tags (name, group_name) "
                f"SELECT 'tag-' || n, '兴趣' {from_series}"
            ),
            {"count": TAGS},
        )
        conn.execute(
            text(
                f"{series}INSERT INTO contacts (external_id, account_id, name, joined_at, status, "
                f"attributes) SELECT 'wm_' || n, n % {ACCOUNTS} + 1, '客户' || n, {ts('0')}, "
                f"'active', {empty_json} {from_series}"
            ),
            {"count": contacts},
        )
        for shift in (0, 7):
            conn.execute(
                text(
                    f"{series}INSERT INTO tag_assignments (tag_id, target_kind, target_id, "
                    f"tagged_at) SELECT (n * 3 + {shift}) % {TAGS} + 1, 'contact', n + 1, "
                    f"{ts('0')} {from_series}"
                ),
                {"count": contacts},
            )
    # Enrollment e: template e % T (interleaved), the k-th of its template with
    # k = e / T; contact (k * 13 + t * 1000) % C is unique per template (13 ∤ C).
    tmpl_case = " ".join(f"WHEN {i} THEN {tid}" for i, tid in enumerate(template_ids))
    with engine.begin() as conn:
        conn.execute(
            text(
                f"{series}INSERT INTO enrollments (template_id, version_id, target_kind, "
                "target_id, cycle, anchor_at, enrolled_at, status) "
                f"SELECT t.id, t.current_version_id, 'contact', "
                f"((n / {TEMPLATES}) * 13 + t.id * 1000) % {contacts} + 1, 0, "
                f"{ts(f'n * {SPAN_SECONDS}.0 / :count')}, {ts(f'n * {SPAN_SECONDS}.0 / :count')}, "
                f"'active' {from_series} JOIN sop_templates t ON t.id = "
                f"CASE n % {TEMPLATES} {tmpl_case} END ORDER BY n"
            ),
            {"count": enrollments},
        )
    now_s = (NOW - START).total_seconds()
    offset_case = " ".join(f"WHEN {i} THEN {o}" for i, o in enumerate(OFFSETS_S))
    due_s = (
        f"CAST(e.id - 1 AS BIGINT) * {SPAN_SECONDS} / {enrollments} "
        f"+ CASE tp.position {offset_case} END"
    )
    h = "((e.id * 31 + tp.position * 17) % 100)"
    late_s = (
        "(CASE WHEN (e.id * 7 + tp.position) % 997 = 0 THEN 1000.0 "
        "ELSE ((e.id * 7 + tp.position) % 1000) * 0.003 END)"
    )
    status = (
        f"CASE WHEN {due_s} >= {now_s} THEN 'scheduled' WHEN {h} < 90 THEN 'sent' "
        f"WHEN {h} < 93 THEN 'failed' WHEN {h} < 96 THEN 'skipped' WHEN {h} < 98 THEN 'missed' "
        f"WHEN {h} < 99 THEN 'cancelled' ELSE 'unknown' END"
    )
    reason = (
        f"CASE WHEN {due_s} >= {now_s} THEN NULL WHEN {h} < 90 THEN NULL "
        f"WHEN {h} < 92 THEN 'channel mock returned 400: invalid external user' "
        f"WHEN {h} < 93 THEN 'gave up: retries ran past the grace period' "
        f"WHEN {h} < 96 THEN 'frequency cap: 1 per day' "
        f"WHEN {h} < 98 THEN 'not sent within its grace period (scheduler down or backlog)' "
        f"WHEN {h} < 99 THEN 'contact deleted' "
        "ELSE 'worker stopped while sending (lease expired); outcome unknown, not resent' END"
    )
    sent = f"{due_s} < {now_s} AND {h} < 90"
    finished = f"{due_s} < {now_s}"
    channel_case = " ".join(f"WHEN {i} THEN '{c}'" for i, c in enumerate(CHANNELS))
    rendered = (
        '\'[{"kind": "text", "text": "\' || c.name || \'，\' || tp.name || '
        '\'，点击领取今天的福利"}, {"kind": "link", "title": "问卷", '
        '"url": "https://example.com/q?c=\' || c.id || \'", "description": null, '
        '"image_url": null}]\''
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO deliveries (enrollment_id, touchpoint_id, occurrence, template_id, "
                "version_id, target_kind, target_id, channel, mode, due_at, run_at, expires_at, "
                "status, reason, attempts, created_at, sent_at, finished_at, "
                "provider_message_id, rendered) "
                "SELECT e.id, tp.id, 0, e.template_id, e.version_id, 'contact', e.target_id, "
                f"CASE e.template_id % {len(CHANNELS)} {channel_case} END, 'send', "
                f"{ts(due_s)}, {ts(due_s)}, {ts(due_s + ' + 3600')}, {status}, {reason}, "
                f"CASE WHEN {h} < 93 AND {finished} THEN 1 ELSE 0 END, {ts('(e.id - 1) * 1.0')}, "
                f"CASE WHEN {sent} THEN {ts(due_s + ' + ' + late_s)} END, "
                f"CASE WHEN {sent} THEN {ts(due_s + ' + ' + late_s)} "
                f"WHEN {finished} THEN {ts(due_s + ' + 1')} END, "
                f"CASE WHEN {sent} THEN 'mock-' || e.id || '-' || tp.position END, "
                f"CASE WHEN {sent} THEN {js(rendered)} END "
                "FROM enrollments e JOIN touchpoints tp ON tp.version_id = e.version_id "
                "JOIN contacts c ON c.id = e.target_id ORDER BY e.id, tp.position"
            )
        )
    with engine.connect() as conn:
        total = conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one()
    if not sqlite:
        # What autovacuum has long done to tables that filled over weeks: planner
        # statistics, and the visibility map that lets index-only scans skip the heap.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    return {
        "deliveries": int(total),
        "enrollments": enrollments,
        "contacts": contacts,
        "templates": len(template_ids),
    }


def _templates(engine: Engine) -> list[int]:
    ids = []
    with session_scope(engine) as session:
        for channel in CHANNELS:
            ensure_instance(session, channel, "mock")
    for i in range(TEMPLATES):
        spec = {
            "name": f"新好友 SOP {i + 1}",
            "target": "contact",
            "timezone": "Asia/Shanghai",
            "anchor": "join",
            "channel": CHANNELS[(i + 1) % len(CHANNELS)],
            "touchpoints": [
                {"name": name, "timing": timing, "content": [f"{{{{ contact.name }}}}，{name}"]}
                for name, timing in TOUCHPOINTS
            ],
        }
        with session_scope(engine) as session:
            template = templates_service.create_template(session, spec, START - timedelta(days=1))
            templates_service.freeze_draft(session, template.id, START - timedelta(days=1))  # type: ignore[arg-type]
            ids.append(template.id)
    return ids  # type: ignore[return-value]
