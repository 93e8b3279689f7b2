"""The forecast panel of the editor and the outcome section of the report, in
Chinese, for a signed-in operator."""

from __future__ import annotations

import re

import pytest
from auth_helpers import make_user
from fastapi.testclient import TestClient

from api.app import create_app
from benchmarks import forecast as bench


@pytest.fixture
def ui(engine, clock, settings):
    clock.set(bench.NOW)
    with TestClient(create_app(settings, engine=engine, clock=clock, run_scheduler=False)) as c:
        make_user(engine, clock.now(), "wang", ["operator"])
        page = c.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        c.post(
            "/login", data={"username": "wang", "password": "test-password", "csrf_token": token}
        )
        yield c


def test_editor_loads_the_forecast_panel_in_chinese(ui, engine):
    template_id = bench.seed(engine, 30)
    editor = ui.get(f"/templates/{template_id}")
    assert f'hx-get="/templates/{template_id}/forecast"' in editor.text
    panel = ui.get(f"/templates/{template_id}/forecast")
    assert panel.status_code == 200
    assert "发布前预测" in panel.text and "现在入组" in panel.text
    assert "对照组（不发送）" in panel.text and "每日发送量" in panel.text
    assert "Forecast" not in panel.text and "held out" not in panel.text


def test_report_loads_the_outcome_section_in_chinese(ui, engine):
    template_id = bench.seed(engine, 10)
    report = ui.get(f"/report/{template_id}")
    assert f'hx-get="/report/{template_id}/outcomes"' in report.text
    panel = ui.get(f"/report/{template_id}/outcomes")
    assert panel.status_code == 200
    assert "转化与漏斗" in panel.text and "下载漏斗数据" in panel.text
    assert ui.get("/report/999/outcomes").status_code == 404
