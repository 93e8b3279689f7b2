"""Material files leave sopbot with signed, expiring public addresses: a webhook
receiver gets an image address it can fetch without a login, the staff inbox
shows the library's image, and an unsigned, changed or expired address is
refused."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from auth_helpers import PASSWORD, make_user
from factories import add_contact, enroll, new_friend_spec, publish
from fastapi.testclient import TestClient
from staff_world import T0, FakeWeCom, add_wecom, build, remind_spec
from test_materials import png

from api.app import create_app
from channels.registry import ensure_instance
from scheduler.runtime import SchedulerRuntime
from sop_templates import materials
from sopbot.db import session_scope

BASE = "https://sop.example.com"


@pytest.fixture
def app(engine, clock, settings, tmp_path):
    settings.materials_dir = str(tmp_path / "materials")
    settings.public_url = BASE + "/"
    settings.render_budget_ms = 10_000  # a shared, busy machine must not fail a render
    return create_app(settings, engine=engine, clock=clock, run_scheduler=False)


def upload_image(app, engine, clock) -> tuple[str, bytes]:
    """An operator uploads 菜单.png; its library address (``/materials/<id>/<name>``)."""
    make_user(engine, clock.now(), "wang", ["admin"])
    image = png(3, 3)
    with TestClient(app) as ui:
        csrf = re.compile(r'name="csrf_token" value="([^"]+)"')
        token = csrf.search(ui.get("/login").text).group(1)
        ui.post("/login", data={"username": "wang", "password": PASSWORD, "csrf_token": token})
        token = csrf.search(ui.get("/materials").text).group(1)
        answer = ui.post(
            "/materials/upload",
            data={"csrf_token": token},
            files={"file": ("菜单.png", image, "image/png")},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
    with session_scope(engine) as session:
        (material,) = materials.list_materials(session, "image")
        return material.url, image


def local_path(url: str) -> str:
    assert url.startswith(BASE + "/materials/s/"), url
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def test_a_webhook_receives_an_image_address_it_can_fetch_without_a_login(
    app, engine, clock, settings
):
    address, image = upload_image(app, engine, clock)
    with session_scope(engine) as session:
        ensure_instance(session, "hook", "webhook", {"url": "https://hooks.example.com/in"})
    spec = new_friend_spec(channel="hook")
    spec["touchpoints"] = [
        {"name": "welcome", "timing": "+0m", "content": [{"image": address}, "欢迎！"]}
    ]
    template_id = publish(engine, spec, clock.now())
    contact_id = add_contact(engine, "wm_li", "李雷", clock.now())
    enroll(engine, template_id, [(contact_id, clock.now())], clock.now())

    received: list[dict] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(json.loads(request.content))
        return httpx.Response(200, json={"id": "r1"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    try:
        await SchedulerRuntime(engine, clock, settings, http=http).dispatch_tick()
    finally:
        await http.aclose()
    (body,) = received
    url = body["parts"][0]["url"]
    assert url.startswith(f"{BASE}/materials/s/") and url.endswith("/%E8%8F%9C%E5%8D%95.png")
    assert "wm_li" not in url and "李雷" not in url  # no personal data in the address

    with TestClient(app) as stranger:  # no session, no token: what a receiver has
        fetched = stranger.get(local_path(url))
        assert fetched.status_code == 200 and fetched.content == image, fetched.text[-800:]
        assert fetched.headers["content-type"] == "image/png"
        # the library's own address needs a login
        assert stranger.get(address, headers={"accept": "application/json"}).status_code == 401

        token = url.split("/materials/s/", 1)[1].split("/", 1)[0]
        material_id, expires, signature = token.split(".")
        flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
        refused = {
            "changed signature": f"/materials/s/{material_id}.{expires}.{flipped}/x.png",
            "signature of another file": local_path(url).replace(
                f"/s/{material_id}.", f"/s/{int(material_id) + 1}."
            ),
            "later expiry": local_path(url).replace(f".{expires}.", f".{int(expires) + 86400}."),
            "other name": local_path(url).rsplit("/", 1)[0] + "/other.png",
            "unsigned": f"/materials/s/{material_id}/%E8%8F%9C%E5%8D%95.png",
        }
        for why, path in refused.items():
            assert stranger.get(path).status_code in (403, 404), why

        clock.set(clock.now() + timedelta(days=settings.material_link_days + 2))
        assert stranger.get(local_path(url)).status_code == 403  # expired


async def test_the_staff_inbox_shows_the_librarys_image(app, engine, clock, settings):
    address, image = upload_image(app, engine, clock)
    add_wecom(engine)
    wecom = FakeWeCom()
    clock.set(T0)
    spec = remind_spec()
    spec["touchpoints"][0]["content"] = ["{{ contact.name }}您好", {"image": address}]
    build(engine, per_staff=1, spec=spec)
    http = httpx.AsyncClient(transport=httpx.MockTransport(wecom))
    try:
        rt = SchedulerRuntime(engine, clock, settings, http=http)
        await rt.dispatch_tick()
        assert (await rt.staff_tick()).digests == 3
    finally:
        await http.aclose()
    link = wecom.to("staff_a")[-1].split("打开任务列表：", 1)[1].strip()
    with TestClient(app) as staff:  # a staff member: the inbox link, no login
        html = staff.get(local_path_any(link)).text
        (src,) = set(re.findall(r'<img src="([^"]+)"', html))
        assert src.startswith(f"{BASE}/materials/s/")
        fetched = staff.get(local_path(src.replace("&amp;", "&")))
        assert fetched.status_code == 200 and fetched.content == image


def local_path_any(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def test_a_signed_address_is_stable_for_a_day_and_names_no_one():
    from datetime import UTC, datetime

    now = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
    later = now + timedelta(hours=10)
    first = materials.public_parts(
        [{"kind": "image", "url": "/materials/7/a.png"}, {"kind": "text", "text": "hi"}],
        "k",
        BASE,
        materials.link_expiry(now, 30),
    )
    again = materials.public_parts(
        [{"kind": "image", "url": "/materials/7/a.png"}],
        "k",
        BASE,
        materials.link_expiry(later, 30),
    )
    assert first[0] == again[0] and first[1] == {"kind": "text", "text": "hi"}
    token = first[0]["url"].split("/materials/s/")[1].split("/")[0]
    assert materials.verify_address("k", token, "a.png", later) == 7
    with pytest.raises(materials.LinkRefused):
        materials.verify_address("rotated", token, "a.png", later)  # key rotation revokes
    outside = [{"kind": "image", "url": "https://cdn.example.com/a.png"}]
    assert materials.public_parts(outside, "k", BASE, materials.link_expiry(now, 30)) == outside
