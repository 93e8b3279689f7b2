"""The material library: uploads checked by content and size, stored behind the
storage interface, served back, reused in the editor; cards checked as on send."""

from __future__ import annotations

import re
import struct
import zlib

import pytest
from auth_helpers import PASSWORD, make_user
from fastapi.testclient import TestClient

from api.app import create_app


def png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def client(engine, clock, settings, tmp_path):
    settings.materials_dir = str(tmp_path / "materials")
    make_user(engine, clock.now(), "wang", ["admin"])
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app) as c:
        token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
        c.post("/login", data={"username": "wang", "password": PASSWORD, "csrf_token": token})
        c.csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/materials").text).group(1)
        yield c


def test_an_image_is_uploaded_served_and_offered_in_the_editor(client, tmp_path):
    image = png()
    answer = client.post(
        "/materials/upload",
        data={"csrf_token": client.csrf},
        files={"file": ("菜单.png", image, "image/png")},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    page = client.get("/materials").text
    assert "已保存到素材库" not in page  # only after the redirect with done=1
    url = re.search(r'src="(/materials/\d+/[^"]+)"', page).group(1)
    served = client.get(url)
    assert served.status_code == 200 and served.content == image
    assert served.headers["content-type"] == "image/png"
    assert list((tmp_path / "materials").rglob("*.png"))  # on disk under the data directory
    editor = client.get("/templates/new?start=store_groups").text
    assert f'<option value="{url}">' in editor  # offered for image parts


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("tool.exe", b"MZ\x90\x00" * 10, "不是支持的类型"),
        ("fake.png", b"not really a png", "不是支持的类型"),
        ("empty.pdf", b"", "上传的文件是空的"),
        ("huge.png", png() + b"\x00" * (5 * 1024 * 1024), "超过 5 MB 的上限"),
    ],
)
def test_bad_uploads_are_refused_in_the_users_language(client, name, data, message):
    answer = client.post(
        "/materials/upload", data={"csrf_token": client.csrf}, files={"file": (name, data)}
    )
    assert answer.status_code == 422 and message in answer.text
    assert 'id="material-error"' in answer.text


def test_cards_are_checked_as_on_send(client):
    def card(**fields):
        return client.post("/materials/card", data={"csrf_token": client.csrf, **fields})

    assert "不是以 https:// 开头的网址" in card(kind="link", title="问卷", url="example.com").text
    bad_app = card(kind="miniprogram", title="商城", appid="商城小程序", page="pages/index")
    assert bad_app.status_code == 422 and "不是小程序 AppID" in bad_app.text
    bad_page = card(
        kind="miniprogram", title="商城", appid="wx0123456789abcdef", page="/pages/index"
    )
    assert "不是小程序页面路径" in bad_page.text
    ok = card(
        kind="miniprogram", title="商城", appid="wx0123456789abcdef", page="pages/index/index"
    )
    assert ok.status_code == 200 and "已保存到素材库" in ok.text
    editor = client.get("/templates/new?start=new_friend").text
    assert "从素材库选择" in editor and "wx0123456789abcdef" in editor
