"""Shared helpers for the emulator tests: a merchant's side of the wire, built on the codec alone.

Deliberately independent of the library's client: these tests pin the emulator to the wire
contract (docs/ecpay-api.md sections 2-5), so that the client can later be tested against the
emulator.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from ecpay_lifecycle import Action
from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle.emulator import Emulator, EmulatorSettings, Endpoint

TAIPEI = dt.timezone(dt.timedelta(hours=8), "Asia/Taipei")
MID = "3002607"
KEY = "ejCk326UnaZWKisg"
IV = "q9jcZX8Ib9LM8wYk"
#: 2026-08-03 (a Monday) 10:00 Taipei: far from the 20:15 batch.
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)


def make_emulator(
    *, auto_close: bool = True, balance: int = 0, now: dt.datetime = START, **settings: Any
) -> Emulator:
    """An emulator with one merchant (MID/KEY/IV)."""
    emulator = Emulator(now=now, settings=EmulatorSettings(**settings))
    emulator.add_merchant(MID, KEY, IV, auto_close=auto_close, balance=balance)
    return emulator


class Wire:
    """The merchant's side: builds envelopes with the codec and posts them through a transport."""

    def __init__(
        self,
        emulator: Emulator,
        *,
        merchant_id: str = MID,
        key: str = KEY,
        iv: str = IV,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.emulator = emulator
        self.merchant_id = merchant_id
        self.codec = AesCodec(key, iv)
        self.http = httpx.Client(
            transport=transport or httpx.MockTransport(emulator.handler),
            base_url="https://ecpayment.ecpay.com.tw",
        )

    def envelope(
        self,
        inner: dict[str, Any],
        *,
        timestamp: float | None = None,
        merchant_id: str | None = None,
    ) -> dict[str, Any]:
        stamp = int(self.emulator.clock().timestamp()) if timestamp is None else timestamp
        return {
            "MerchantID": self.merchant_id if merchant_id is None else merchant_id,
            "RqHeader": {"Timestamp": stamp},
            "Data": self.codec.encrypt(inner),
        }

    def post(self, endpoint: Endpoint, inner: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return self.http.post(endpoint.value, json=self.envelope(inner, **kwargs))

    def call(self, endpoint: Endpoint, inner: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Post and return the decrypted inner reply; the envelope must have been accepted."""
        response = self.post(endpoint, inner, **kwargs)
        assert response.status_code == 200, response.text
        outer = response.json()
        assert outer["TransCode"] == 1, outer
        assert outer["MerchantID"] == (kwargs.get("merchant_id") or self.merchant_id)
        assert isinstance(outer["RpHeader"]["Timestamp"], int)
        return self.codec.decrypt(outer["Data"])

    def do(
        self,
        action: Action | str,
        number: str,
        amount: Any,
        *,
        trade_no: str | None = None,
        merchant_id: str | None = None,
    ) -> dict[str, Any]:
        """Send one DoAction and return the inner reply."""
        owner = merchant_id or self.merchant_id
        if trade_no is None:
            trade_no = self.emulator.order(owner, number).trade_no
        inner = {
            "MerchantID": owner,
            "MerchantTradeNo": number,
            "TradeNo": trade_no,
            "Action": str(action),
            "TotalAmount": amount,
        }
        return self.call(Endpoint.DO_ACTION, inner)

    def detail(self, number: str) -> dict[str, Any]:
        return self.call(
            Endpoint.CREDIT_DETAIL, {"MerchantID": self.merchant_id, "MerchantTradeNo": number}
        )

    def query(self, number: str) -> dict[str, Any]:
        return self.call(
            Endpoint.QUERY_TRADE, {"MerchantID": self.merchant_id, "MerchantTradeNo": number}
        )


def ok(reply: dict[str, Any]) -> bool:
    """A DoAction succeeded (RtnCode 1); never read from RtnMsg (docs/ecpay-api.md section 2)."""
    return reply["RtnCode"] == 1


def state_of(emulator: Emulator) -> tuple[Any, ...]:
    """Everything observable about the emulator's orders and balance, to prove nothing changed."""
    return (emulator.orders(), emulator.balance(MID), emulator.now)
