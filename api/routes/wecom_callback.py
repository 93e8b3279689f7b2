"""The WeCom (企业微信) callback URL: 客户联系 → 接收事件服务器.

GET answers the URL verification (decrypts ``echostr``). POST verifies the
signature, decrypts, checks the receive id and that the signed timestamp is
within ``SOPBOT_WECOM_CALLBACK_WINDOW_SECONDS`` (±10 min) of now, stores the event in the inbox —
deduplicated by its content, since WeCom retries up to 3 times — answers
``success`` at once, and applies the inbox after the reply. Anything that fails
verification is rejected with 4xx, logged, and changes nothing.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from api.deps import SettingsDep
from audiences import inbox, wecom_events
from audiences.wecom_crypto import (
    MAX_BODY_BYTES,
    SignatureMismatchError,
    WeComCrypto,
    WeComCryptoError,
    check_fresh,
    parse_xml,
)
from scheduler.flows import changes
from sopbot.clock import Clock
from sopbot.db import session_scope
from sopbot.settings import Settings

router = APIRouter(prefix="/api/wecom", tags=["wecom"])
log = logging.getLogger("sopbot.wecom")


@lru_cache(maxsize=8)
def _crypto(token: str, aes_key: str, corp_id: str) -> WeComCrypto:
    return WeComCrypto(token, aes_key, corp_id)


def _configured(settings: Settings) -> WeComCrypto:
    token, key, corp = (
        settings.wecom_callback_token,
        settings.wecom_callback_aes_key,
        settings.wecom_corp_id,
    )
    if not (token and key and corp):
        raise HTTPException(
            404,
            "WeCom callback is not configured: set SOPBOT_WECOM_CALLBACK_TOKEN, "
            "SOPBOT_WECOM_CALLBACK_AES_KEY and SOPBOT_WECOM_CORP_ID",
        )
    return _crypto(token, key, corp)


def _reject(exc: WeComCryptoError, request: Request) -> HTTPException:
    client = request.client.host if request.client else "?"
    log.warning("WeCom callback rejected from %s: %s (%s)", client, exc.reason, exc)
    status = 403 if isinstance(exc, SignatureMismatchError) else 400
    return HTTPException(status, f"rejected: {exc.reason}")


@router.get("/callback", response_class=PlainTextResponse)
def verify_url(
    request: Request,
    settings: SettingsDep,
    msg_signature: str = Query(),
    timestamp: str = Query(),
    nonce: str = Query(),
    echostr: str = Query(),
) -> str:
    """URL verification: answer with the decrypted ``echostr``."""
    crypto = _configured(settings)
    try:
        return crypto.verify_url(msg_signature, timestamp, nonce, echostr)
    except WeComCryptoError as exc:
        raise _reject(exc, request) from None


@router.post("/callback", response_class=PlainTextResponse)
async def receive(
    request: Request,
    settings: SettingsDep,
    background: BackgroundTasks,
    msg_signature: str = Query(),
    timestamp: str = Query(),
    nonce: str = Query(),
) -> str:
    """Verify, decrypt, store (deduplicated), reply ``success``; apply afterwards."""
    crypto = _configured(settings)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, "rejected: body_too_large")
    engine: Engine = request.app.state.engine
    clock: Clock = request.app.state.clock
    try:
        inner = crypto.decrypt_message(msg_signature, timestamp, nonce, body)
        # after the signature check: only a signed timestamp says anything
        check_fresh(timestamp, clock.now(), settings.wecom_callback_window_seconds)
        fields = parse_xml(inner)
    except WeComCryptoError as exc:
        raise _reject(exc, request) from None
    new = await run_in_threadpool(_store, engine, clock, fields, inner)
    if new:
        background.add_task(apply_inbox, engine, clock)
    else:
        log.info("WeCom callback %s is a retry; already stored", wecom_events.event_kind(fields))
    return "success"


def _store(engine: Engine, clock: Clock, fields: dict[str, str], inner: str) -> bool:
    with session_scope(engine) as session:
        return inbox.enqueue(
            session,
            dedupe_key=wecom_events.dedupe_key(fields),
            source=wecom_events.SOURCE,
            kind=wecom_events.event_kind(fields),
            payload={"fields": fields, "xml": inner},
            now=clock.now(),
        )


def apply_inbox(engine: Engine, clock: Clock) -> None:
    """Apply pending inbox events (runs after the reply has been sent)."""
    try:
        with session_scope(engine) as session:
            result = changes.apply_pending(session, clock.now())
        if result.failed:
            log.warning("inbox: %d applied, %d failed", result.applied, result.failed)
    except Exception:  # a background task has nobody to report to but the log
        log.exception("applying the WeCom inbox failed; events stay pending")
