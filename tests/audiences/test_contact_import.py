"""Importing contacts from CSV: the CLI and the upload, UTF-8 with or without BOM,
Chinese names and headers, per-row errors, all or nothing, dry runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from audience_helpers import create_and_publish, enrollments, register_account, snapshot
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app as cli
from audiences import importer
from audiences.models import Account, Contact
from audiences.service import tags_of
from sopbot.db import create_all, make_engine, session_scope

GOOD = (
    "external_id,姓名,员工账号,添加时间,标签,城市,child_age:number\n"
    "wm001,张三,staff_1,2027-03-01 21:30,spring-class-2027|vip,上海,3\n"
    'wm002,"李四, Jr.",staff_1,2027/3/2,vip,杭州,\n'
    "wm003,王五,,2027-03-01T08:00:00+00:00,,北京,5\n"
)


def rows_of(engine):
    with session_scope(engine) as session:
        contacts = session.execute(select(Contact).order_by(Contact.id)).scalars().all()
        tags = tags_of(session, "contact", [c.id for c in contacts])
        return [(c.external_id, c.name, c.attributes, sorted(tags[c.id])) for c in contacts]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["utf8", "utf8-bom"])
def test_parse_reads_chinese_with_or_without_bom(bom):
    parsed = importer.parse_csv(bom + GOOD.encode("utf-8"), timezone="Asia/Shanghai")
    assert parsed.errors == []
    first, second, third = parsed.rows
    assert (first.external_id, first.name, first.account) == ("wm001", "张三", "staff_1")
    assert first.joined_at == datetime(2027, 3, 1, 13, 30, tzinfo=UTC)  # 21:30 in Shanghai
    assert first.tags == ["spring-class-2027", "vip"]
    assert first.attributes == {"城市": "上海", "child_age": 3}
    assert second.name == "李四, Jr." and second.joined_at == datetime(
        2027, 3, 1, 16, 0, tzinfo=UTC
    )
    assert second.attributes == {"城市": "杭州"}  # an empty cell sets nothing
    assert third.account is None and third.joined_at == datetime(2027, 3, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("content", "errors"),
    [
        ("name\n张三\n", [(1, "external_id", "missing column")]),
        ("external_id,name\n,张三\n", [(2, "external_id", "empty; required")]),
        ("external_id,添加时间\nwm1,tomorrow\n", [(2, "添加时间", "not a date-time")]),
        ("external_id,添加时间\nwm1,2027-02-30\n", [(2, "添加时间", "not a valid date")]),
        ("external_id,age:number\nwm1,three\n", [(2, "age:number", "not a number")]),
        ("external_id,vip:bool\nwm1,maybe\n", [(2, "vip:bool", "not true/false")]),
        ("external_id,vip:date\nwm1,x\n", [(1, "vip:date", "unknown attribute type")]),
        ("external_id,status\nwm1,gone\n", [(2, "status", "unknown status")]),
        ("external_id,timezone\nwm1,Mars/Base\n", [(2, "timezone", "unknown time zone")]),
        ("external_id,name\nwm1,a,b\n", [(2, "file", "3 values but the header has 2")]),
        ("external_id\nwm1\nwm2\nwm1\n", [(4, "external_id", "first on line 2")]),
        ('external_id,name\nwm1,"multi\nline"\nwm2,"\n', [(4, "file", "unreadable CSV")]),
        ("", [(1, "file", "empty")]),
    ],
)
def test_parse_reports_line_field_and_reason(content, errors):
    parsed = importer.parse_csv(content.encode("utf-8"))
    got = [(e.line, e.field, e.reason) for e in parsed.errors]
    assert [(line, field) for line, field, _ in got] == [(line, f) for line, f, _ in errors]
    for (_, _, reason), (_, _, expected) in zip(got, errors, strict=True):
        assert expected in reason


def test_a_file_in_gbk_is_refused_with_the_line():
    data = "external_id,name\nwm1,abc\nwm2,张三\n".encode("gbk")
    parsed = importer.parse_csv(data)
    assert [(e.line, e.field) for e in parsed.errors] == [(3, "file")]
    assert "CSV UTF-8" in parsed.errors[0].reason
    assert importer.parse_csv(data, encoding="gb18030").rows[1].name == "张三"


@pytest.fixture
def cli_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'import.db'}"
    monkeypatch.setenv("SOPBOT_DATABASE_URL", url)
    engine = make_engine(url)
    create_all(engine)
    register_account(engine, "staff_1")
    yield engine
    engine.dispose()


def write(tmp_path, text, bom=True):
    path = tmp_path / "contacts.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


runner = CliRunner()


def test_cli_imports_and_tags_start_tagged_sops(tmp_path, cli_db):
    spec = {
        "name": "春季班",
        "target": "contact",
        "anchor": "tag",
        "anchor_tag": "spring-class-2027",
        "segment": {"tags": "spring-class-2027"},
        "touchpoints": [{"name": "a", "timing": "day 1 20:00", "content": "hi"}],
    }
    create_and_publish(cli_db, spec, datetime(2027, 1, 1, tzinfo=UTC))
    result = runner.invoke(cli, ["import", "contacts", str(write(tmp_path, GOOD))])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["imported"], summary["created"], summary["enrolled"]) == (3, 3, 1)
    assert rows_of(cli_db)[0] == ("wm001", "张三", {"城市": "上海", "child_age": 3}, ["spring-class-2027", "vip"])  # fmt: skip
    assert [e.target_id for e in enrollments(cli_db)] == [1]

    # importing the same file again updates in place and enrolls nobody twice
    again = json.loads(
        runner.invoke(cli, ["import", "contacts", str(write(tmp_path, GOOD))]).stdout
    )
    assert (again["created"], again["enrolled"]) == (0, 0)
    assert len(rows_of(cli_db)) == 3


def test_cli_is_all_or_nothing_unless_partial_is_allowed(tmp_path, cli_db):
    bad = GOOD + "wm004,赵六,staff_9,2027-03-01,,,\nwm005,陈七,,someday,,,\n"
    path = write(tmp_path, bad, bom=False)
    before = snapshot(cli_db)
    result = runner.invoke(cli, ["import", "contacts", str(path)])
    assert result.exit_code == 1
    assert "line 5: 员工账号: unknown account 'staff_9'" in result.stderr
    assert "line 6: 添加时间:" in result.stderr
    assert json.loads(result.stdout)["imported"] == 0
    assert snapshot(cli_db) == before

    dry = runner.invoke(cli, ["import", "contacts", str(path), "--dry-run", "--allow-partial"])
    assert json.loads(dry.stdout)["imported"] == 3 and json.loads(dry.stdout)["dry_run"] is True
    assert snapshot(cli_db) == before

    partial = runner.invoke(cli, ["import", "contacts", str(path), "--allow-partial"])
    assert partial.exit_code == 0
    assert [r[0] for r in rows_of(cli_db)] == ["wm001", "wm002", "wm003"]

    created = runner.invoke(cli, ["import", "contacts", str(path), "--allow-partial", "--create-accounts"])  # fmt: skip
    assert json.loads(created.stdout)["accounts_created"] == ["staff_9"]
    with session_scope(cli_db) as session:
        assert "staff_9" in session.execute(select(Account.external_id)).scalars().all()
    assert [r[0] for r in rows_of(cli_db)] == ["wm001", "wm002", "wm003", "wm004"]


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    register_account(engine, "staff_1")
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def test_upload_imports_and_reports_rows(client, engine):
    files = {"file": ("contacts.csv", b"\xef\xbb\xbf" + GOOD.encode(), "text/csv")}
    dry = client.post("/api/contacts/import", files=files, params={"dry_run": True})
    assert dry.status_code == 200 and dry.json()["imported"] == 3 and dry.json()["applied"] is False
    assert rows_of(engine) == []

    done = client.post("/api/contacts/import", files=files)
    assert done.status_code == 200 and done.json()["applied"] is True
    assert [r[1] for r in rows_of(engine)] == ["张三", "李四, Jr.", "王五"]

    bad = {"file": ("bad.csv", (GOOD + "wm9,x,staff_1,bad-date,,,\n").encode(), "text/csv")}
    before = snapshot(engine)
    response = client.post("/api/contacts/import", files=bad)
    assert response.status_code == 422
    assert response.json()["detail"]["errors"] == [
        {"line": 5, "field": "添加时间", "reason": response.json()["detail"]["errors"][0]["reason"]}
    ]
    assert "bad-date" in response.json()["detail"]["errors"][0]["reason"]
    assert response.json()["detail"]["message"] == (
        "1 of 4 rows have errors; nothing was imported (allow_partial=true imports the good rows)"
    )
    assert snapshot(engine) == before


def test_upload_takes_the_encoding_like_the_cli(client, engine, tmp_path, cli_db):
    gbk = GOOD.encode("gbk")  # what Excel on Chinese Windows saves as "CSV"
    refused = client.post("/api/contacts/import", files={"file": ("c.csv", gbk, "text/csv")})
    assert refused.status_code == 422 and "not valid utf-8" in refused.text

    upload = client.post(
        "/api/contacts/import",
        files={"file": ("c.csv", gbk, "text/csv")},
        params={"encoding": "gbk"},
    )
    assert upload.status_code == 200, upload.text
    assert [r[1] for r in rows_of(engine)] == ["张三", "李四, Jr.", "王五"]

    path = tmp_path / "gbk.csv"
    path.write_bytes(gbk)
    cli_run = runner.invoke(cli, ["import", "contacts", str(path), "--encoding", "gbk"])
    assert cli_run.exit_code == 0, cli_run.output
    from_cli = json.loads(cli_run.stdout)
    from_upload = upload.json()
    assert from_upload.pop("errors") == [] and from_cli.pop("error_count") == 0
    assert from_upload == from_cli


@pytest.mark.parametrize(
    "data",
    [GOOD.encode("gbk"), GOOD.encode("gb18030"), GOOD.encode(), b"\xef\xbb\xbf" + GOOD.encode()],
    ids=["gbk", "gb18030", "utf-8", "utf-8 with BOM"],
)
def test_auto_encoding_tells_utf8_from_gbk(client, engine, data):
    upload = client.post(
        "/api/contacts/import",
        files={"file": ("c.csv", data, "text/csv")},
        params={"encoding": "auto"},
    )
    assert upload.status_code == 200, upload.text
    assert [r[1] for r in rows_of(engine)] == ["张三", "李四, Jr.", "王五"]
