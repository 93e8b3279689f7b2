"""The forecast panel of the editor and the outcome section of the report in a
real browser, at 1366 px and 390 px: loaded by htmx, in Chinese, no horizontal
overflow. Screenshots: ``test-output/screenshots/forecast-*.png``, ``outcomes-*.png``."""

from __future__ import annotations

from auth_helpers import PASSWORD, make_user
from browser_kit import no_horizontal_overflow, shot
from playwright import sync_api

from benchmarks import forecast as bench


def test_forecast_and_outcome_panels(live, page, engine, clock):
    expect = sync_api.expect
    make_user(engine, clock.now(), "wang", ["operator"])
    template_id = bench.seed(engine, 40)
    page.goto(f"{live.url}/login")
    page.fill("#username", "wang")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/")

    for width, height in ((1366, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"{live.url}/templates/{template_id}")
        expect(page.locator("#forecast-figures")).to_be_visible()
        expect(page.locator("#forecast-card")).to_contain_text("现在入组")
        expect(page.locator("#forecast-days")).to_be_visible()
        page.locator("#forecast-card").scroll_into_view_if_needed()
        assert no_horizontal_overflow(page), f"editor overflows at {width}px"
        shot(page, f"forecast-{width}")

        page.goto(f"{live.url}/report/{template_id}")
        if page.locator("#outcomes-card").count():
            expect(page.locator("#outcomes-card")).to_contain_text("转化与漏斗")
            assert no_horizontal_overflow(page), f"report overflows at {width}px"
            shot(page, f"outcomes-{width}")
