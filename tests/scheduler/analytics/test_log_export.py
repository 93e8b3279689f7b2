"""CSV and NDJSON exports: Excel-ready UTF-8 with a BOM, round-tripping Chinese
names and commas, quotes and newlines; the same filters as the log; streamed in
constant memory."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import tracemalloc
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from analytics_world import CONTACT_NAMES, build_world
from sqlalchemy import insert, text

from scheduler.analytics import log
from scheduler.analytics.log import entries as log_entries
from scheduler.analytics.log import export as log_export
from scheduler.outbox.models import Delivery
from sop_templates.wording import reason_text

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2027, 3, 20, 4, 0, tzinfo=UTC)
TRICKY = '欢迎，"新朋友"！\n第二行, 带逗号\r\n第三行'


@pytest.fixture
def world(engine, clock):
    clock.set(NOW)
    world = build_world(engine, NOW)
    for i, contact in enumerate(world.contacts):
        world.add(
            contact,
            due_at=NOW - timedelta(hours=i + 1),
            late=timedelta(milliseconds=1500),
            rendered=[
                {"kind": "text", "text": TRICKY},
                {"kind": "link", "title": "问卷, 第1期", "url": "https://example.com/q?a=1,2"},
                {"kind": "image", "url": "https://example.com/m.png"},
            ],
        )
    world.add(
        world.contacts[0],
        status="failed",
        reason='HTTP 400: "bad", user',
        due_at=NOW - timedelta(days=1),
    )
    world.add(world.groups[0], status="scheduled", due_at=NOW + timedelta(hours=2))
    return world


def test_csv_round_trips_chinese_names_and_awkward_content(world, client):
    response = client.get(
        "/api/deliveries/export.csv", params={"template_id": world.friend_template}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="deliveries-20270320-120000.csv"' in response.headers["content-disposition"]
    assert response.content.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs for UTF-8
    table = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"), newline="")))
    header, rows = table[0], table[1:]
    assert header[:3] == ["发送任务ID", "SOP 模板", "模板ID"]
    assert "计划时间 (Asia/Shanghai)" in header
    col = {name: header.index(name) for name in header}
    assert len(rows) == 6  # the group's delivery is another template
    by_id = {int(r[col["发送任务ID"]]): r for r in rows}
    for row in world.rows:
        if row.template_id != world.friend_template:
            continue
        out = by_id[row.id]
        assert out[col["对象"]] == row.target.name  # 李四, "小李" / 王五\n第二行 survive
        assert out[col["SOP 模板"]] == "新好友 SOP"
        assert out[col["计划时间 (Asia/Shanghai)"]] == row.due_at.astimezone(SH).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        if row.status == "sent":
            assert out[col["状态"]] == "已发送" and out[col["延迟(秒)"]] == "1.500"
            assert out[col["内容"]] == (
                f"{TRICKY}\n[链接] 问卷, 第1期 https://example.com/q?a=1,2\n[图片] https://example.com/m.png"
            )
        else:
            assert out[col["状态"]] == "失败" and out[col["原因"]] == 'HTTP 400: "bad", user'
    assert sorted(r[col["对象"]] for r in rows if r[col["状态"]] == "已发送") == sorted(
        CONTACT_NAMES
    )


def test_csv_reasons_in_words_in_chinese_and_english(world, client):
    """The reasons of skipped and deferred deliveries through the one formatter
    (``sop_templates.wording``), the whole file in the caller's language."""
    quiet = (
        "quiet hours 22:00-08:00 (Asia/Shanghai): deferred from 2027-03-19 23:10 "
        "to 2027-03-20 08:00"
    )
    for reason in (quiet, "time already past when enrolled"):
        world.add(
            world.contacts[1], status="skipped", reason=reason, due_at=NOW - timedelta(hours=20)
        )
    params = {"template_id": world.friend_template, "status": "skipped"}
    zh = client.get("/api/deliveries/export.csv", params=params).content.decode("utf-8-sig")
    assert "免打扰时段顺延至 08:00" in zh and "加入时该时间已过，已跳过" in zh
    assert "quiet hours" not in zh and "already past" not in zh
    english = client.get(
        "/api/deliveries/export.csv", params=params, headers={"Accept-Language": "en"}
    ).content.decode("utf-8-sig")
    table = list(csv.reader(io.StringIO(english, newline="")))
    assert table[0][:3] == ["delivery id", "SOP template", "template id"]
    assert "deferred by quiet hours to 08:00" in english
    assert "the time had already passed at entry; skipped" in english
    for row in table[1:]:  # Chinese only in user data (template, contact, staff names)
        cells = row[:1] + row[2:7] + row[8:10] + row[11:]
        assert not re.search(r"[\u3400-\u9fff]", ",".join(cells)), row
    same = client.get("/api/deliveries/export.csv", params={**params, "lang": "en"})
    assert same.content.decode("utf-8-sig") == english


