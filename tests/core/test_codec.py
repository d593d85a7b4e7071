"""The AES codec (R1): ECPay's public vectors, lenient decoding, typed failures, no leaked secrets.

Ciphertexts for the lenient-decoding cases are built with an independent reference (pycryptodome's
CBC mode, ``Crypto.Util.Padding`` and ``urllib``), not with the codec under test.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import types
import urllib.parse
from typing import Any

import pytest
from Crypto.Cipher import AES
from Crypto.Util.Padding import pad
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle._codec import AesCodec, php_urlencode, url_decode
from ecpay_lifecycle._exceptions import CodecError, ConfigurationError, InvalidArgumentType

KEY = "ejCk326UnaZWKisg"
IV = "q9jcZX8Ib9LM8wYk"
CODEC = AesCodec(KEY, IV)

# docs/ecpay-api.md section 11: ECPay's published plaintext / ciphertext pairs (upper-case hex).
VECTORS = [
    (
        '{"Name":"Test","ID":"A123456789"}',
        "uvI4yrErM37XNQkXGAgRgJAgHn2t72jahaMZzYhWL1HmvH4WV18VJDP2i9pTbC+tby5nxVExLLFyAkbjbS2Dvg==",
    ),
    (
        """{"Name":"test!*'()~value"}""",
        "uvI4yrErM37XNQkXGAgRgBuDOiJoVs72Xn/rum9Ejl1DSna4HyLSoY7764PmhTR7JXb9jJWLSjCGcZEDeFiABg==",
    ),
    (
        '{"N":"1234567890"}',
        "gVwWJnIpl1m3ZDypcRAjiCctilYnQhHn4h8OzJP5IxQPov7HuysXX+jPONvrHS7Z",
    ),
    (
        '{"MerchantID":"2000132","BarCode":"/1234567"}',
        "XeEOdHpTRvxKEqs/JD9RSd16s7VtpyWVCN6AV44pKTW3DVa6yI7vKmjBRp2eulDhXoru/qBqFDBH3fEqlkMn3bbJfJBfGAq+v+SvttutYnc=",
    ),
]
LOWER_HEX_VECTOR = (
    '{"Name":"Test","ID":"A123456789"}',
    "ZD/z07UvdmL3aYz0tsVo+bFXF5VldNcns6ezyfea777KOmLiizrUNDYe+v1bh2QTT4AySf1NICgXxWXB6f7c6A==",
)


def reference_urlencode(text: str) -> str:
    """PHP urlencode (docs/ecpay-api.md section 2.1): quote_plus, nothing safe, '~' -> '%7E'."""
    return urllib.parse.quote_plus(text, safe="").replace("~", "%7E")


def reference_encrypt_raw(plain: bytes, key: str = KEY, iv: str = IV) -> str:
    """AES-128-CBC + PKCS7 + base64 of already-encoded bytes, without the codec."""
    cipher = AES.new(key.encode(), AES.MODE_CBC, iv=iv.encode())
    return base64.b64encode(cipher.encrypt(pad(plain, 16))).decode("ascii")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=6)


@pytest.mark.parametrize(("plaintext", "ciphertext"), VECTORS)
def test_encrypt_matches_public_vectors(plaintext: str, ciphertext: str) -> None:
    assert CODEC.encrypt(json.loads(plaintext)) == ciphertext


@pytest.mark.parametrize(("plaintext", "ciphertext"), [*VECTORS, LOWER_HEX_VECTOR])
def test_decrypt_reads_every_public_vector(plaintext: str, ciphertext: str) -> None:
    assert CODEC.decrypt(ciphertext) == json.loads(plaintext)


def test_lower_case_hex_vector_is_really_lower_case() -> None:
    # Guard the vector itself: it must differ from the upper-case one yet decode the same.
    assert LOWER_HEX_VECTOR[1] != VECTORS[0][1]
    encoded = re.sub(
        r"%[0-9A-F]{2}", lambda m: m.group().lower(), reference_urlencode(VECTORS[0][0])
    )
    assert encoded.startswith("%7b%22Name")
    assert reference_encrypt_raw(encoded.encode()) == LOWER_HEX_VECTOR[1]


def test_bytes_key_equals_str_key() -> None:
    codec = AesCodec(KEY.encode(), bytearray(IV.encode()))
    assert codec.encrypt({"N": "1234567890"}) == VECTORS[2][1]


@pytest.mark.parametrize(
    "encoded",
    [
        "%7B%22a%22%3A%22x+y%22%7D",  # PHP urlencode: space is '+'
        "%7B%22a%22%3A%22x%20y%22%7D",  # rawurlencode: space is %20
        "%7b%22a%22%3a%22x%20y%22%7d",  # lower-case hex
        "%7B%22a%22%3a%22x y%22%7d",  # mixed case, a raw space
        '{"a":"x y"}',  # not encoded at all
    ],
)
def test_decrypt_accepts_every_space_and_hex_spelling(encoded: str) -> None:
    assert CODEC.decrypt(reference_encrypt_raw(encoded.encode())) == {"a": "x y"}


def test_escaped_plus_stays_a_plus() -> None:
    encoded = reference_urlencode('{"a":"1+1 2"}')
    assert "%2B" in encoded
    assert "+" in encoded
    assert CODEC.decrypt(reference_encrypt_raw(encoded.encode())) == {"a": "1+1 2"}


def test_decrypt_accepts_unicode_and_slash_escapes() -> None:
    text = '{"RtnMsg":"\\u7da0\\u754c","Url":"https:\\/\\/ecpay.com.tw\\/x"}'
    data = reference_encrypt_raw(reference_urlencode(text).encode())
    assert CODEC.decrypt(data) == {"RtnMsg": "綠界", "Url": "https://ecpay.com.tw/x"}


def test_encrypt_keeps_utf8_literal_and_encodes_tilde() -> None:
    payload = {"名稱": "綠界 科技~", "x": [1, 2.5, None, True]}
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    expected = reference_encrypt_raw(reference_urlencode(text).encode())
    assert CODEC.encrypt(payload) == expected
    assert "%7E" in reference_urlencode(text)


def test_encrypt_accepts_any_mapping() -> None:
    assert CODEC.encrypt(types.MappingProxyType({"N": "1234567890"})) == VECTORS[2][1]


@given(st.text())
def test_php_urlencode_matches_reference(text: str) -> None:
    assert php_urlencode(text.encode()).decode("ascii") == reference_urlencode(text)


@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True), st.integers()))
def test_php_urlencode_fast_path_matches_reference(payload: dict[str, int]) -> None:
    text = json.dumps(payload, separators=(",", ":"))
    assert php_urlencode(text.encode()).decode("ascii") == reference_urlencode(text)


@given(st.binary())
def test_url_decode_inverts_php_urlencode(raw: bytes) -> None:
    assert url_decode(php_urlencode(raw)) == raw


@given(st.binary())
def test_url_decode_reads_lower_case_hex(raw: bytes) -> None:
    lowered = re.sub(rb"%[0-9A-F]{2}", lambda m: m.group().lower(), php_urlencode(raw))
    assert url_decode(lowered) == raw


def reference_url_decode(quoted: bytes) -> bytes | None:
    """Byte by byte: '+' is a space, '%' and two hex digits a byte; None for a bad '%'."""
    out = bytearray()
    position = 0
    while position < len(quoted):
        byte = quoted[position]
        if byte == ord("%"):
            escape = quoted[position + 1 : position + 3]
            if len(escape) < 2 or not all(c in b"0123456789abcdefABCDEF" for c in escape):
                return None
            out.append(int(escape, 16))
            position += 3
        else:
            out.append(0x20 if byte == ord("+") else byte)
            position += 1
    return bytes(out)


@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"%", b"+", b"%25", b"%2F", b"%2f", b"%22", b"%7B", b"%41", b"2"]),
            st.binary(max_size=3),
            st.builds(lambda n: b"%%%02x" % n, st.integers(0, 255)),
        ),
        max_size=30,
    ).map(b"".join)
)
def test_url_decode_matches_a_byte_by_byte_reference(quoted: bytes) -> None:
    """Each of its paths (none, the common escapes, any escapes, the error) agrees with a plain
    reading of every byte, on valid and invalid encodings alike."""
    expected = reference_url_decode(quoted)
    if expected is None:
        with pytest.raises(CodecError, match="bad percent-encoding"):
            url_decode(quoted)
    else:
        assert url_decode(quoted) == expected


@given(json_objects)
def test_round_trip_any_json_object(payload: dict[str, Any]) -> None:
    assert CODEC.decrypt(CODEC.encrypt(payload)) == payload


@given(json_objects)
def test_encrypt_is_reference_aes_of_reference_urlencode(payload: dict[str, Any]) -> None:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    assert CODEC.encrypt(payload) == reference_encrypt_raw(reference_urlencode(text).encode())


@settings(max_examples=25, deadline=None)
@given(st.lists(json_objects, min_size=1, max_size=8), st.integers(1, 4))
def test_encrypt_from_many_threads_is_reference_cbc_every_time(
    payloads: list[dict[str, Any]], threads: int
) -> None:
    """encrypt keeps one CBC chain a thread and turns it back to the IV for every message:
    messages one after another, in several threads at once on one codec, and after a message
    that failed each equal a fresh reference CBC from the IV."""
    codec = AesCodec(KEY, IV)
    texts = [json.dumps(p, ensure_ascii=False, separators=(",", ":")) for p in payloads]
    expected = [reference_encrypt_raw(reference_urlencode(text).encode()) for text in texts]
    results: dict[int, list[str]] = {}

    def run(number: int) -> None:
        out = []
        for payload in payloads:
            with pytest.raises(CodecError):
                codec.encrypt({"not json": object()})
            out.append(codec.encrypt(payload))
        results[number] = out

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert results == dict.fromkeys(range(threads), expected)


def test_a_message_that_fails_inside_the_cipher_leaves_the_next_one_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codec = AesCodec(KEY, IV)
    first = codec.encrypt({"a": 1})
    cbc = codec._chains.cbc

    def interrupted(_data: bytes) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(cbc, "encrypt", interrupted)
    with pytest.raises(KeyboardInterrupt):
        codec.encrypt({"a": 1})
    assert codec.encrypt({"a": 1}) == first  # a new chain, from the IV


@given(st.binary(min_size=1, max_size=200))
def test_decrypt_of_reference_cbc_matches_its_plaintext(raw: bytes) -> None:
    # decrypt() does CBC by hand (ECB + XOR); the reference encrypts with pycryptodome's CBC.
    text = json.dumps({"v": raw.hex()})
    assert CODEC.decrypt(reference_encrypt_raw(php_urlencode(text.encode()))) == {"v": raw.hex()}


@pytest.mark.parametrize("payload", [{"a": 1}, {"Name": "Test", "ID": "A123456789"}, {}])
def test_wrong_key_is_a_codec_error(payload: dict[str, Any]) -> None:
    other = AesCodec("0123456789abcdef", IV)
    with pytest.raises(CodecError):
        other.decrypt(CODEC.encrypt(payload))


def test_wrong_iv_garbles_only_the_first_block() -> None:
    # With CBC a wrong IV breaks the first block; the result must still be a typed error.
    other = AesCodec(KEY, "0123456789abcdef")
    with pytest.raises(CodecError):
        other.decrypt(VECTORS[0][1])


@settings(max_examples=150)
@given(st.data())
def test_tampered_ciphertext_is_codec_error_or_a_dict(data: st.DataObject) -> None:
    ciphertext = bytearray(base64.b64decode(data.draw(st.sampled_from(VECTORS))[1]))
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(ciphertext) - 1), st.integers(1, 255)),
            min_size=1,
            max_size=4,
        )
    )
    for index, mask in flips:
        ciphertext[index] ^= mask
    try:
        result = CODEC.decrypt(base64.b64encode(bytes(ciphertext)).decode("ascii"))
    except CodecError:
        return
    assert isinstance(result, dict)


@given(st.text())
def test_arbitrary_text_is_codec_error_or_a_dict(text: str) -> None:
    try:
        result = CODEC.decrypt(text)
    except CodecError:
        return
    assert isinstance(result, dict)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("not base64!", "base64"),
        ("YWJj", "multiple of 16"),  # 3 bytes
        ("", "multiple of 16"),
        ("綠界", "base64"),
        (
            "uvI4yrErM37XNQkXGAgRgJAgHn2t72jahaMZzYhWL1HmvH4WV18VJDP2i9pTbC+tby5nxVExLLFyAkbjbS2Dvg",
            "base64",
        ),
    ],
)
def test_malformed_base64_is_codec_error(data: str, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        CODEC.decrypt(data)


@pytest.mark.parametrize("data", [None, b"abc", 12, ["x"]])
def test_non_str_data_is_codec_error(data: Any) -> None:
    with pytest.raises(CodecError, match="must be a str"):
        CODEC.decrypt(data)


@pytest.mark.parametrize(
    ("plain", "reason"),
    [
        (b"%7B%22a%22%3A%ZZ%7D", "percent-encoding"),
        (b"%7B%22a%22%3A1%7", "percent-encoding"),
        (b"%FF%FE%7B%7D", "JSON text"),  # not UTF-8
        (b"\xff{}", "JSON text"),
        (b"%7B%22a%22%3A", "JSON text"),  # truncated JSON
        (b"%5B1%2C2%5D", "not an object"),  # a JSON array
        (b"%22text%22", "not an object"),
        (b"%7B%22a%22%3ANaN%7D", "JSON text"),
        (b"%7B%22a%22%3AInfinity%7D", "JSON text"),
        (b"%7B%7D%7B%7D", "JSON text"),  # extra data
    ],
)
def test_bad_plaintext_is_codec_error(plain: bytes, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        CODEC.decrypt(reference_encrypt_raw(plain))


def test_bad_padding_is_codec_error_chained_nowhere_else() -> None:
    cipher = AES.new(KEY.encode(), AES.MODE_CBC, iv=IV.encode())
    data = base64.b64encode(cipher.encrypt(b"%7B%7D" + b"\x00" * 10)).decode()
    with pytest.raises(CodecError, match="padding"):
        CODEC.decrypt(data)


def test_codec_errors_are_chained_from_the_cause() -> None:
    with pytest.raises(CodecError) as info:
        CODEC.decrypt("not base64!")
    assert info.value.__cause__ is not None


def circular() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


@pytest.mark.parametrize(
    "payload",
    [
        {"a": object()},
        {"a": math.nan},
        {"a": math.inf},
        {"a": {1, 2}},
        {("tuple", "key"): 1},
        {"a": "\ud800"},  # a lone surrogate has no UTF-8 form
        circular(),
    ],
)
def test_unserialisable_payload_is_codec_error(payload: Any) -> None:
    with pytest.raises(CodecError) as info:
        CODEC.encrypt(payload)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("payload", [[1, 2], "text", None, 3])
def test_non_mapping_payload_is_codec_error(payload: Any) -> None:
    with pytest.raises(CodecError, match="JSON object"):
        CODEC.encrypt(payload)


@pytest.mark.parametrize(
    ("key", "iv"),
    [
        (KEY[:15], IV),
        (KEY + "x", IV),
        (KEY, IV[:15]),
        (KEY, IV + "x"),
        (KEY.encode()[:15], IV),
        (KEY, IV.encode() + b"x"),
        ("", IV),
        ("綠界綠界綠界綠界綠界綠界綠界綠界", IV),  # 16 characters, not 16 ASCII bytes
        ("ejCk326UnaZWKis綠", IV),
    ],
)
def test_bad_key_or_iv_length_is_configuration_error(key: str | bytes, iv: str | bytes) -> None:
    with pytest.raises(ConfigurationError) as info:
        AesCodec(key, iv)
    message = str(info.value)
    for secret in (key, iv):
        text = secret.decode("latin-1") if isinstance(secret, bytes) else secret
        if text:
            assert text not in message
    assert info.value.__cause__ is None  # nothing chained that could carry the value
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", [None, 1234567890123456, ["x"] * 16])
def test_key_of_wrong_type_is_invalid_argument_type(key: Any) -> None:
    with pytest.raises(InvalidArgumentType):
        AesCodec(key, IV)


def test_repr_and_str_hide_key_and_iv() -> None:
    for text in (repr(CODEC), str(CODEC), repr([CODEC])):
        assert KEY not in text
        assert IV not in text
    assert not hasattr(CODEC, "__dict__")  # no vars() listing of the key either
