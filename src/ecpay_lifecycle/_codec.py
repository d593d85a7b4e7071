"""The AES envelope codec of ECPay's JSON APIs (docs/ecpay-api.md section 2.1, R1). Pure: no I/O.

Encrypt: compact JSON (UTF-8 kept literal) -> PHP ``urlencode`` -> AES-128-CBC with PKCS7
padding (key and IV are the 16 ASCII bytes of HashKey and HashIV) -> standard base64.
Decrypt is the reverse and is lenient where ECPay's peers differ (lower-case hex, ``%20`` or
``+`` for a space, ``\\uXXXX`` and ``\\/`` escapes) and strict everywhere else: anything that does
not decrypt and parse to a JSON object is a :class:`~ecpay_lifecycle.CodecError`.

The codec sits under ``_protocol``, which builds envelopes with it and checks what it decrypts
against the request (R2); the emulator uses the same codec for the gateway's side.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from Crypto.Cipher import AES

from ._exceptions import CodecError, ConfigurationError, InvalidArgumentType

__all__ = ["AesCodec", "php_urlencode", "url_decode"]

_BLOCK = 16
_PADS = tuple(bytes([n]) * n for n in range(_BLOCK + 1))

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_QUOTED = tuple(
    bytes([byte]) if byte in _SAFE else b"+" if byte == 0x20 else b"%%%02X" % byte
    for byte in range(256)
)
_ONLY_SAFE_OR_ESCAPES = re.compile(rb"[A-Za-z0-9\-_.%]*")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_UNHEX = {
    bytes([hi, lo]): bytes([int(bytes([hi, lo]), 16)]) for hi in _HEX_DIGITS for lo in _HEX_DIGITS
}


def php_urlencode(raw: bytes) -> bytes:
    """Percent-encode ``raw`` exactly like PHP's ``urlencode`` (R1).

    Everything except ``A-Z a-z 0-9 - _ .`` becomes ``%XX`` with upper-case hex and a space
    becomes ``+``; unlike ``urllib.parse.quote_plus``, ``~`` is encoded too.
    """
    # Fast path: a request is ASCII letters and digits inside JSON punctuation, so six
    # C-level replaces usually finish the job. '%' goes first so that no escape is re-escaped.
    quoted = (
        raw.replace(b"%", b"%25")
        .replace(b'"', b"%22")
        .replace(b",", b"%2C")
        .replace(b":", b"%3A")
        .replace(b"{", b"%7B")
        .replace(b"}", b"%7D")
    )
    # If only safe bytes and escapes remain, every byte left untouched was safe: done.
    if _ONLY_SAFE_OR_ESCAPES.fullmatch(quoted):
        return quoted
    return b"".join(map(_QUOTED.__getitem__, raw))


def url_decode(quoted: bytes) -> bytes:
    """Undo :func:`php_urlencode`; ``+`` is a space and hex may be upper- or lower-case (R1).

    Bytes that should have been escaped but were not are kept as they are; a ``%`` that is not
    followed by two hex digits raises :class:`CodecError`.
    """
    # '+' first: an escaped plus (%2B) must survive as '+'.
    text = quoted.replace(b"+", b" ")
    if b"%" not in text:
        return text
    # Fast path for upper-case JSON punctuation. Every '%' in a valid encoding starts an escape,
    # so replacing whole escapes is exact; anything still holding a '%' takes the general path.
    common = (
        text.replace(b"%22", b'"')
        .replace(b"%2C", b",")
        .replace(b"%3A", b":")
        .replace(b"%7B", b"{")
        .replace(b"%7D", b"}")
    )
    if b"%" not in common:
        return common
    first, *rest = text.split(b"%")
    out = [first]
    for part in rest:
        byte = _UNHEX.get(part[:2])
        if byte is None:
            raise CodecError(f"bad percent-encoding: %{part[:2]!r} is not an escape (R1)")
        out.append(byte)
        out.append(part[2:])
    return b"".join(out)


def _key_bytes(value: object, field: str) -> bytes:
    """The 16 bytes of a HashKey or HashIV; the message names the length, never the value."""
    if isinstance(value, str):
        if not value.isascii():
            raise ConfigurationError(f"{field} must be ASCII text (R1)")
        value = value.encode("ascii")
    elif isinstance(value, bytearray):
        value = bytes(value)
    elif not isinstance(value, bytes):
        raise InvalidArgumentType(f"{field} must be str or bytes, not {type(value).__name__}")
    if len(value) != _BLOCK:
        raise ConfigurationError(f"{field} must be exactly 16 bytes (R1), got {len(value)}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class AesCodec:
    """Encrypts and decrypts ECPay's ``Data`` field with one merchant's HashKey and HashIV (R1).

    Construction validates the key and IV (exactly 16 bytes; a ``str`` must be ASCII) and raises
    :class:`ConfigurationError` otherwise. Neither ever appears in ``repr``, ``str`` or an error
    message. Instances hold no per-message state and may be shared between threads.
    """

    __slots__ = ("_ecb", "_iv", "_key")

    def __init__(self, hash_key: str | bytes, hash_iv: str | bytes) -> None:
        self._key = _key_bytes(hash_key, "hash_key")
        self._iv = _key_bytes(hash_iv, "hash_iv")
        # ECB objects are stateless, so one is built here and reused by decrypt() below.
        self._ecb = AES.new(self._key, AES.MODE_ECB)

    def __repr__(self) -> str:
        return "AesCodec(hash_key=<hidden>, hash_iv=<hidden>)"

    def encrypt(self, payload: Mapping[str, Any]) -> str:
        """The base64 ``Data`` for ``payload``, byte-for-byte what ECPay's examples produce (R1).

        ``payload`` must be a JSON object of JSON values; anything else raises
        :class:`CodecError`.
        """
        if not isinstance(payload, Mapping):
            raise CodecError(
                f"payload must be a JSON object (mapping), not {type(payload).__name__}"
            )
        try:
            text = _ENCODER.encode(payload if isinstance(payload, dict) else dict(payload))
            raw = text.encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"payload is not JSON-serialisable: {exc}") from exc
        plain = php_urlencode(raw)
        plain += _PADS[_BLOCK - len(plain) % _BLOCK]
        cipher = AES.new(self._key, AES.MODE_CBC, iv=self._iv).encrypt(plain)
        return binascii.b2a_base64(cipher, newline=False).decode("ascii")

    def decrypt(self, data: str) -> dict[str, Any]:
        """The JSON object inside a base64 ``Data`` value (R1).

        Any failure (not base64, wrong key, bad padding, bad percent-encoding, not UTF-8, not
        JSON, not a JSON object) raises :class:`CodecError`; nothing else escapes.
        """
        if not isinstance(data, str):
            raise CodecError(f"Data must be a str, not {type(data).__name__}")
        try:
            cipher = binascii.a2b_base64(data, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise CodecError(f"Data is not standard base64: {exc}") from exc
        size = len(cipher)
        if size == 0 or size % _BLOCK:
            raise CodecError(f"Data is {size} bytes, not a positive multiple of 16 (R1)")
        # CBC decryption is P_i = D(C_i) xor C_(i-1) with C_0 = IV: one ECB call over the whole
        # message and one XOR, instead of building a CBC object per message.
        mixed = self._ecb.decrypt(cipher)
        chain = self._iv + cipher[:-_BLOCK]
        plain = (int.from_bytes(mixed) ^ int.from_bytes(chain)).to_bytes(size)
        pad = plain[-1]
        if not 1 <= pad <= _BLOCK or not plain.endswith(_PADS[pad]):
            raise CodecError("Data has bad PKCS7 padding: wrong HashKey/HashIV or tampered (R1)")
        try:
            text = url_decode(plain[:-pad]).decode("utf-8")
            value = _DECODER.decode(text)
        except (ValueError, RecursionError) as exc:
            raise CodecError(f"Data does not hold JSON text: {exc}") from exc
        if not isinstance(value, dict):
            raise CodecError(f"Data holds JSON {type(value).__name__}, not an object (R1)")
        return value