def test_ndjson_has_the_api_row_shape_and_the_same_filters(world, client):
    response = client.get(
        "/api/deliveries/export.ndjson", params={"status": "sent", "tag": "purchased"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    api = client.get("/api/deliveries", params={"status": "sent", "tag": "purchased"}).json()
    assert [x["id"] for x in lines] == [x["id"] for x in api] and len(lines) == 2
    assert lines[0]["rendered"][0]["text"] == TRICKY
    assert lines[0]["due_at"].endswith("Z") and lines[0] == {
        **api[0],
        "due_at": lines[0]["due_at"],
        "run_at": lines[0]["run_at"],
        "sent_at": lines[0]["sent_at"],
        "finished_at": lines[0]["finished_at"],
    }
    assert datetime.fromisoformat(lines[0]["due_at"]) == datetime.fromisoformat(api[0]["due_at"])


def _bulk(world, n: int, *, batch: int) -> None:
    """``n`` sent deliveries to one contact, written in one executemany."""
    contact = world.contacts[batch]
    base = NOW - timedelta(days=30 + batch)
    rows = [
        {
            "enrollment_id": contact.enrollment_id,
            "touchpoint_id": world.friend_touchpoints[0],
            "occurrence": 10_000 + i,
            "template_id": world.friend_template,
            "version_id": world.friend_version,
            "target_kind": "contact",
            "target_id": contact.id,
            "channel": "mock",
            "mode": "send",
            "due_at": base + timedelta(seconds=i),
            "run_at": base + timedelta(seconds=i),
            "expires_at": base + timedelta(seconds=i + 3600),
            "status": "sent",
            "attempts": 1,
            "created_at": base,
            "sent_at": base + timedelta(seconds=i, milliseconds=40),
            "finished_at": base + timedelta(seconds=i, milliseconds=40),
            "provider_message_id": f"mock-{batch}-{i}",
            "rendered": [{"kind": "text", "text": f"第 {i} 条消息，" + "内容" * 40}],
        }
        for i in range(n)
    ]
    with world.engine.begin() as conn:
        conn.execute(insert(Delivery.__table__), rows)  # type: ignore[attr-defined]


def _peak_export_bytes(world, kind: str) -> tuple[int, int]:
    """(rows exported, peak traced allocation while streaming them)."""
    flt = log.LogFilter(template_id=world.friend_template)
    body = (
        log.export_csv(world.engine, flt, SH)
        if kind == "csv"
        else log.export_ndjson(world.engine, flt)
    )
    tracemalloc.start()
    lines = 0
    try:
        for chunk in body:
            lines += chunk.count(b"\n")
        return lines, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["csv", "ndjson"])
def test_export_streams_in_constant_memory(world, kind, monkeypatch):
    # small batches, so that even the small export fills the read-ahead
    monkeypatch.setattr(log_export, "EXPORT_BATCH", 250)
    _bulk(world, 2_000, batch=1)
    small_rows, small_peak = _peak_export_bytes(world, kind)
    _bulk(world, 16_000, batch=2)
    big_rows, big_peak = _peak_export_bytes(world, kind)
    assert big_rows >= small_rows + 16_000
    # eight times the rows, not eight times the memory: a few batches at a time
    assert big_peak < small_peak * 1.5 + 512 * 1024, (small_peak, big_peak)


def _log_readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sopbot-log-reader" and t.is_alive()]


def test_an_export_stopped_early_returns_its_connection(world, monkeypatch):
    # a client that hangs up after the first chunks (on a server database the
    # read-ahead thread ends too)
    monkeypatch.setattr(log_export, "EXPORT_BATCH", 100)
    _bulk(world, 2_000, batch=1)
    body = log.export_csv(world.engine, log.LogFilter(template_id=world.friend_template), SH)
    next(body)
    next(body)
    body.close()
    assert not _log_readers()
    assert world.engine.pool.checkedout() == 0


def test_a_failed_read_during_an_export_reaches_its_reader(world, monkeypatch):
    monkeypatch.setattr(log_export, "EXPORT_BATCH", 100)
    _bulk(world, 1_000, batch=1)
    prepare = log_entries.Labels.prepare
    calls = []

    def failing(self, rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise RuntimeError("connection lost")
        return prepare(self, rows)

    monkeypatch.setattr(log_entries.Labels, "prepare", failing)
    body = log.export_ndjson(world.engine, log.LogFilter(template_id=world.friend_template))
    with pytest.raises(RuntimeError, match="connection lost"):
        for _ in body:
            pass
    assert not _log_readers()
    assert world.engine.pool.checkedout() == 0


def _source(n: int, closed: list[bool], fail_at: int | None = None):
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"bad item {i}")
            yield i
    finally:
        closed.append(True)


def test_read_ahead_keeps_order_and_closes_its_source():
    closed: list[bool] = []
    assert list(log_export.read_ahead(lambda: _source(1_000, closed), 2)) == list(range(1_000))
    assert closed == [True]
    assert not _log_readers()


def test_read_ahead_stopped_early_stops_its_thread_and_closes_its_source():
    closed: list[bool] = []
    items = log_export.read_ahead(lambda: _source(10**9, closed), 2)
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert _log_readers()
    items.close()
    assert not _log_readers()
    assert closed == [True]


def test_read_ahead_raises_the_sources_error_in_the_reader():
    closed: list[bool] = []
    got = []
    with pytest.raises(ValueError, match="bad item 7"):
        for item in log_export.read_ahead(lambda: _source(100, closed, fail_at=7), 2):
            got.append(item)
    assert got == list(range(7))
    assert closed == [True]
    assert not _log_readers()


# -- the exports write what the log entries say ------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        ["plain", "", "with space", " lead", "trail "],
        ["a,b", 'say "hi"', "line\nbreak", "cr\rreturn", "crlf\r\n", '",\n'],
        ["客户，全角逗号", "Zoë", "tab\there", "'single'", "=1+1", '""'],
    ],
)
def test_csv_lines_are_what_csv_writer_writes(fields):
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_as_text(f) for f in fields])
    assert log.csv_line(fields) == buffer.getvalue()


