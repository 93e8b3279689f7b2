"""The CSV import's progress bar: the import reports rows written chunk by
chunk under the page's progress id, and ``GET /contacts/import/progress``
answers how far it got (rows done of total) while and after it runs."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from auth_helpers import ui_login as login
from fastapi.testclient import TestClient

from api.app import create_app
from audiences import importer

JOIN = datetime(2027, 3, 2, 13, 30, tzinfo=UTC)


@pytest.fixture
def client(engine, clock, settings):
    clock.set(JOIN)
    with TestClient(create_app(settings, engine=engine, clock=clock, run_scheduler=False)) as c:
        yield c


def test_the_import_reports_rows_done_of_total_while_it_writes(client, engine, clock, monkeypatch):
    csrf = login(client, engine, clock)
    page = client.get("/contacts/import")
    progress_id = re.search(r'name="progress_id" value="([^"]+)"', page.text).group(1)
    assert 'id="import-bar"' in page.text and "已导入 {done} / {total} 行" in page.text
    assert client.get(f"/contacts/import/progress?id={progress_id}").json() == {
        "done": 0,
        "total": 0,
        "finished": False,
    }

    monkeypatch.setattr(importer, "IMPORT_CHUNK", 50)
    tracker = client.app.state.import_progress
    seen: list[tuple[int, int]] = []
    update = tracker.update

    def spy(import_id: str, done: int, total: int) -> None:
        update(import_id, done, total)
        # what a poll answers at that moment, from the running import
        seen.append((tracker.get(import_id).done, tracker.get(import_id).total))

    monkeypatch.setattr(tracker, "update", spy)
    rows = "".join(f"wm{i},客户{i},,,春季班\r\n" for i in range(200))
    csv = "外部联系人ID,姓名,员工账号,添加时间,标签\r\n" + rows
    done = client.post(
        "/contacts/import",
        data={
            "csrf_token": csrf,
            "mode": "import",
            "encoding": "utf-8",
            "progress_id": progress_id,
        },
        files={"file": ("客户.csv", csv.encode(), "text/csv")},
    )
    assert "已导入 200 个客户" in done.text
    assert seen == [(50, 200), (100, 200), (150, 200), (200, 200)]
    assert client.get(f"/contacts/import/progress?id={progress_id}").json() == {
        "done": 200,
        "total": 200,
        "finished": True,
    }
