"""Tests for the WeCom callback crypto in ``audiences.wecom_crypto``.

Two kinds of vectors are used: the published examples from the WeCom docs (so we know we
interoperate with the real service, not just with ourselves), and vectors built here with a
fixed 16-byte random prefix (so ciphertexts are deterministic and tampering is targeted).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from xml.sax.saxutils import escape

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from audiences.wecom_crypto import (
    MAX_BODY_BYTES,
    BodyTooLargeError,
    DecryptError,
    InvalidAESKeyError,
    MalformedXMLError,
    ReceiveIdMismatchError,
    SignatureMismatchError,
    StaleTimestampError,
    WeComCrypto,
    WeComCryptoError,
    WeComErrorReason,
    parse_xml,
)

# Published sample from the WeCom callback docs / official SDK samples.
DOC_TOKEN = "QDG6eK"
DOC_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
DOC_CORP_ID = "wx5823bf96d3bd56c7"
DOC_ECHOSTR = (
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
)
DOC_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3Qczc"
    "dCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLj"
    "vd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMn"
    "vw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k"
    "22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2Yoy"
    "yH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)

# Our own test configuration (made-up values).
TOKEN = "sopbotTestToken123"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CORP_ID = "ww0123456789abcdef"
RANDOM16 = bytes(range(16))
TS = "1732200000"
NONCE = "987654321"
INNER_XML = (
    "<xml><ToUserName><![CDATA[ww0123456789abcdef]]></ToUserName>"
    "<FromUserName><![CDATA[zhangsan]]></FromUserName>"
    "<CreateTime>1732200000</CreateTime><MsgType><![CDATA[text]]></MsgType>"
    "<Content><![CDATA[你好，企业微信！SOP 提醒 🚀]]></Content>"
    "<MsgId>1234567890123456</MsgId><AgentID>1000002</AgentID></xml>"
)


@pytest.fixture
def crypto() -> WeComCrypto:
    return WeComCrypto(TOKEN, AES_KEY, CORP_ID)


def _body(encrypted: str) -> str:
    """Wrap ciphertext in the POST body envelope WeCom sends to the callback URL."""
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypted}]]></Encrypt>"
        "<AgentID><![CDATA[1000002]]></AgentID></xml>"
    )


def _aes_encrypt_raw(padded: bytes, aes_key: str = AES_KEY) -> str:
    """Encrypt already-padded bytes exactly as the spec says, independent of the module."""
    key = base64.b64decode(aes_key + "=")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def _spec_pad(data: bytes) -> bytes:
    n = 32 - len(data) % 32
    return data + bytes([n]) * n


def _flip(ciphertext_b64: str, index: int, mask: int = 0x01) -> str:
    raw = bytearray(base64.b64decode(ciphertext_b64))
    raw[index] ^= mask
    return base64.b64encode(bytes(raw)).decode()


# -- published WeCom vectors ---------------------------------------------------------------


def test_official_url_verification_vector() -> None:
    doc = WeComCrypto(DOC_TOKEN, DOC_AES_KEY, DOC_CORP_ID)
    sig = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
    assert doc.signature("1409659589", "263014780", DOC_ECHOSTR) == sig
    assert doc.verify_url(sig, "1409659589", "263014780", DOC_ECHOSTR) == "1616140317555161061"


def test_official_message_vector() -> None:
    doc = WeComCrypto(DOC_TOKEN, DOC_AES_KEY, DOC_CORP_ID)
    body = (
        f"<xml>\n<ToUserName><![CDATA[{DOC_CORP_ID}]]></ToUserName>"
        f"<Encrypt><![CDATA[{DOC_ENCRYPT}]]></Encrypt>\n"
        "<AgentID><![CDATA[218]]></AgentID>\n</xml>"
    )
    inner = doc.decrypt_message(
        "477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149", body
    )
    assert parse_xml(inner) == {
        "ToUserName": DOC_CORP_ID,
        "FromUserName": "mycreate",
        "CreateTime": "1409659813",
        "MsgType": "text",
        "Content": "hello",
        "MsgId": "4561255354251345929",
        "AgentID": "218",
    }


# -- our own deterministic vectors ---------------------------------------------------------


def test_encrypt_matches_spec_layout(crypto: WeComCrypto) -> None:
    msg = INNER_XML.encode()
    plain = RANDOM16 + struct.pack(">I", len(msg)) + msg + CORP_ID.encode()
    expected = _aes_encrypt_raw(_spec_pad(plain))
    assert crypto.encrypt(INNER_XML, RANDOM16) == expected
    # Deterministic with a fixed prefix, randomised without one.
    assert crypto.encrypt(INNER_XML, RANDOM16) == expected
    assert crypto.encrypt(INNER_XML) != crypto.encrypt(INNER_XML)


@pytest.mark.parametrize(
    "text",
    ["", "a", "中", "你好，世界", "x" * 11, "y" * 12, "z" * 44, "混合 mixed ✓ " * 50, INNER_XML],
)
def test_round_trip(crypto: WeComCrypto, text: str) -> None:
    ciphertext = crypto.encrypt(text, RANDOM16)
    # WeCom pads to 32-byte blocks, so the ciphertext is always a multiple of 32.
    assert len(base64.b64decode(ciphertext)) % 32 == 0
    assert crypto.decrypt(ciphertext) == text
    assert crypto.decrypt(crypto.encrypt(text)) == text


def test_signature_is_sorted_sha1(crypto: WeComCrypto) -> None:
    parts = sorted([TOKEN, TS, NONCE, "cipher"])
    assert (
        crypto.signature(TS, NONCE, "cipher") == hashlib.sha1("".join(parts).encode()).hexdigest()
    )


def test_message_envelope_round_trip(crypto: WeComCrypto) -> None:
    envelope = crypto.encrypt_message(INNER_XML, TS, NONCE, RANDOM16)
    fields = parse_xml(envelope)
    assert set(fields) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    assert fields["Encrypt"] == crypto.encrypt(INNER_XML, RANDOM16)
    assert fields["TimeStamp"] == TS
    assert fields["Nonce"] == NONCE
    assert fields["MsgSignature"] == crypto.signature(TS, NONCE, fields["Encrypt"])
    assert crypto.decrypt_message(fields["MsgSignature"], TS, NONCE, envelope) == INNER_XML
    # The body WeCom posts has ToUserName/AgentID around Encrypt; bytes work too.
    body = _body(fields["Encrypt"]).encode()
    assert crypto.decrypt_message(fields["MsgSignature"], TS, NONCE, body) == INNER_XML
    assert parse_xml(INNER_XML)["Content"] == "你好，企业微信！SOP 提醒 🚀"


def test_envelope_survives_cdata_terminator_in_nonce(crypto: WeComCrypto) -> None:
    envelope = crypto.encrypt_message("<xml/>", TS, "a]]>b<&", RANDOM16)
    assert parse_xml(envelope)["Nonce"] == "a]]>b<&"


def test_verify_url(crypto: WeComCrypto) -> None:
    echostr = crypto.encrypt("4283615097264561532", RANDOM16)
    sig = crypto.signature(TS, NONCE, echostr)
    assert crypto.verify_url(sig, TS, NONCE, echostr) == "4283615097264561532"


# -- rejections ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_sig",
    ["", "0" * 40, "签名", "\udcff"],
)
def test_wrong_signature_rejected(crypto: WeComCrypto, bad_sig: str) -> None:
    echostr = crypto.encrypt("echo", RANDOM16)
    with pytest.raises(SignatureMismatchError, match="msg_signature mismatch") as exc:
        crypto.verify_url(bad_sig, TS, NONCE, echostr)
    assert exc.value.reason is WeComErrorReason.BAD_SIGNATURE
    with pytest.raises(SignatureMismatchError):
        crypto.decrypt_message(bad_sig, TS, NONCE, _body(echostr))


def test_signature_bound_to_timestamp_nonce_and_token(crypto: WeComCrypto) -> None:
    enc = crypto.encrypt(INNER_XML, RANDOM16)
    sig = crypto.signature(TS, NONCE, enc)
    with pytest.raises(SignatureMismatchError):
        crypto.decrypt_message(sig, "1732200001", NONCE, _body(enc))
    with pytest.raises(SignatureMismatchError):
        crypto.decrypt_message(sig, TS, "1", _body(enc))
    other_token = WeComCrypto("anotherToken", AES_KEY, CORP_ID)
    with pytest.raises(SignatureMismatchError):
        other_token.decrypt_message(sig, TS, NONCE, _body(enc))


def test_missing_query_param_is_signature_error(crypto: WeComCrypto) -> None:
    enc = crypto.encrypt("x", RANDOM16)
    with pytest.raises(SignatureMismatchError, match="timestamp must be a str"):
        crypto.verify_url("0" * 40, None, NONCE, enc)  # type: ignore[arg-type]


def test_tampered_ciphertext_fails_original_signature(crypto: WeComCrypto) -> None:
    enc = crypto.encrypt(INNER_XML, RANDOM16)
    sig = crypto.signature(TS, NONCE, enc)
    with pytest.raises(SignatureMismatchError):
        crypto.decrypt_message(sig, TS, NONCE, _body(_flip(enc, 40)))


def _resigned(crypto: WeComCrypto, enc: str) -> tuple[str, str]:
    """Return (signature, body) for ``enc`` as an attacker holding the token would."""
    return crypto.signature(TS, NONCE, enc), _body(enc)


def test_resigned_flip_in_length_field_rejected(crypto: WeComCrypto) -> None:
    enc = crypto.encrypt(INNER_XML, RANDOM16)
    # CBC: flipping ciphertext byte i flips plaintext byte i + 16; byte 16 is the length MSB.
    sig, body = _resigned(crypto, _flip(enc, 0, 0x80))
    with pytest.raises(DecryptError, match="declared message length"):
        crypto.decrypt_message(sig, TS, NONCE, body)


def test_resigned_flip_in_padding_rejected(crypto: WeComCrypto) -> None:
    enc = crypto.encrypt(INNER_XML, RANDOM16)
    raw_len = len(base64.b64decode(enc))
    # Byte -17 of the ciphertext controls the last plaintext byte: the pad value.
    sig, body = _resigned(crypto, _flip(enc, raw_len - 17))
    with pytest.raises(DecryptError, match="padding") as exc:
        crypto.decrypt_message(sig, TS, NONCE, body)
    assert exc.value.reason is WeComErrorReason.DECRYPT_FAILED


def test_resigned_flip_in_receive_id_rejected(crypto: WeComCrypto) -> None:
    msg = INNER_XML.encode()
    enc = crypto.encrypt(INNER_XML, RANDOM16)
    rid_offset = 16 + 4 + len(msg)  # first receive-id byte in the plaintext
    sig, body = _resigned(crypto, _flip(enc, rid_offset - 16))
    with pytest.raises(ReceiveIdMismatchError, match="receive id"):
        crypto.decrypt_message(sig, TS, NONCE, body)


@pytest.mark.parametrize(
    ("ciphertext", "match"),
    [
        ("not base64 !!", "not valid base64"),
        ("密文", "not valid base64"),
        (base64.b64encode(b"\x00" * 15).decode(), "multiple of the 16-byte AES block"),
        ("", "multiple of the 16-byte AES block"),
    ],
)
def test_undecodable_ciphertext_rejected(crypto: WeComCrypto, ciphertext: str, match: str) -> None:
    sig, body = _resigned(crypto, ciphertext)
    with pytest.raises(DecryptError, match=match):
        crypto.decrypt_message(sig, TS, NONCE, body)


def test_truncated_ciphertext_rejected(crypto: WeComCrypto) -> None:
    raw = base64.b64decode(crypto.encrypt(INNER_XML, RANDOM16))
    sig, body = _resigned(crypto, base64.b64encode(raw[:-16]).decode())
    with pytest.raises(DecryptError):
        crypto.decrypt_message(sig, TS, NONCE, body)


def test_every_resigned_single_byte_flip_raises_only_wecom_errors(crypto: WeComCrypto) -> None:
    enc = crypto.encrypt(INNER_XML, RANDOM16)
    for index in range(len(base64.b64decode(enc))):
        sig, body = _resigned(crypto, _flip(enc, index, 0xFF))
        try:
            result = crypto.decrypt_message(sig, TS, NONCE, body)
        except WeComCryptoError:
            continue
        # CBC is malleable: flips that only touch message bytes can decrypt "fine"; the
        # signature (which needs the token) is what protects integrity.
        assert isinstance(result, str)


def test_inner_layout_errors(crypto: WeComCrypto) -> None:
    # Too short to hold random16 + length: 16 bytes of plaintext, fully padded.
    too_short = _aes_encrypt_raw(_spec_pad(b"\x00" * 16))
    with pytest.raises(DecryptError, match="too short"):
        crypto.decrypt(too_short)
    # Valid layout but message bytes are not UTF-8.
    not_utf8 = _aes_encrypt_raw(
        _spec_pad(RANDOM16 + b"\x00\x00\x00\x02\xff\xfe" + CORP_ID.encode())
    )
    with pytest.raises(DecryptError, match="UTF-8"):
        crypto.decrypt(not_utf8)
    # Pad value 0 and pad value > 32 are both invalid.
    with pytest.raises(DecryptError, match="padding"):
        crypto.decrypt(_aes_encrypt_raw(b"\x00" * 32))
    with pytest.raises(DecryptError, match="padding"):
        crypto.decrypt(_aes_encrypt_raw(b"\x21" * 64))


def test_wrong_receive_id_rejected(crypto: WeComCrypto) -> None:
    other_corp = WeComCrypto(TOKEN, AES_KEY, "ww_someone_else")
    enc = other_corp.encrypt(INNER_XML, RANDOM16)
    sig, body = _resigned(crypto, enc)
    with pytest.raises(ReceiveIdMismatchError, match="ww_someone_else") as exc:
        crypto.decrypt_message(sig, TS, NONCE, body)
    assert exc.value.reason is WeComErrorReason.RECEIVE_ID_MISMATCH
    # A receive id that is a prefix/extension of ours must not pass either.
    for rid in (CORP_ID[:-1], CORP_ID + "x", ""):
        enc = WeComCrypto(TOKEN, AES_KEY, rid).encrypt("<xml/>", RANDOM16)
        with pytest.raises(ReceiveIdMismatchError):
            crypto.decrypt(enc)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not xml at all",
        "<xml><Encrypt>abc</Encrypt>",
        "<xml><Encrypt>abc</Encrypt></xml><extra/>",
        "<xml><ToUserName>x</ToUserName></xml>",  # no Encrypt
        "<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>",  # ambiguous duplicate
        "<xml><Encrypt>&undefined;</Encrypt></xml>",
        b"<xml><Encrypt>\xff\xfe</Encrypt></xml>",  # not UTF-8
        "<xml><Encrypt>\udcff</Encrypt></xml>",  # lone surrogate in str
    ],
)
def test_malformed_xml_rejected(crypto: WeComCrypto, body: str | bytes) -> None:
    with pytest.raises(MalformedXMLError) as exc:
        crypto.decrypt_message("0" * 40, TS, NONCE, body)
    assert exc.value.reason is WeComErrorReason.MALFORMED_XML


@pytest.mark.parametrize(
    "body",
    [
        # Billion laughs.
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        "<xml><Encrypt>&lol2;</Encrypt></xml>",
        # XXE.
        '<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<xml><Encrypt>&xxe;</Encrypt></xml>",
        # External DTD, no entities at all.
        '<!DOCTYPE xml SYSTEM "http://example.invalid/x.dtd"><xml><Encrypt>a</Encrypt></xml>',
        # DOCTYPE hidden after a comment that itself mentions an element.
        "<!-- <xml> --><!DOCTYPE xml><xml><Encrypt>a</Encrypt></xml>",
    ],
)
def test_doctype_rejected(crypto: WeComCrypto, body: str) -> None:
    with pytest.raises(MalformedXMLError, match="DOCTYPE"):
        parse_xml(body)
    with pytest.raises(MalformedXMLError):
        crypto.decrypt_message("0" * 40, TS, NONCE, body)


def test_doctype_in_utf16_bytes_rejected() -> None:
    body = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY e "e">]><x><a>&e;</a></x>'
    with pytest.raises(MalformedXMLError):
        parse_xml(body.encode("utf-16"))


def test_doctype_text_inside_cdata_is_not_a_false_positive() -> None:
    xml = "<xml><Content><![CDATA[look: <!DOCTYPE html> <!ENTITY x>]]></Content></xml>"
    assert parse_xml(xml) == {"Content": "look: <!DOCTYPE html> <!ENTITY x>"}


def test_parse_xml_flat_and_nested() -> None:
    xml = (
        "<xml><MsgType><![CDATA[event]]></MsgType><Empty/>"
        "<SendPicsInfo><Count>1</Count><PicList><item>x</item></PicList></SendPicsInfo>"
        "<Amp>a &amp; b</Amp></xml>"
    )
    assert parse_xml(xml) == {"MsgType": "event", "Empty": "", "SendPicsInfo": "", "Amp": "a & b"}


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (AES_KEY[:-1], "exactly 43 characters, got 42"),
        (AES_KEY + "H", "exactly 43 characters, got 44"),
        ("", "exactly 43 characters, got 0"),
        ("!" * 43, "not valid base64"),
        ("é" * 43, "not valid base64"),
        (AES_KEY[:42] + "=", "decodes to 31 bytes"),
        (None, "must be a str"),
    ],
)
def test_bad_encoding_aes_key_rejected(key: str, match: str) -> None:
    with pytest.raises(InvalidAESKeyError, match=match) as exc:
        WeComCrypto(TOKEN, key, CORP_ID)
    assert exc.value.reason is WeComErrorReason.BAD_AES_KEY
    if key:
        assert key not in str(exc.value)  # never log the secret


def test_empty_token_rejected() -> None:
    with pytest.raises(ValueError, match="token"):
        WeComCrypto("", AES_KEY, CORP_ID)


def test_repr_hides_secrets(crypto: WeComCrypto) -> None:
    assert TOKEN not in repr(crypto)
    assert AES_KEY not in repr(crypto)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_oversized_body_rejected(crypto: WeComCrypto, as_bytes: bool) -> None:
    body = "<xml><Encrypt>" + "A" * MAX_BODY_BYTES + "</Encrypt></xml>"
    with pytest.raises(BodyTooLargeError, match="limit") as exc:
        crypto.decrypt_message("0" * 40, TS, NONCE, body.encode() if as_bytes else body)
    assert exc.value.reason is WeComErrorReason.BODY_TOO_LARGE


def test_oversized_multibyte_str_rejected() -> None:
    # Under the limit in characters, over it in UTF-8 bytes.
    body = "<xml><C>" + "中" * (MAX_BODY_BYTES // 2) + "</C></xml>"
    assert len(body) < MAX_BODY_BYTES
    with pytest.raises(BodyTooLargeError):
        parse_xml(body)


def test_oversized_echostr_rejected(crypto: WeComCrypto) -> None:
    with pytest.raises(BodyTooLargeError):
        crypto.verify_url("0" * 40, TS, NONCE, "A" * (MAX_BODY_BYTES + 4))


def test_error_hierarchy() -> None:
    for cls in (
        SignatureMismatchError,
        DecryptError,
        ReceiveIdMismatchError,
        MalformedXMLError,
        InvalidAESKeyError,
        BodyTooLargeError,
        StaleTimestampError,
    ):
        assert issubclass(cls, WeComCryptoError)
        assert isinstance(cls.reason, WeComErrorReason)
    assert len({cls.reason for cls in WeComCryptoError.__subclasses__()}) == 7


# -- property tests: garbage only ever raises WeComCryptoError -----------------------------

_FUZZ = settings(max_examples=200, deadline=None, database=None)


@_FUZZ
@given(
    body=st.one_of(st.text(), st.binary()),
    msg_signature=st.text(max_size=50),
    timestamp=st.text(max_size=20),
    nonce=st.text(max_size=20),
)
def test_fuzz_garbage_body(
    body: str | bytes, msg_signature: str, timestamp: str, nonce: str
) -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    with pytest.raises(WeComCryptoError):
        crypto.decrypt_message(msg_signature, timestamp, nonce, body)


@_FUZZ
@given(
    encrypted=st.one_of(
        st.text(),
        st.binary(max_size=512).map(lambda b: base64.b64encode(b).decode()),
    )
)
def test_fuzz_signed_garbage_encrypt(encrypted: str) -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    body = f"<xml><ToUserName>{CORP_ID}</ToUserName><Encrypt>{escape(encrypted)}</Encrypt></xml>"
    sig = crypto.signature(TS, NONCE, encrypted)
    with pytest.raises(WeComCryptoError):
        crypto.decrypt_message(sig, TS, NONCE, body)
    with pytest.raises(WeComCryptoError):
        crypto.verify_url(sig, TS, NONCE, encrypted)


@_FUZZ
@given(
    plaintext=st.one_of(
        # Unstructured plaintext under the right key: exercises padding checks.
        st.binary(min_size=1, max_size=256).map(lambda b: b + b"\x00" * (-len(b) % 16)),
        # Structured plaintext with a lying length field and arbitrary tail.
        st.builds(
            lambda declared, data, tail: _spec_pad(
                RANDOM16 + struct.pack(">I", declared) + data + tail
            ),
            st.integers(min_value=0, max_value=2**32 - 1),
            st.binary(max_size=64),
            st.one_of(st.just(CORP_ID.encode()), st.binary(max_size=24)),
        ),
    )
)
def test_fuzz_signed_ciphertext_under_right_key(plaintext: bytes) -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    encrypted = _aes_encrypt_raw(plaintext)
    sig = crypto.signature(TS, NONCE, encrypted)
    try:
        result = crypto.decrypt_message(sig, TS, NONCE, _body(encrypted))
    except WeComCryptoError:
        return
    # Only a well-formed plaintext addressed to us may get through.
    assert isinstance(result, str)
    assert plaintext.rstrip(plaintext[-1:]).endswith(CORP_ID.encode())