def _as_text(cell: object) -> object:
    """A text cell as an export must write it: one a spreadsheet would run as a
    formula gets a leading apostrophe."""
    if isinstance(cell, str) and cell and cell[0] in "=+-@\t\r":
        return "'" + cell
    return cell


CALC = "=cmd|' /C calc'!A0"


def test_csv_export_does_not_hand_a_spreadsheet_formulas(world, client):
    """A contact, a staff account, a touchpoint and a failure reason crafted to
    run as formulas when the export is opened in Excel reach it as text."""
    contact = world.contacts[0]
    hostile = {
        ("contacts", contact.id, "name"): CALC,
        ("contacts", contact.id, "external_id"): "+1-555-0100",
        ("accounts", contact.account_id, "name"): "@SUM(1+1)*cmd|' /C calc'!A0",
        ("touchpoints", world.friend_touchpoints[0], "name"): "-2+3+cmd|' /C calc'!A0",
    }
    with world.engine.begin() as conn:
        for (table, row_id, column), value in hostile.items():
            conn.execute(
                text(f"UPDATE {table} SET {column} = :value WHERE id = :id"),
                {"value": value, "id": row_id},
            )
    world.add(
        contact,
        status="failed",
        reason='\t=HYPERLINK("http://evil.example")',
        due_at=NOW - timedelta(hours=7),
        rendered=[{"kind": "text", "text": "\r=1+1"}],
    )
    response = client.get("/api/deliveries/export.csv", params={"contact_id": contact.id})
    assert response.status_code == 200
    table = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"), newline="")))
    header, rows = table[0], table[1:]
    cells = {cell for row in rows for cell in row}
    assert "'" + CALC in cells
    assert "'+1-555-0100" in cells
    assert "'@SUM(1+1)*cmd|' /C calc'!A0" in cells
    assert "'-2+3+cmd|' /C calc'!A0" in cells
    assert '\'\t=HYPERLINK("http://evil.example")' in cells
    assert "'\r=1+1" in cells
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert len(rows) >= 2 and all(len(row) == len(header) for row in rows)


