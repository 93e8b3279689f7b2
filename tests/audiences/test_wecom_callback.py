"""The WeCom callback URL: verification, decryption, mapping to audience events,
dedupe of WeCom's retries, and rejection of anything forged or broken — with
vectors built by our own encryptor and hypothesis-fuzzed garbage."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from audience_helpers import enrollments, snapshot
from factories import deliveries, new_friend_spec, store_menu_spec
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select

from api.app import create_app
from audiences.models import Account, Contact, GroupChat, InboxEvent
from audiences.wecom_crypto import WeComCrypto
from sopbot.db import session_scope

TOKEN = "sopbotCallbackToken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CORP_ID = "ww0123456789abcdef"
WECOM = WeComCrypto(TOKEN, AES_KEY, CORP_ID)


@pytest.fixture
def client(engine, clock, settings, auth_headers):
    # events' CreateTime is a little later, within the callback's freshness window
    clock.set(datetime.fromtimestamp(1_800_000_000 - 60, UTC))
    configured = settings.model_copy(
        update={
            "wecom_callback_token": TOKEN,
            "wecom_callback_aes_key": AES_KEY,
            "wecom_corp_id": CORP_ID,
        }
    )
    app = create_app(configured, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app, headers=auth_headers) as c:
        yield c


def event_xml(**fields: str | int) -> str:
    inner = "".join(
        f"<{k}>{v}</{k}>" if isinstance(v, int) else f"<{k}><![CDATA[{v}]]></{k}>"
        for k, v in fields.items()
    )
    return f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>{inner}</xml>"


def contact_event(
    change: str, external: str = "wmEXT1", user: str = "zhangsan", t: int = 1800000000, **extra
):
    return event_xml(
        FromUserName="sys", CreateTime=t, MsgType="event", Event="change_external_contact",
        ChangeType=change, UserID=user, ExternalUserID=external, **extra,
    )  # fmt: skip


def chat_event(change: str, chat: str = "wrCHAT1", t: int = 1800000000, **extra):
    return event_xml(
        FromUserName="sys", CreateTime=t, MsgType="event", Event="change_external_chat",
        ChatId=chat, ChangeType=change, **extra,
    )  # fmt: skip


def envelope(encrypted: str) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>"
    )


def deliver(
    client,
    inner_xml: str,
    *,
    crypto: WeComCrypto = WECOM,
    nonce: str = "n1",
    ts: str = "1800000000",
):
    """POST a callback exactly as WeCom would: encrypt, sign, wrap."""
    encrypted = crypto.encrypt(inner_xml)
    signature = crypto.signature(ts, nonce, encrypted)
    return client.post(
        "/api/wecom/callback",
        params={"msg_signature": signature, "timestamp": ts, "nonce": nonce},
        content=envelope(encrypted),
        headers={"content-type": "text/xml"},
    )  # fmt: skip


def test_url_verification_echoes_the_decrypted_echostr(client):
    echostr = WECOM.encrypt("1616140317555161061")
    params = {"timestamp": "1409659589", "nonce": "263014780", "echostr": echostr}
    ok = client.get("/api/wecom/callback", params={**params, "msg_signature": WECOM.signature("1409659589", "263014780", echostr)})  # fmt: skip
    assert ok.status_code == 200 and ok.text == "1616140317555161061"
    bad = client.get("/api/wecom/callback", params={**params, "msg_signature": "0" * 40})
    assert bad.status_code == 403 and "bad_signature" in bad.text


def test_new_friend_callback_enrolls_once_however_often_wecom_retries(client, engine, clock):
    client.post("/api/templates", json=new_friend_spec(segment={"kind": "new_friends"}))
    client.post("/api/templates/1/publish")
    inner = contact_event("add_external_contact", State="store_xuhui", WelcomeCode="WC")
    # WeCom retries: same event, fresh encryption, new nonce each time
    responses = [deliver(client, inner, nonce=f"retry{i}") for i in range(3)]
    assert [(r.status_code, r.text) for r in responses] == [(200, "success")] * 3

    with session_scope(engine) as session:
        contact = session.execute(select(Contact)).scalar_one()
        assert contact.external_id == "wmEXT1"
        assert contact.attributes == {
            "wecom_state": "store_xuhui",
            # kept for a mode: welcome touchpoint, valid ~20 s from the event
            "wecom_welcome_code": "WC",
            "wecom_welcome_at": "2027-01-15T08:00:00+00:00",
        }
        assert contact.joined_at.timestamp() == 1800000000  # CreateTime anchors the SOP
        account = session.execute(select(Account)).scalar_one()
        assert account.external_id == "zhangsan"  # WeCom's staff are registered on the fly
        inbox = session.execute(select(InboxEvent)).scalars().all()
        assert [(i.kind, i.status) for i in inbox] == [
            ("change_external_contact/add_external_contact", "applied")
        ]
    assert len(enrollments(engine)) == 1
    assert len(deliveries(engine)) == 3


def test_contact_and_chat_changes_map_to_events(client, engine):
    client.post("/api/templates", json=store_menu_spec(segment={"tag": "store"}))
    client.post("/api/templates/1/publish")
    for inner in [
        contact_event("add_external_contact", t=1800000000),
        contact_event("edit_external_contact", external="wmSEEN_BEFORE", t=1800000001),
        chat_event("create", t=1800000002),
        chat_event("update", t=1800000003, UpdateDetail="add_member", JoinScene=1, MemChangeCnt=3),
        chat_event("update", t=1800000004, UpdateDetail="del_member", QuitScene=0, MemChangeCnt=1),
        chat_event("update", chat="wrUNSEEN", t=1800000005, UpdateDetail="change_name"),
    ]:
        assert deliver(client, inner).text == "success"
    # the operator tags the new chat a store: it joins the group SOP
    client.post("/api/events", json={"kind": "tag_added", "target": "group", "external_id": "wrCHAT1", "tags": ["store"]})  # fmt: skip
    assert [e.status for e in enrollments(engine)] == ["active"]
    deliver(client, chat_event("dismiss", t=1800000006))
    deliver(client, contact_event("del_follow_user", t=1800000007))

    with session_scope(engine) as session:
        contacts = {c.external_id: c for c in session.execute(select(Contact)).scalars()}
        assert contacts["wmEXT1"].status == "deleted"
        assert contacts["wmSEEN_BEFORE"].status == "active"
        groups = {g.external_id: g for g in session.execute(select(GroupChat)).scalars()}
        assert groups["wrCHAT1"].member_count == 2
        assert groups["wrCHAT1"].status == "dissolved"
        assert "wrUNSEEN" in groups
    assert [(e.status, e.exit_reason) for e in enrollments(engine)] == [
        ("exited", "group dissolved")
    ]


def test_unsupported_and_failing_events_are_recorded_not_applied(client, engine):
    tag_change = event_xml(CreateTime=1800000000, MsgType="event", Event="change_external_tag", Id="et1", TagType="tag", ChangeType="create")  # fmt: skip
    assert deliver(client, tag_change).text == "success"
    # deleting a friend sopbot never heard of cannot be applied; it is kept with the reason
    assert (
        deliver(client, contact_event("del_external_contact", external="wmNOBODY")).text
        == "success"
    )
    assert deliver(client, contact_event("add_external_contact", t=1800000009)).text == "success"
    inbox = client.get("/api/events/inbox").json()
    by_kind = {i["kind"]: i for i in inbox}
    assert by_kind["change_external_tag/create"]["status"] == "ignored"
    assert "not acted on" in by_kind["change_external_tag/create"]["error"]
    failed = by_kind["change_external_contact/del_external_contact"]
    assert failed["status"] == "failed" and "unknown contact 'wmNOBODY'" in failed["error"]
    assert by_kind["change_external_contact/add_external_contact"]["status"] == "applied"
    assert failed["payload"]["xml"].startswith("<xml>")


def _valid_request():
    inner = contact_event("add_external_contact")
    encrypted = WECOM.encrypt(inner)
    return encrypted, WECOM.signature("1800000000", "n1", encrypted)


def _post(client, encrypted, signature, body=None):
    return client.post(
        "/api/wecom/callback",
        params={"msg_signature": signature, "timestamp": "1800000000", "nonce": "n1"},
        content=body if body is not None else envelope(encrypted),
    )


def _flip(ciphertext: str, index: int) -> str:
    raw = bytearray(base64.b64decode(ciphertext))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _forged_cases():
    encrypted, signature = _valid_request()
    flipped = _flip(encrypted, 40)
    other_corp = WeComCrypto(TOKEN, AES_KEY, "wwSOMEONE_ELSE")
    foreign = other_corp.encrypt(contact_event("add_external_contact"))
    other_key = WeComCrypto(TOKEN, "B" * 43, CORP_ID)
    wrong_key = other_key.encrypt(contact_event("add_external_contact"))
    not_xml = WECOM.encrypt("this is not xml")
    return [
        ("wrong signature", encrypted, "f" * 40, None, 403),
        ("tampered ciphertext", flipped, signature, None, 403),
        ("tampered and re-signed", flipped, WECOM.signature("1800000000", "n1", flipped), None, 400),
        ("bad padding (other key)", wrong_key, WECOM.signature("1800000000", "n1", wrong_key), None, 400),
        ("wrong receive id", foreign, WECOM.signature("1800000000", "n1", foreign), None, 400),
        ("inner XML malformed", not_xml, WECOM.signature("1800000000", "n1", not_xml), None, 400),
        ("body not XML", encrypted, signature, "{'json': 1}", 400),
        ("no Encrypt element", encrypted, signature, "<xml><ToUserName>x</ToUserName></xml>", 400),
        ("XXE attempt", encrypted, signature, '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Encrypt>&e;</Encrypt></xml>', 400),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _forged_cases(), ids=lambda c: c[0])
def test_forged_or_broken_callbacks_change_nothing(client, engine, case):
    _name, encrypted, signature, body, status = case
    before = snapshot(engine)
    response = _post(client, encrypted, signature, body)
    assert response.status_code == status, response.text
    assert response.text != "success"
    assert snapshot(engine) == before


def test_callback_is_off_until_configured(engine, clock, settings):
    with TestClient(create_app(settings, engine=engine, clock=clock, run_scheduler=False)) as c:
        encrypted, signature = _valid_request()
        response = _post(c, encrypted, signature)
        assert response.status_code == 404 and "SOPBOT_WECOM_CALLBACK_TOKEN" in response.text


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(st.binary(max_size=400), st.text(max_size=300).map(str.encode)),
    signature=st.text(max_size=50),
    timestamp=st.text(max_size=12),
    nonce=st.text(max_size=12),
)
def test_fuzzed_garbage_is_rejected(client, engine, body, signature, timestamp, nonce):
    before = snapshot(engine)
    response = client.post(
        "/api/wecom/callback",
        params={"msg_signature": signature, "timestamp": timestamp, "nonce": nonce},
        content=body,
    )
    assert 400 <= response.status_code < 500
    assert snapshot(engine) == before


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(index=st.integers(min_value=0, max_value=10_000), mask=st.integers(1, 255))
def test_fuzzed_bit_flips_of_a_valid_ciphertext_are_rejected(client, engine, index, mask):
    encrypted, signature = _valid_request()
    raw = bytearray(base64.b64decode(encrypted))
    raw[index % len(raw)] ^= mask
    before = snapshot(engine)
    response = _post(client, base64.b64encode(bytes(raw)).decode(), signature)
    assert response.status_code == 403  # the signature covers every ciphertext byte
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    "ts",
    [
        str(int(datetime(2001, 9, 9, tzinfo=UTC).timestamp())),
        str(1_800_000_000 + 365 * 86400),
        str(1_800_000_000 - 60 - 601),
        "１８００００００００",
    ],
    ids=["2001", "a year ahead", "just outside the window", "not ASCII digits"],
)
def test_a_signed_callback_outside_the_freshness_window_changes_nothing(client, engine, ts):
    client.post("/api/templates", json=new_friend_spec(segment={"kind": "new_friends"}))
    client.post("/api/templates/1/publish")
    before = snapshot(engine)
    response = deliver(client, contact_event("add_external_contact"), ts=ts)
    assert response.status_code == 400 and "stale_timestamp" in response.text
    assert snapshot(engine) == before
    # the same event, signed now, is taken
    assert deliver(client, contact_event("add_external_contact"), ts="1800000000").text == "success"
    assert len(enrollments(engine)) == 1


def test_a_poison_callback_fails_alone_and_never_blocks_the_inbox(
    client, engine, clock, monkeypatch
):
    client.post("/api/templates", json=new_friend_spec(segment={"kind": "new_friends"}))
    client.post("/api/templates/1/publish")
    # validly signed, fresh, but a CreateTime no calendar holds
    poison = contact_event("add_external_contact", external="wmPOISON", t=99999999999999999)
    assert deliver(client, poison).text == "success"
    assert deliver(client, contact_event("add_external_contact", external="wmOK")).text == "success"
    by_external = {
        i["payload"]["fields"]["ExternalUserID"]: i for i in client.get("/api/events/inbox").json()
    }
    assert by_external["wmPOISON"]["status"] == "failed"
    assert "CreateTime" in by_external["wmPOISON"]["error"]
    assert by_external["wmOK"]["status"] == "applied"
    failed = client.get("/api/events/inbox", params={"status": "failed"}).json()
    assert [i["id"] for i in failed] == [by_external["wmPOISON"]["id"]]

    # anything else that raises while applying fails alone too, and the inbox
    # job (POST /api/events/inbox/apply, the scheduler's job) goes on past it
    from audiences import inbox, wecom_events

    real = wecom_events.to_events

    def explode_on_boom(fields):
        if fields.get("ExternalUserID") == "wmBOOM":
            raise RuntimeError("boom")
        return real(fields)

    monkeypatch.setattr(wecom_events, "to_events", explode_on_boom)
    with session_scope(engine) as session:
        for external, t in (("wmBOOM", 1800000010), ("wmLATER", 1800000011)):
            fields = {"MsgType": "event", "Event": "change_external_contact", "ChangeType": "add_external_contact", "UserID": "zhangsan", "ExternalUserID": external, "CreateTime": str(t)}  # fmt: skip
            inbox.enqueue(session, dedupe_key=wecom_events.dedupe_key(fields), source="wecom", kind="x", payload={"fields": fields}, now=clock.now())  # fmt: skip
    applied = client.post("/api/events/inbox/apply")
    assert applied.status_code == 200
    assert (applied.json()["applied"], applied.json()["failed"]) == (1, 1)
    boom = client.get("/api/events/inbox", params={"status": "failed"}).json()[0]
    assert boom["error"] == "RuntimeError: boom"
    assert {e.target_id for e in enrollments(engine)} == {1, 2}  # wmOK and wmLATER
