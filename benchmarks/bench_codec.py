"""The AES codec (R1): encrypt + decrypt of a DoAction payload against the bare AES floor.

The floor is what no codec can avoid: ``AES.new`` + CBC encrypt + base64 and back, with the
padding done inline, over the very bytes the codec hands to AES (the URL-encoded JSON, so both
sides do the same AES work). It does no JSON and no URL-encoding. Target: the codec costs at most
1.6x the floor. A second, informative line compares with the floor over the shorter raw JSON.
"""

from __future__ import annotations

import base64
import json

from Crypto.Cipher import AES

from _util import interleaved, report
from ecpay_lifecycle._codec import AesCodec, php_urlencode

KEY = b"ejCk326UnaZWKisg"
IV = b"q9jcZX8Ib9LM8wYk"
PAYLOAD = {
    "PlatformID": "",
    "MerchantID": "3002607",
    "MerchantTradeNo": "Shop20260801093052",
    "TradeNo": "2608010930521234",
    "Action": "R",
    "TotalAmount": 1999,
}


def _floor(plain: bytes) -> None:
    size = 16 - len(plain) % 16
    padded = plain + bytes([size]) * size
    data = base64.b64encode(AES.new(KEY, AES.MODE_CBC, iv=IV).encrypt(padded)).decode("ascii")
    back = AES.new(KEY, AES.MODE_CBC, iv=IV).decrypt(base64.b64decode(data))
    assert back[: -back[-1]] == plain


def main(quick: bool) -> None:
    codec = AesCodec(KEY, IV)
    raw_json = json.dumps(PAYLOAD, separators=(",", ":")).encode()
    wire_plain = php_urlencode(raw_json)

    def codec_round_trip() -> None:
        assert codec.decrypt(codec.encrypt(PAYLOAD)) == PAYLOAD

    timings = interleaved(
        {
            "codec": codec_round_trip,
            "floor": lambda: _floor(wire_plain),
            "floor_raw": lambda: _floor(raw_json),
        },
        number=200 if quick else 2000,
        repeat=3 if quick else 15,
    )
    print(report("codec encrypt+decrypt (DoAction)", timings["codec"], timings["floor"], 1.6))
    print(report("  informative: vs floor over raw JSON", timings["codec"], timings["floor_raw"]))


if __name__ == "__main__":
    main(quick=False)
