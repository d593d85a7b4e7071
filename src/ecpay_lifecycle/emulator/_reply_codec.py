"""The gateway's side of the AES codec: encrypting reply data the way ECPay's servers do (R1).

The library's :class:`~ecpay_lifecycle._codec.AesCodec` URL-encodes like PHP's ``urlencode``
(upper-case hex), byte for byte as ECPay's documented examples. ECPay's servers encode their
replies .NET-style instead: lower-case hex, with ``! * ( )`` left alone [OBS]
(docs/ecpay-api.md section 2).
A decoder that follows R1 reads both; :class:`ReplyCodec` writes either, as
:attr:`EmulatorSettings.reply_url_encoding` says. Pure: no I/O, no state beyond the key.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from typing import Any, NoReturn, SupportsIndex

from Crypto.Cipher import AES

from ecpay_lifecycle._codec import Secret, not_serialisable, php_urlencode
from ecpay_lifecycle._exceptions import CodecError

from ._settings import UrlEncoding

__all__ = ["ReplyCodec", "dotnet_urlencode"]

_BLOCK = 16
_DOTNET_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!*()")
_DOTNET = tuple(
    bytes([byte]) if byte in _DOTNET_SAFE else b"+" if byte == 0x20 else b"%%%02x" % byte
    for byte in range(256)
)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dotnet_urlencode(raw: bytes) -> bytes:
    """Percent-encode ``raw`` like .NET's ``HttpUtility.UrlEncode``: lower-case hex, space as
    ``+``, and ``A-Z a-z 0-9 - _ . ! * ( )`` kept as they are."""
    return b"".join(map(_DOTNET.__getitem__, raw))


class ReplyCodec:
    """Encrypts a merchant's reply data (R1) with a chosen URL-encoding; never shows its key."""

    __slots__ = ("_iv", "_key")

    def __init__(self, key: bytes | Secret[bytes], iv: bytes | Secret[bytes]) -> None:
        """``key`` and ``iv``: the 16 bytes of HashKey and HashIV, already validated (R1)."""
        self._key, self._iv = Secret(key), Secret(iv)
        del key, iv  # kept out of the locals a traceback shows
        if len(self._key.reveal()) != _BLOCK or len(self._iv.reveal()) != _BLOCK:
            raise CodecError("the reply codec needs a 16-byte key and IV (R1)")

    def __repr__(self) -> str:
        return "ReplyCodec(key=<hidden>, iv=<hidden>)"

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise not_serialisable("ReplyCodec")

    def encrypt(self, payload: Mapping[str, Any], encoding: UrlEncoding) -> str:
        """The base64 ``Data`` for ``payload``: compact JSON, URL-encoded per ``encoding``,
        AES-128-CBC with PKCS7 padding (R1)."""
        try:
            raw = _ENCODER.encode(dict(payload)).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"payload is not JSON-serialisable: {exc}") from exc
        plain = dotnet_urlencode(raw) if encoding is UrlEncoding.DOTNET else php_urlencode(raw)
        pad = _BLOCK - len(plain) % _BLOCK
        plain += bytes([pad]) * pad
        cipher = AES.new(self._key.reveal(), AES.MODE_CBC, iv=self._iv.reveal()).encrypt(plain)
        return binascii.b2a_base64(cipher, newline=False).decode("ascii")

    def secrets(self) -> tuple[Secret[bytes], Secret[bytes]]:
        """The key and IV, still hidden: only the emulator's state file (mode 0600) holds them
        in the clear."""
        return self._key, self._iv
