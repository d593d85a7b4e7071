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
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, NoReturn, SupportsIndex, TypeVar

from Crypto.Cipher import AES

from ._exceptions import (
    CodecError,
    ConfigurationError,
    EcpayError,
    InvalidArgumentType,
    SecretNotSerialisable,
)

__all__ = [
    "AesCodec",
    "Secret",
    "key_problem",
    "not_serialisable",
    "php_urlencode",
    "url_decode",
]

_T = TypeVar("_T")

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
#: Percent-encoded bytes in which every '%' starts an escape of two hex digits.
_ESCAPED = re.compile(rb"[^%]*(?:%[0-9A-Fa-f]{2}[^%]*)*")
_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")


def _percent_last(escape: bytes) -> bool:
    return escape == b"%25"


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
    # Fast path for upper-case JSON punctuation and the slash of ECPay's dates. Every '%' in a
    # valid encoding starts an escape and a replacement never makes a '%', so replacing whole
    # escapes is exact; anything still holding a '%' takes the next path.
    common = (
        text.replace(b"%22", b'"')
        .replace(b"%2C", b",")
        .replace(b"%3A", b":")
        .replace(b"%7B", b"{")
        .replace(b"%7D", b"}")
        .replace(b"%2F", b"/")
    )
    if b"%" not in common:
        return common
    if _ESCAPED.fullmatch(common):
        # Still valid, other escapes: replace each distinct one, %25 ('%') last so that no
        # '%' it makes is read as the start of an escape.
        for escape in sorted(set(_ESCAPE.findall(common)), key=_percent_last):
            common = common.replace(escape, _UNHEX[escape[1:]])
        return common
    # A '%' that does not start an escape: find it, to say which.
    first, *rest = text.split(b"%")
    out = [first]
    for part in rest:
        byte = _UNHEX.get(part[:2])
        if byte is None:
            raise CodecError(f"bad percent-encoding: %{part[:2]!r} is not an escape (R1)")
        out.append(byte)
        out.append(part[2:])
    return b"".join(out)


class Secret(Generic[_T]):
    """A value nothing may show: a HashKey, a HashIV, their bytes, or an argument that may be one.

    ``repr`` and ``str`` are ``<hidden>``. The value lives in a closure, not in an attribute, so a
    traceback printed with its locals (pytest ``--showlocals``, Sentry) or a tool that walks their
    attributes does not reach it; :meth:`reveal` is the one way out. ``pickle`` and ``copy``
    raise :class:`SecretNotSerialisable`. Secrets compare by value.
    """

    __slots__ = ("_value",)
    _value: Callable[[], _T]

    def __init__(self, value: _T | Secret[_T]) -> None:
        if isinstance(value, Secret):
            self._value = value._value
            return

        def held() -> _T:
            return value

        self._value = held

    def reveal(self) -> _T:
        """The value itself; keep it out of named locals of a frame that may raise."""
        return self._value()

    def __repr__(self) -> str:
        return "<hidden>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return bool(self._value() == other._value())

    def __hash__(self) -> int:
        return hash(self._value())

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise not_serialisable("a HashKey or HashIV")


def not_serialisable(holder: str) -> SecretNotSerialisable:
    """The error ``pickle`` and ``copy`` of ``holder`` raise, saying why and what to do instead."""
    return SecretNotSerialisable(
        f"{holder} cannot be pickled or copied: secrets are never serialised (a pickle would "
        "carry the HashKey and HashIV in the clear); build Credentials from the environment in "
        "each process instead"
    )


