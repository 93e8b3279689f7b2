"""WeCom (企业微信) callback message crypto, implemented from the published spec.

Protocol (WeCom docs, "加解密方案说明"):

* ``msg_signature = sha1("".join(sorted([token, timestamp, nonce, encrypt]))).hexdigest()``
* ``AESKey = base64_decode(EncodingAESKey + "=")`` (43 chars -> 32 bytes), ``IV = AESKey[:16]``,
  AES-256-CBC.
* PKCS#7 padding to a multiple of **32** bytes (pad byte value 1..32).
* ``plaintext = random(16) + len(msg).to_bytes(4, "big") + msg + receive_id``

Every failure caused by untrusted input surfaces as :class:`WeComCryptoError` (or one of its
subclasses, each carrying a :class:`WeComErrorReason`), so a callback handler can catch exactly
one exception type, log ``str(exc)`` and answer 4xx without leaking a stack trace.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime
from enum import StrEnum
from typing import ClassVar, NoReturn
from xml.parsers import expat
from xml.sax.saxutils import escape

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "MAX_BODY_BYTES",
    "BodyTooLargeError",
    "DecryptError",
    "InvalidAESKeyError",
    "MalformedXMLError",
    "ReceiveIdMismatchError",
    "SignatureMismatchError",
    "WeComCrypto",
    "WeComCryptoError",
    "WeComErrorReason",
    "parse_xml",
]

# WeCom callbacks are a few KiB; anything near a megabyte is abuse, and capping it bounds the
# work (SHA1, base64, AES, XML) an unauthenticated request can make us do.
MAX_BODY_BYTES = 1024 * 1024

_KEY_CHARS = 43
_KEY_BYTES = 32
_AES_BLOCK = 16
# WeCom pads to 32-byte blocks, not AES's 16; pad values 1..32 are therefore legal.
_PAD_BLOCK = 32
_RANDOM_LEN = 16
_LEN_PREFIX = 4
# Attacker-controlled strings quoted in error messages are cut to keep logs readable.
_LOG_SNIPPET = 64


class WeComErrorReason(StrEnum):
    """Machine-readable cause of a :class:`WeComCryptoError`, e.g. for metrics labels."""

    BAD_SIGNATURE = "bad_signature"
    DECRYPT_FAILED = "decrypt_failed"
    RECEIVE_ID_MISMATCH = "receive_id_mismatch"
    MALFORMED_XML = "malformed_xml"
    BAD_AES_KEY = "bad_aes_key"
    BODY_TOO_LARGE = "body_too_large"
    STALE_TIMESTAMP = "stale_timestamp"


class WeComCryptoError(Exception):
    """Base class of every error this module raises for bad input or configuration.

    ``reason`` tells callers what went wrong without parsing the message; ``str(exc)`` is a
    human-readable explanation meant for logs (it never contains the AES key or token).
    """

    reason: ClassVar[WeComErrorReason]


class SignatureMismatchError(WeComCryptoError):
    """``msg_signature`` does not match the token/timestamp/nonce/ciphertext."""

    reason = WeComErrorReason.BAD_SIGNATURE


class DecryptError(WeComCryptoError):
    """Ciphertext is not base64, has a bad length, bad padding or a bad inner layout."""

    reason = WeComErrorReason.DECRYPT_FAILED


class ReceiveIdMismatchError(WeComCryptoError):
    """Message decrypted fine but was addressed to a different corp / suite id."""

    reason = WeComErrorReason.RECEIVE_ID_MISMATCH


class MalformedXMLError(WeComCryptoError):
    """Body is not well-formed, lacks a required element, or carries a DTD."""

    reason = WeComErrorReason.MALFORMED_XML


class InvalidAESKeyError(WeComCryptoError):
    """EncodingAESKey is not 43 base64 characters decoding to 32 bytes."""

    reason = WeComErrorReason.BAD_AES_KEY


class BodyTooLargeError(WeComCryptoError):
    """Input exceeds :data:`MAX_BODY_BYTES`."""

    reason = WeComErrorReason.BODY_TOO_LARGE


class StaleTimestampError(WeComCryptoError):
    """The signed ``timestamp`` is not a number, or lies outside the freshness window."""

    reason = WeComErrorReason.STALE_TIMESTAMP


def check_fresh(timestamp: str, now: datetime, window_seconds: float) -> None:
    """Refuse a callback whose signed ``timestamp`` is more than ``window_seconds``
    away from ``now`` either way: WeCom sends at once and retries within minutes,
    so anything older is a replay of a captured request (and anything ahead, a
    forged clock)."""
    raw = timestamp.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise StaleTimestampError(f"timestamp {_snippet(raw)!r} is not Unix seconds")
    skew = int(raw) - now.timestamp()
    if abs(skew) > window_seconds:
        direction = "ahead of" if skew > 0 else "behind"
        raise StaleTimestampError(
            f"timestamp is {abs(skew):.0f} s {direction} the server clock "
            f"(the window is ±{window_seconds:.0f} s)"
        )


def _snippet(value: str) -> str:
    """Return a short ``repr`` of untrusted text for error messages."""
    if len(value) > _LOG_SNIPPET:
        return repr(value[:_LOG_SNIPPET]) + "..."
    return repr(value)


def _check_size(data: str | bytes, what: str) -> None:
    """Raise :class:`BodyTooLargeError` if ``data`` is larger than :data:`MAX_BODY_BYTES`."""
    size = len(data)
    # A str's UTF-8 size is at most 4x its length, so only encode when it could matter.
    if isinstance(data, str) and size * 4 > MAX_BODY_BYTES:
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise BodyTooLargeError(f"{what} is {size} bytes, over the {MAX_BODY_BYTES}-byte limit")


def parse_xml(xml: str | bytes) -> dict[str, str]:
    """Parse a flat WeCom XML document into ``{tag: text}`` for the root's direct children.

    Text of nested elements (e.g. ``<SendPicsInfo><PicList>...``) is not included in the
    parent's value. Any DTD is refused outright: WeCom never sends one, and refusing it at the
    parser level kills XXE and entity-expansion ("billion laughs") attacks. This is done with
    expat handlers rather than a substring scan so user text such as ``<![CDATA[<!DOCTYPE
    html>]]>`` in a message body is not a false positive.

    Raises:
        BodyTooLargeError: input is over :data:`MAX_BODY_BYTES`.
        MalformedXMLError: not UTF-8, not well-formed, has a DTD, or repeats a top-level tag.
    """
    _check_size(xml, "XML body")
    if isinstance(xml, bytes):
        # Decode ourselves: expat honours an encoding declaration on bytes input, which would
        # let a UTF-16 document slip past any byte-level inspection. WeCom is always UTF-8.
        try:
            text = xml.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedXMLError(f"XML body is not valid UTF-8: {exc}") from None
    elif isinstance(xml, str):
        text = xml
    else:
        raise MalformedXMLError(f"XML body must be str or bytes, got {type(xml).__name__}")

    result: dict[str, str] = {}
    chunks: list[str] = []
    depth = 0

    def start(name: str, _attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth == 2:
            # A repeated tag (two <Encrypt>s, say) makes "which one was signed?" ambiguous.
            if name in result:
                raise MalformedXMLError(f"duplicate element <{_snippet(name)}> in XML body")
            chunks.clear()

    def end(name: str) -> None:
        nonlocal depth
        if depth == 2:
            result[name] = "".join(chunks)
        depth -= 1

    def char_data(data: str) -> None:
        if depth == 2:
            chunks.append(data)

    def reject_dtd(*_args: object) -> NoReturn:
        raise MalformedXMLError(
            "XML body contains a DOCTYPE/ENTITY declaration; refused (XXE / entity expansion)"
        )

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = char_data
    parser.StartDoctypeDeclHandler = reject_dtd
    parser.EntityDeclHandler = reject_dtd
    parser.UnparsedEntityDeclHandler = reject_dtd
    parser.ExternalEntityRefHandler = reject_dtd
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        # str input makes expat parse as UTF-8 whatever the XML declaration claims.
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise MalformedXMLError(f"XML body is not well-formed: {exc}") from None
    except ValueError as exc:  # e.g. UnicodeEncodeError on lone surrogates in a str
        raise MalformedXMLError(f"XML body cannot be parsed: {exc}") from None
    return result


def _decode_aes_key(encoding_aes_key: str) -> bytes:
    """Turn the 43-character EncodingAESKey into the 32-byte AES key, or raise."""
    # Messages deliberately never echo the key: it is a secret and ends up in logs.
    if not isinstance(encoding_aes_key, str):
        raise InvalidAESKeyError(
            f"EncodingAESKey must be a str, got {type(encoding_aes_key).__name__}"
        )
    if len(encoding_aes_key) != _KEY_CHARS:
        raise InvalidAESKeyError(
            f"EncodingAESKey must be exactly {_KEY_CHARS} characters, got "
            f"{len(encoding_aes_key)} (check for truncation or stray whitespace)"
        )
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except ValueError:  # binascii.Error, or non-ASCII input
        raise InvalidAESKeyError(
            "EncodingAESKey is not valid base64 (expected characters A-Z, a-z, 0-9, +, /)"
        ) from None
    if len(key) != _KEY_BYTES:
        raise InvalidAESKeyError(
            f"EncodingAESKey decodes to {len(key)} bytes, expected {_KEY_BYTES}"
        )
    return key


def _pkcs7_pad(data: bytes) -> bytes:
    """Pad to a multiple of 32 bytes as WeCom requires (always adds 1..32 bytes)."""
    n = _PAD_BLOCK - len(data) % _PAD_BLOCK
    return data + bytes([n]) * n


def _pkcs7_unpad(data: bytes) -> bytes:
    """Strip WeCom's 32-byte-block PKCS#7 padding, checking every pad byte."""
    n = data[-1]
    if not 1 <= n <= _PAD_BLOCK or n > len(data):
        raise DecryptError(f"invalid PKCS#7 padding: pad value {n} is outside 1..{_PAD_BLOCK}")
    if data[-n:] != bytes([n]) * n:
        raise DecryptError(f"invalid PKCS#7 padding: last {n} bytes are not all {n}")
    return data[:-n]


