"""The shared ``httpx.AsyncClient`` that channel adapters are lent.

httpcore's connection pool does bookkeeping proportional to the square of its
connections on every request event (``_assign_requests_to_connections`` counts
idle connections once per idle connection), so one pool serving dozens of
concurrent webhook calls spends more CPU on itself than on HTTP: measured on
this project's benchmark, 48 requests in flight through one pool managed ~100
requests/s, 16 in flight 2.4 ms of CPU per request. :class:`ShardedTransport`
spreads requests over several small pools (least busy first), which keeps the
per-request cost flat (about 1 ms) as concurrency grows. Adapters do not notice:
they still get one ``AsyncClient``.

httpx logs every request's URL at INFO. Channel URLs carry credentials in their
query (the group bot's ``?key=``, WeCom's ``corpsecret`` and ``access_token``)
or user info, so the client installs :class:`RedactedURLs` on that logger.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import httpx

DEFAULT_SHARDS = 8
DEFAULT_CONNECTIONS_PER_SHARD = 4
MASK = "**********"


def redact_url(url: httpx.URL) -> str:
    """The URL with every query value and any password masked."""
    if url.query:
        masked = "&".join(f"{key}={MASK}" for key, _ in url.params.multi_items())
        url = url.copy_with(query=masked.encode())
    if url.password:
        url = url.copy_with(username=url.username, password=MASK)
    return str(url)


class RedactedURLs(logging.Filter):
    """Masks the credentials of URLs in httpx's log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(arg) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


def redact_http_logs() -> None:
    """Install :class:`RedactedURLs` on httpx's logger (once)."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, RedactedURLs) for f in logger.filters):
        logger.addFilter(RedactedURLs())


class _CountedStream(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._inner = inner
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        if self._done is not None:
            self._done()
            self._done = None
        await self._inner.aclose()


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small ``AsyncHTTPTransport`` pools behind one transport."""

    def __init__(
        self,
        shards: int = DEFAULT_SHARDS,
        connections_per_shard: int = DEFAULT_CONNECTIONS_PER_SHARD,
        **transport_options: object,
    ) -> None:
        if shards < 1 or connections_per_shard < 1:
            raise ValueError("shards and connections_per_shard must be at least 1")
        limits = httpx.Limits(
            max_connections=connections_per_shard,
            max_keepalive_connections=connections_per_shard,
        )
        # One SSL context for all shards: loading the CA bundle costs ~70 ms each.
        transport_options.setdefault("verify", httpx.create_ssl_context())
        self._shards = [
            httpx.AsyncHTTPTransport(limits=limits, **transport_options)  # type: ignore[arg-type]
            for _ in range(shards)
        ]
        self._busy = [0] * shards

    @property
    def in_flight(self) -> int:
        return sum(self._busy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._shards)), key=self._busy.__getitem__)
        self._busy[index] += 1

        def done() -> None:
            self._busy[index] -= 1

        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            done()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CountedStream(response.stream, done)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def channel_http_client(
    *,
    timeout: float = 30.0,
    shards: int = DEFAULT_SHARDS,
    connections_per_shard: int = DEFAULT_CONNECTIONS_PER_SHARD,
) -> httpx.AsyncClient:
    """The ``AsyncClient`` the runtime lends adapters (``AdapterContext.http``)."""
    redact_http_logs()
    return httpx.AsyncClient(
        timeout=timeout, transport=ShardedTransport(shards, connections_per_shard)
    )