def key_problem(given: Secret[Any], field: str) -> EcpayError | None:
    """What is wrong with a HashKey or HashIV (exactly 16 bytes; a ``str`` must be ASCII, R1), or
    ``None``. The error is returned, not raised, so that no frame holding the value is in its
    traceback; its message names ``field`` and the length, never the value."""
    value = given.reveal()
    if isinstance(value, str):
        if not value.isascii():
            return ConfigurationError(f"{field} must be ASCII text (R1)")
    elif not isinstance(value, bytes | bytearray):
        return InvalidArgumentType(f"{field} must be str or bytes, not {type(value).__name__}")
    if len(value) != _BLOCK:
        return ConfigurationError(f"{field} must be exactly 16 bytes (R1), got {len(value)}")
    return None


def _key_bytes(given: Secret[Any]) -> Secret[bytes]:
    """The 16 bytes of a HashKey or HashIV that :func:`key_problem` accepted."""
    value = given.reveal()
    return Secret(value.encode("ascii") if isinstance(value, str) else bytes(value))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class AesCodec:
    """Encrypts and decrypts ECPay's ``Data`` field with one merchant's HashKey and HashIV (R1).

    Construction validates the key and IV (exactly 16 bytes; a ``str`` must be ASCII) and raises
    :class:`ConfigurationError` otherwise. Neither ever appears in ``repr``, ``str``, an error
    message or the locals of a frame in an error's traceback; ``pickle`` and ``copy`` raise
    :class:`SecretNotSerialisable`. Instances may be shared between threads: the one state a
    message leaves behind (where each thread's CBC chain stands, see :meth:`encrypt`) is per
    thread.
    """

    __slots__ = ("_chains", "_ecb", "_iv", "_key", "_turn")

    def __init__(
        self, hash_key: str | bytes | Secret[Any], hash_iv: str | bytes | Secret[Any]
    ) -> None:
        # The arguments leave this frame's locals before anything is checked: a traceback printed
        # with its locals would show them when one of them is refused.
        key, iv = Secret(hash_key), Secret(hash_iv)
        del hash_key, hash_iv
        problem = key_problem(key, "hash_key") or key_problem(iv, "hash_iv")
        if problem is not None:
            raise problem
        self._key = _key_bytes(key)
        self._iv = _key_bytes(iv)
        # ECB objects are stateless, so one is built here and reused by decrypt() below.
        self._ecb = AES.new(self._key.reveal(), AES.MODE_ECB)
        # D(IV), the block whose encryption is the IV (see encrypt), hidden like the IV itself.
        self._turn = Secret(int.from_bytes(self._ecb.decrypt(self._iv.reveal())))
        self._chains = threading.local()

    def __repr__(self) -> str:
        return "AesCodec(hash_key=<hidden>, hash_iv=<hidden>)"

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise not_serialisable("AesCodec")

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
        # CBC from the fixed IV without building a cipher a message (its key schedule was half
        # of encrypt's cost). Each thread keeps one CBC object, built from a zero IV, whose chain
        # goes on from the last block it produced, C. A first block of D(IV) xor C encrypts to
        # E(D(IV)) = IV, which puts the chain where a fresh cipher from the IV would start; that
        # block is dropped. Neither D(IV) nor the IV block gets a name (a traceback's locals).
        chain = self._chains
        cbc = getattr(chain, "cbc", None)
        if cbc is None:
            cbc = chain.cbc = AES.new(self._key.reveal(), AES.MODE_CBC, iv=bytes(_BLOCK))
            chain.last = 0
        try:
            cipher = cbc.encrypt((self._turn.reveal() ^ chain.last).to_bytes(_BLOCK) + plain)[
                _BLOCK:
            ]
            chain.last = int.from_bytes(cipher[-_BLOCK:])
        except BaseException:
            chain.cbc = None  # where its chain stands is unknown: the next message starts anew
            raise
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
        # message and one XOR, instead of building a CBC object per message. Neither D(C) nor
        # the IV gets a name: a traceback's locals would show the IV, or D(C) xor P would.
        plain = (
            int.from_bytes(self._ecb.decrypt(cipher))
            ^ int.from_bytes(self._iv.reveal() + cipher[:-_BLOCK])
        ).to_bytes(size)
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