def _entries_csv(entries: list[log.LogEntry], zone: ZoneInfo) -> bytes:
    """The CSV an export should write for these entries, by ``csv.writer``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(log.csv_header(str(zone)))

    def local(value: datetime | None) -> str:
        return "" if value is None else value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")

    for e in entries:
        lateness = e.lateness_seconds
        writer.writerow(
            [
                _as_text(cell)
                for cell in (
                    e.id,
                    e.template_name or "",
                    e.template_id,
                    e.version or "",
                    e.touchpoint_name or "",
                    e.touchpoint_id,
                    log.TARGET_ZH.get(e.target_kind, e.target_kind),
                    e.target_name or "",
                    e.target_id,
                    e.target_external_id or "",
                    e.account_name or "",
                    e.channel,
                    log.MODE_ZH.get(e.mode, e.mode),
                    log.STATUS_ZH.get(e.status, e.status),
                    reason_text(e.reason),
                    local(e.due_at),
                    local(e.sent_at),
                    local(e.finished_at),
                    "" if lateness is None else f"{lateness:.3f}",
                    e.attempts,
                    e.provider_message_id or "",
                    log.content_text(e.rendered),
                    e.clicks,
                    local(e.first_clicked_at),
                    local(e.converted_at),
                )
            ]
        )
    return ("\ufeff" + buffer.getvalue()).encode()


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "Asia/Kolkata", "America/New_York"])
def test_exports_write_the_log_entries_across_batches(world, monkeypatch, zone):
    """Byte for byte what the entries give (``LogEntry.as_json`` for NDJSON, the
    columns through ``csv.writer`` for CSV) with batches of three rows and a
    target memory of two, so names come from lookups and from memory alike.
    Sub-millisecond, zero and tiny lateness; times with and without a fraction;
    a target that no longer exists."""
    contact, group = world.contacts[1], world.groups[0]
    world.add(contact, due_at=NOW - timedelta(hours=30), late=timedelta(microseconds=50))
    world.add(contact, due_at=NOW - timedelta(hours=31), late=timedelta(0))
    world.add(contact, due_at=NOW - timedelta(hours=32, microseconds=7), late=timedelta(days=2))
    world.add(group, status="skipped", reason='cap, "daily"', due_at=NOW - timedelta(hours=3))
    ghost = world.add(world.contacts[2], due_at=NOW - timedelta(hours=33))
    with world.engine.begin() as conn:
        conn.execute(
            Delivery.__table__.update()  # type: ignore[attr-defined]
            .where(Delivery.__table__.c.id == ghost.id)  # type: ignore[attr-defined]
            .values(target_id=10**9)
        )
    monkeypatch.setattr(log_export, "EXPORT_BATCH", 3)
    monkeypatch.setattr(log_entries, "TARGET_MEMORY", 2)
    tz = ZoneInfo(zone)
    for flt in (log.LogFilter(), log.LogFilter(statuses=("sent",))):
        for sort, order in (("due_at", "desc"), ("sent_at", "asc")):
            entries = [
                e
                for batch in log.iter_entries(world.engine, flt, sort=sort, order=order)
                for e in batch
            ]
            assert len(entries) >= 5 and any(e.target_name is None for e in entries)
            ndjson = b"".join(log.export_ndjson(world.engine, flt, sort=sort, order=order))
            assert (
                ndjson
                == "".join(
                    json.dumps(e.as_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
                    for e in entries
                ).encode()
            )
            exported = b"".join(log.export_csv(world.engine, flt, tz, sort=sort, order=order))
            assert exported == _entries_csv(entries, tz)
