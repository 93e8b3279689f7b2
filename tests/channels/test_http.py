"""The adapters' shared HTTP client: several small pools behind one transport."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from channels.http import ShardedTransport, channel_http_client


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real gateway

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


async def test_concurrent_requests_spread_over_shards_and_all_complete(server):
    transport = ShardedTransport(shards=4, connections_per_shard=2)
    async with httpx.AsyncClient(transport=transport) as client:
        busy_seen: list[list[int]] = []

        async def post(i: int) -> str:
            response = await client.post(f"{server}/hook", content=f"m{i}".encode())
            busy_seen.append(list(transport._busy))
            return response.text

        bodies = await asyncio.gather(*(post(i) for i in range(40)))
        assert bodies == [f"m{i}" for i in range(40)]  # each answer to its own request
        assert transport.in_flight == 0  # every response body was closed
        assert any(sum(1 for b in busy if b) > 1 for busy in busy_seen)  # more than one pool


async def test_a_failed_request_does_not_leave_its_shard_busy():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = ShardedTransport(shards=2, connections_per_shard=1)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{port}/hook", content=b"x")
    assert transport.in_flight == 0


def test_the_runtime_client_uses_it():
    client = channel_http_client(shards=3, connections_per_shard=2)
    assert isinstance(client._transport, ShardedTransport)
    assert len(client._transport._shards) == 3
    with pytest.raises(ValueError):
        ShardedTransport(shards=0)


async def test_request_log_lines_do_not_show_credentials_in_urls(caplog) -> None:
    """httpx logs each request's URL; the group bot's key and WeCom's secret are
    in the query, a password may be in the user info."""
    async with channel_http_client() as http:
        http._transport = httpx.MockTransport(lambda r: httpx.Response(200))  # no network
        with caplog.at_level("INFO", logger="httpx"):
            await http.post("https://qyapi.example.test/cgi-bin/webhook/send?key=robot-KEY-1")
            await http.get("https://qyapi.example.test/gettoken?corpid=ww1&corpsecret=CORP-S-2")
            await http.post("https://user:PASS-3@hooks.example.test/in")
    text = caplog.text
    assert "qyapi.example.test/cgi-bin/webhook/send?key=**********" in text
    assert "https://user:**********@hooks.example.test/in" in text
    assert "corpid=**********&corpsecret=**********" in text
    for secret in ("robot-KEY-1", "CORP-S-2", "PASS-3"):
        assert secret not in text