def _cdata(text: str) -> str:
    """Wrap ``text`` in CDATA, splitting any ``]]>`` so it cannot end the section early."""
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


class WeComCrypto:
    """Sign, verify, encrypt and decrypt WeCom callback messages for one app.

    Args:
        token: the callback Token configured in the WeCom admin console.
        encoding_aes_key: the 43-character EncodingAESKey from the same page.
        receive_id: the id messages must be addressed to: the corp id for self-built apps,
            the suite id for third-party suite callbacks.

    Raises:
        InvalidAESKeyError: ``encoding_aes_key`` is malformed.
        ValueError: ``token`` is empty.
    """

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        # An empty token makes every signature computable from public request fields.
        if not isinstance(token, str) or not token:
            raise ValueError("WeCom token must be a non-empty string")
        if not isinstance(receive_id, str):
            raise ValueError(f"receive_id must be a str, got {type(receive_id).__name__}")
        self._token = token
        key = _decode_aes_key(encoding_aes_key)
        self._receive_id = receive_id.encode("utf-8")
        # The Cipher is immutable; each call builds its own encryptor/decryptor context, so one
        # instance is safe to share between requests.
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(key[:_AES_BLOCK]))

    def __repr__(self) -> str:
        # Keep secrets out of reprs (and so out of tracebacks and debug logs).
        return f"{type(self).__name__}(receive_id={self._receive_id.decode('utf-8')!r})"

    # -- signatures -------------------------------------------------------------------------

    def signature(self, timestamp: str, nonce: str, encrypted: str) -> str:
        """Return the lowercase hex SHA1 ``msg_signature`` for these request fields."""
        joined = "".join(sorted([self._token, timestamp, nonce, encrypted]))
        # surrogatepass: odd input must yield a (non-matching) digest, not a UnicodeError.
        return hashlib.sha1(joined.encode("utf-8", "surrogatepass")).hexdigest()

    def _verify_signature(
        self, msg_signature: str, timestamp: str, nonce: str, encrypted: str
    ) -> None:
        """Raise :class:`SignatureMismatchError` unless ``msg_signature`` is correct."""
        for name, value in (
            ("msg_signature", msg_signature),
            ("timestamp", timestamp),
            ("nonce", nonce),
        ):
            # Query parameters can be missing; fail as a signature error, not a TypeError.
            if not isinstance(value, str):
                raise SignatureMismatchError(f"{name} must be a str, got {type(value).__name__}")
        expected = self.signature(timestamp, nonce, encrypted)
        # compare_digest on str only accepts ASCII; a non-ASCII signature is simply wrong.
        # Constant-time so the signature cannot be recovered byte by byte via timing.
        if not (msg_signature.isascii() and hmac.compare_digest(expected, msg_signature)):
            raise SignatureMismatchError(
                f"msg_signature mismatch (got {_snippet(msg_signature)}, timestamp="
                f"{_snippet(timestamp)}, nonce={_snippet(nonce)}); wrong token or tampered message"
            )

    # -- raw encrypt / decrypt --------------------------------------------------------------

    def encrypt(self, plaintext: str, random16: bytes | None = None) -> str:
        """Encrypt ``plaintext`` and return it base64-encoded, as used in ``<Encrypt>``.

        ``random16`` fixes the 16-byte random prefix; pass it only in tests, to get
        deterministic ciphertext. By default a fresh CSPRNG value is used.
        """
        if random16 is None:
            random16 = secrets.token_bytes(_RANDOM_LEN)
        elif len(random16) != _RANDOM_LEN:
            raise ValueError(f"random16 must be exactly {_RANDOM_LEN} bytes, got {len(random16)}")
        msg = plaintext.encode("utf-8")
        payload = bytes(random16) + len(msg).to_bytes(_LEN_PREFIX, "big") + msg + self._receive_id
        encryptor = self._cipher.encryptor()
        raw = encryptor.update(_pkcs7_pad(payload)) + encryptor.finalize()
        return base64.b64encode(raw).decode("ascii")

    def decrypt(self, ciphertext_b64: str) -> str:
        """Decrypt a base64 ciphertext and return the message, checking the receive id.

        This does **not** check a signature; callers handling network input should use
        :meth:`verify_url` or :meth:`decrypt_message`, which verify first.

        Raises:
            BodyTooLargeError, DecryptError, ReceiveIdMismatchError.
        """
        if not isinstance(ciphertext_b64, str | bytes):
            raise DecryptError(
                f"ciphertext must be base64 text, got {type(ciphertext_b64).__name__}"
            )
        _check_size(ciphertext_b64, "ciphertext")
        try:
            raw = base64.b64decode(ciphertext_b64, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII str
            raise DecryptError("ciphertext is not valid base64") from None
        if not raw or len(raw) % _AES_BLOCK:
            raise DecryptError(
                f"ciphertext is {len(raw)} bytes, not a positive multiple of the "
                f"{_AES_BLOCK}-byte AES block"
            )
        decryptor = self._cipher.decryptor()
        plain = _pkcs7_unpad(decryptor.update(raw) + decryptor.finalize())

        if len(plain) < _RANDOM_LEN + _LEN_PREFIX:
            raise DecryptError(
                f"decrypted payload is {len(plain)} bytes, too short for the 16-byte random "
                "prefix and 4-byte length"
            )
        body = plain[_RANDOM_LEN:]
        msg_len = int.from_bytes(body[:_LEN_PREFIX], "big")
        rest = body[_LEN_PREFIX:]
        if msg_len > len(rest):
            raise DecryptError(
                f"declared message length {msg_len} exceeds the {len(rest)} bytes decrypted"
            )
        msg, got_id = rest[:msg_len], rest[msg_len:]
        if not hmac.compare_digest(got_id, self._receive_id):
            raise ReceiveIdMismatchError(
                f"receive id in message ({_snippet(got_id.decode('utf-8', 'replace'))}) does not "
                f"match the configured one ({self._receive_id.decode('utf-8')!r}); check corp id"
                " / suite id configuration"
            )
        try:
            return msg.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecryptError(f"decrypted message is not valid UTF-8: {exc}") from None

    # -- callback protocol ------------------------------------------------------------------

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """Handle the GET URL-verification request; return the plaintext to echo back.

        Pass the URL-decoded query parameters (``echostr`` contains ``+``, ``/`` and ``=``).

        Raises:
            WeComCryptoError: any subclass, on a bad signature or undecryptable echostr.
        """
        if not isinstance(echostr, str):
            raise DecryptError(f"echostr must be a str, got {type(echostr).__name__}")
        _check_size(echostr, "echostr")
        self._verify_signature(msg_signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def decrypt_message(
        self, msg_signature: str, timestamp: str, nonce: str, body_xml: str | bytes
    ) -> str:
        """Verify and decrypt a POSTed callback body; return the inner XML string.

        The body looks like ``<xml><ToUserName>..</ToUserName><Encrypt><![CDATA[..]]>
        </Encrypt><AgentID>..</AgentID></xml>``. Feed the result to :func:`parse_xml`.

        Raises:
            WeComCryptoError: any subclass, on an oversized or malformed body, a bad
            signature, undecryptable ciphertext, or a foreign receive id.
        """
        fields = parse_xml(body_xml)
        encrypted = fields.get("Encrypt")
        if encrypted is None:
            raise MalformedXMLError("callback body has no <Encrypt> element")
        # Verify before decrypting: nothing unauthenticated reaches the padding check, so the
        # distinct padding/length errors cannot serve as a padding oracle.
        self._verify_signature(msg_signature, timestamp, nonce, encrypted)
        return self.decrypt(encrypted)

    def encrypt_message(
        self, xml: str, timestamp: str, nonce: str, random16: bytes | None = None
    ) -> str:
        """Encrypt and sign a reply; return the ``<xml><Encrypt>..</Nonce></xml>`` envelope."""
        encrypted = self.encrypt(xml, random16)
        signature = self.signature(timestamp, nonce, encrypted)
        return (
            "<xml>"
            f"<Encrypt>{_cdata(encrypted)}</Encrypt>"
            f"<MsgSignature>{_cdata(signature)}</MsgSignature>"
            f"<TimeStamp>{escape(timestamp)}</TimeStamp>"
            f"<Nonce>{_cdata(nonce)}</Nonce>"
            "</xml>"
        )
