"""Secrets never leak (issue 11 item 5): one test per channel a HashKey or HashIV could take.

The channels: the repr and str of everything that holds them; the locals of every library frame
in the traceback of a reply that does not decrypt or of a constructor that refuses its arguments
(walked, and formatted as pytest ``--showlocals`` and ``traceback``'s ``capture_locals`` print
them); exception messages; log records at every level through a whole flow; the CLI's ``--json``
output; the served emulator's admin routes, event log, console page, command line (the process
list) and console output; ``pickle`` and ``copy``.

A secret counts as leaked when any 8 characters of it in a row, its bytes in hex or its base64
show up. The code under test is always called from a frame whose locals hold no secret (a
module-level function, or a helper given only objects that hide theirs), so whatever a
formatted traceback shows comes from the library.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import datetime as dt
import functools
import io
import json
import logging
import multiprocessing
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import httpx
import pytest
from _pytest._code import ExceptionInfo
from Crypto.Cipher import AES

from ecpay_lifecycle import (
    TAIPEI,
    AesCodec,
    AsyncClient,
    Client,
    CodecError,
    ConfigurationError,
    Credentials,
    EcpayError,
    InMemoryJournal,
    InvalidArgument,
    InvalidArgumentType,
    OutcomeUnknown,
    RateLimited,
    SecretNotSerialisable,
    SQLiteJournal,
    WrongCredentials,
)
from ecpay_lifecycle._cli import main
from ecpay_lifecycle._codec import Secret
from ecpay_lifecycle._demo import run_demo
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault, serving
from ecpay_lifecycle.emulator._reply_codec import ReplyCodec

MID = "3002607"
# Made-up and distinctive: no 8 characters of either occur anywhere by chance.
KEY = "HkeyZ9q3Wv8Lm2Xa"
IV = "HivY7p4Tn6Rb1Qc5"
OTHER_IV = "Jq0Wm3Zk8Vx2Ny6T"  # a wrong HashIV, a secret too
NOW = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)
LIBRARY = "ecpay_lifecycle"


def _needles(secret: str) -> set[str]:
    raw = secret.encode()
    windows = {secret[i : i + 8] for i in range(len(secret) - 7)}
    hexed = raw.hex()
    return (
        windows
        | {hexed[i : i + 16] for i in range(0, len(hexed) - 15, 2)}
        | {base64.b64encode(raw).decode()[:16]}
    )


NEEDLES = frozenset(_needles(KEY) | _needles(IV) | _needles(OTHER_IV))


def leaked(text: str) -> list[str]:
    """The needles found in ``text``."""
    return sorted(needle for needle in NEEDLES if needle in text)


def assert_clean(text: str, where: str) -> None:
    found = leaked(text)
    assert not found, f"{where} shows a secret ({found[:3]}): {text[:2000]}"


# -- walking objects as error reporters do ----------------------------------------------------

_LEAVES = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
    types.FrameType,
    types.TracebackType,
)


def _safe(render: Callable[[object], str], obj: object) -> str:
    try:
        return render(obj)
    except Exception as error:  # a repr that fails shows nothing
        return f"<unrepresentable: {type(error).__name__}>"


def _children(obj: object) -> Iterator[object]:
    if isinstance(obj, dict | types.MappingProxyType):
        for key, value in list(obj.items())[:200]:
            yield key
            yield value
        return
    if isinstance(obj, list | tuple | set | frozenset | collections.deque):
        yield from list(obj)[:200]
        return
    if isinstance(obj, types.MethodType):
        yield obj.__self__
        return
    if isinstance(obj, functools.partial):
        yield obj.func
        yield obj.args
        yield obj.keywords
        return
    if isinstance(obj, BaseException):
        yield obj.args
        yield obj.__cause__
        yield obj.__context__
    if hasattr(obj, "__dict__"):
        yield vars(obj)
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                yield getattr(obj, name, None)


def walk(obj: object, depth: int, seen: set[int] | None = None) -> Iterator[tuple[str, str]]:
    """``(type name, text)`` for ``obj`` and what it holds, ``depth`` levels down: its repr and
    str, and the value of every str and bytes. Like an error reporter, it goes into containers,
    attributes and slots, never into a function's closure (where :class:`Secret` keeps the
    value, the one way to it being ``reveal()``)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None:
        return
    seen.add(id(obj))
    name = type(obj).__name__
    if isinstance(obj, str):
        yield name, obj
        return
    if isinstance(obj, bytes | bytearray | memoryview):
        yield name, bytes(obj).decode("latin-1")
        yield name, bytes(obj).hex()
        return
    yield name, _safe(repr, obj)
    yield name, _safe(str, obj)
    if depth <= 0 or isinstance(obj, _LEAVES):
        return
    for child in _children(obj):
        yield from walk(child, depth - 1, seen)


def assert_object_clean(obj: object, where: str, depth: int = 3) -> None:
    for name, text in walk(obj, depth):
        assert_clean(text, f"{where} (through a {name})")


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def library_frames(error: BaseException) -> list[types.FrameType]:
    """Every frame of the library in the tracebacks of ``error`` and of its causes."""
    frames = []
    for current in _chain(error):
        for frame, _ in traceback.walk_tb(current.__traceback__):
            if LIBRARY in frame.f_code.co_filename:
                frames.append(frame)
    return frames


def assert_traceback_clean(error: BaseException, *, depth: int = 3) -> None:
    """No secret in the locals of a library frame (walked ``depth`` levels), nor in the
    traceback as pytest ``--showlocals`` and ``traceback``'s ``capture_locals`` format it."""
    frames = library_frames(error)
    assert frames, "the error should come from the library"
    for frame in frames:
        where = f"a local of {frame.f_code.co_qualname} ({frame.f_code.co_filename})"
        for local, value in frame.f_locals.items():
            assert_object_clean(value, f"{where}: {local}", depth)
    shown = ExceptionInfo.from_exception(error).getrepr(showlocals=True, style="long", chain=True)
    assert_clean(str(shown), "pytest's --showlocals report")
    captured = traceback.TracebackException.from_exception(error, capture_locals=True)
    assert_clean("".join(captured.format()), "traceback with capture_locals")


def raised(call: Callable[..., object], *args: object) -> BaseException:
    """The error ``call(*args)`` raises; the caller's frame holds only ``call`` and ``args``."""
    try:
        call(*args)
    except Exception as error:  # any error is examined by the caller
        return error
    raise AssertionError(f"{call!r} did not raise")


# -- what the tests drive ---------------------------------------------------------------------


def make_emulator() -> Emulator:
    emulator = Emulator(now=NOW)
    emulator.add_merchant(MID, KEY, IV, balance=10**7)
    for order in ("A1", "B2", "C3", "D4", "E5", "F6"):
        emulator.authorize(MID, order, 1000)
    return emulator


def make_client(emulator: Emulator, *, iv: str = IV, journal: Any = None) -> Client:
    return Client(
        Credentials(MID, KEY, iv),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=journal,
    )


@pytest.fixture
def emulator() -> Emulator:
    return make_emulator()


# -- channel: repr and str --------------------------------------------------------------------


def test_reprs_of_credentials_codec_clients_journals_and_emulator_hide_the_secrets(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    credentials = Credentials(MID, KEY, IV, platform_id="P123", auto_close=False)
    journal = SQLiteJournal(tmp_path / "ecpay.db")
    client = make_client(emulator, journal=journal)
    client.capture("A1")
    aclient = AsyncClient(credentials, transport=httpx.MockTransport(emulator.handler))
    shown: list[object] = [
        credentials,
        credentials.codec,
        credentials.hash_key,
        credentials.hash_iv,
        Secret(KEY),
        Secret(KEY.encode()),
        AesCodec(KEY.encode(), IV.encode()),
        ReplyCodec(KEY.encode(), IV.encode()),
        attrs.asdict(credentials),
        attrs.astuple(credentials),
        client,
        aclient,
        journal,
        InMemoryJournal(),
        list(journal.for_order(MID, "A1")),
        emulator,
        emulator.asgi_app,
        emulator.merchants(),
        emulator.order(MID, "A1"),
        list(emulator.events),
    ]
    for obj in shown:
        for text in (repr(obj), str(obj), f"{obj}", f"{obj!r:>10}"):
            assert_clean(text, f"the repr of a {type(obj).__name__}")
    assert repr(credentials.hash_key) == str(credentials.hash_key) == "<hidden>"
    # An error reporter that walks attributes (not closures) stops at the Secret.
    for obj in (credentials, client, emulator, journal):
        assert_object_clean(obj, f"the attributes of a {type(obj).__name__}", depth=12)
    # The APIs that existed keep working: the codec, equality, evolve, the one way out.
    assert credentials.codec.decrypt(AesCodec(KEY, IV).encrypt({"a": 1})) == {"a": 1}
    assert credentials == Credentials(MID, KEY, IV, platform_id="P123", auto_close=False)
    assert credentials != Credentials(MID, KEY, OTHER_IV, platform_id="P123", auto_close=False)
    assert hash(credentials) == hash(
        Credentials(MID, KEY, IV, platform_id="P123", auto_close=False)
    )
    evolved = attrs.evolve(credentials, auto_close=True)
    assert evolved.auto_close is True
    assert evolved.codec.decrypt(credentials.codec.encrypt({"b": 2})) == {"b": 2}
    assert credentials.hash_key.reveal() == KEY
    client.close()
    journal.close()


# -- channel: locals when a reply does not decrypt --------------------------------------------


def _cipher(plain: bytes) -> str:
    """``Data`` under KEY/IV holding ``plain`` (PKCS7-padded), whatever ``plain`` is."""
    pad = 16 - len(plain) % 16
    cipher = AES.new(KEY.encode(), AES.MODE_CBC, iv=IV.encode()).encrypt(plain + bytes([pad]) * pad)
    return base64.b64encode(cipher).decode()


def _under_other_iv() -> str:
    return AesCodec(KEY, OTHER_IV).encrypt({"RtnCode": 1, "RtnMsg": "Success"})


DECRYPT_FAILURES = {
    "wrong key": _under_other_iv(),
    "bad percent-encoding": _cipher(b"%7B%zz"),
    "not UTF-8": _cipher(b"\xff\xfe"),
    "not JSON": _cipher(b"not+json"),
    "not an object": _cipher(b"%5B1%5D"),
    "bad length": base64.b64encode(b"x" * 15).decode(),
}


@pytest.mark.parametrize("data", DECRYPT_FAILURES.values(), ids=DECRYPT_FAILURES.keys())
def test_no_secret_in_the_locals_when_data_does_not_decrypt(data: str) -> None:
    codec = Credentials(MID, KEY, IV).codec
    error = raised(codec.decrypt, data)
    assert isinstance(error, CodecError)
    assert_clean(str(error), "the CodecError's message")
    assert_traceback_clean(error)


def _query(client: Client) -> None:
    client.query("C3")


def _capture(client: Client) -> None:
    client.capture("D4")


def _async_query(emulator: Emulator) -> None:
    async def query() -> None:
        async with AsyncClient(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(emulator.async_handler),
            clock=emulator.clock,
        ) as client:
            await client.query("C3")

    asyncio.run(query())


def test_no_secret_in_the_locals_when_a_reply_does_not_decrypt_in_a_client(
    emulator: Emulator,
) -> None:
    emulator.faults.inject(Fault.GARBLED_DATA, endpoint=Endpoint.CREDIT_DETAIL, times=None)
    with make_client(emulator) as client:
        error = raised(_query, client)
        assert isinstance(error, CodecError)
        assert "decrypt" in {frame.f_code.co_name for frame in library_frames(error)}
        assert_traceback_clean(error, depth=4)
        error = raised(_async_query, emulator)
        assert isinstance(error, CodecError)
        assert_traceback_clean(error, depth=4)
        emulator.faults.clear()
        # A DoAction whose reply does not decrypt, and then the query that would settle it:
        # its outcome is unknown, caused by the codec.
        emulator.faults.inject(Fault.GARBLED_DATA, endpoint=Endpoint.DO_ACTION)
        emulator.faults.inject(
            Fault.GARBLED_DATA, endpoint=Endpoint.CREDIT_DETAIL, times=None, after_do_action=True
        )
        error = raised(_capture, client)
        assert isinstance(error, OutcomeUnknown)
        assert "decrypt" in {frame.f_code.co_name for frame in library_frames(error)}
        assert_traceback_clean(error, depth=4)


# -- channels: locals and messages when a constructor refuses its arguments -------------------


def _registered() -> Emulator:
    """An emulator that has merchant MID already."""
    emulator = Emulator(now=NOW)
    emulator.add_merchant(MID, KEY, IV)
    return emulator


#: (the call, the error, the argument its message names)
REFUSALS: dict[str, tuple[Callable[[], object], type[EcpayError], str]] = {
    "key too short": (lambda: Credentials(MID, KEY[:15], IV), ConfigurationError, "hash_key"),
    "iv too long": (lambda: Credentials(MID, KEY, IV + "!"), ConfigurationError, "hash_iv"),
    "key not ASCII": (lambda: Credentials(MID, KEY[:15] + "é", IV), ConfigurationError, "hash_key"),
    "key not text": (
        lambda: Credentials(MID, [KEY], IV),  # type: ignore[arg-type]
        InvalidArgumentType,
        "hash_key",
    ),
    "bad merchant id": (
        lambda: Credentials("3002-607", KEY, IV),
        ConfigurationError,
        "merchant_id",
    ),
    "key, id, iv": (lambda: Credentials(KEY, MID, IV), ConfigurationError, "merchant_id"),
    "iv, key, id": (lambda: Credentials(IV, KEY, MID), ConfigurationError, "merchant_id"),
    "key as platform": (
        lambda: Credentials(MID, KEY, IV, platform_id=KEY),
        ConfigurationError,
        "platform_id",
    ),
    "key as auto_close": (
        lambda: Credentials(MID, KEY, IV, auto_close=KEY),  # type: ignore[arg-type]
        InvalidArgumentType,
        "auto_close",
    ),
    "codec iv short": (lambda: AesCodec(KEY, IV[:15]), ConfigurationError, "hash_iv"),
    "codec id, key": (lambda: AesCodec(MID, KEY), ConfigurationError, "hash_key"),
    "codec no iv": (
        lambda: AesCodec(KEY, None),  # type: ignore[arg-type]
        InvalidArgumentType,
        "hash_iv",
    ),
    "reply codec iv short": (
        lambda: ReplyCodec(KEY.encode(), IV.encode()[:15]),
        CodecError,
        "IV",
    ),
    "emulator key, id, iv": (
        lambda: _registered().add_merchant(KEY, MID, IV),
        InvalidArgument,
        "merchant_id",
    ),
    "emulator iv short": (
        lambda: _registered().add_merchant("2000132", KEY, IV[:15]),
        ConfigurationError,
        "hash_iv",
    ),
    "emulator key as platform": (
        lambda: _registered().add_merchant("2000132", KEY, IV, platform_id=IV),
        InvalidArgument,
        "platform_id",
    ),
    "emulator bad balance": (
        lambda: _registered().add_merchant("2000132", KEY, IV, balance=-1),
        InvalidArgument,
        "balance",
    ),
    "emulator twice": (
        lambda: _registered().add_merchant(MID, KEY, IV),
        InvalidArgument,
        "already registered",
    ),
    "client bad option": (
        lambda: Client(Credentials(MID, KEY, IV), fence_margin=-1),
        InvalidArgument,
        "fence_margin",
    ),
    "emulator state refused": (
        lambda: Emulator.from_state(_state_with_a_bad_field()),
        ConfigurationError,
        "event_seq",
    ),
}


def _state_with_a_bad_field() -> dict[str, Any]:
    """A saved emulator state (it holds HashKey and HashIV in the clear) with one bad field."""
    return {**_registered().dump_state(), "event_seq": "x"}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_no_secret_in_the_locals_when_a_constructor_refuses_its_arguments(
    case: tuple[Callable[[], object], type[EcpayError], str],
) -> None:
    call, kind, _ = case
    error = raised(call)
    assert isinstance(error, kind)
    assert_traceback_clean(error)


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_error_messages_name_the_argument_never_its_value(
    case: tuple[Callable[[], object], type[EcpayError], str],
) -> None:
    call, kind, named = case
    error = raised(call)
    assert isinstance(error, kind)
    assert named in str(error)
    for text in (str(error), repr(error), *map(str, error.args)):
        assert_clean(text, "the message")
    assert_object_clean(error, "the error's attributes")


def test_swapped_arguments_are_named_as_such() -> None:
    error = raised(REFUSALS["key, id, iv"][0])
    assert str(error) == (
        "merchant_id must be 1-10 letters or digits, got 16 characters, the length of a "
        "HashKey or HashIV: are the arguments swapped?"
    )


# -- channel: logs ----------------------------------------------------------------------------


def _flow(emulator: Emulator, tmp_path: pathlib.Path) -> None:
    """Everything a shop's process does, successes and failures, each failure caught."""
    journal = SQLiteJournal(tmp_path / "flow.db")
    with make_client(emulator, journal=journal) as client:
        client.capture("A1")
        client.refund("A1", 100)
        # A lost reply settled by a query, then one that a failing query leaves unknown.
        emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
        client.capture("B2")
        emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
        emulator.faults.inject(
            Fault.SERVER_ERROR_BEFORE_APPLY, endpoint=Endpoint.CREDIT_DETAIL, after_do_action=True
        )
        assert isinstance(raised(client.refund, "B2", 100), OutcomeUnknown)
        emulator.faults.inject(Fault.GARBLED_DATA, endpoint=Endpoint.CREDIT_DETAIL)
        assert isinstance(raised(client.query, "C3"), CodecError)
        emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
        assert isinstance(raised(client.capture, "E5"), OutcomeUnknown)
        emulator.advance(dt.timedelta(minutes=20))
        client.reconcile("B2")
        client.sweep()
        emulator.faults.inject(Fault.RATE_LIMITED)
        assert isinstance(raised(client.query, "F6"), RateLimited)
        assert isinstance(raised(client.query, "F6"), RateLimited)  # remembered
    with make_client(emulator, iv=OTHER_IV) as wrong:
        assert isinstance(raised(wrong.query, "D4"), WrongCredentials)
    # Over real HTTP, where httpcore logs at DEBUG.
    with (
        serving(emulator) as url,
        Client(Credentials(MID, KEY, IV), base_url=url, clock=emulator.clock) as served,
    ):
        served.query("A1")
        emulator.faults.inject(Fault.GARBLED_DATA, endpoint=Endpoint.CREDIT_DETAIL)
        assert isinstance(raised(served.query, "C3"), CodecError)
    assert isinstance(raised(REFUSALS["key, id, iv"][0]), ConfigurationError)
    assert isinstance(raised(REFUSALS["emulator key, id, iv"][0]), InvalidArgument)
    journal.close()


def test_no_secret_in_any_log_record_at_any_level(
    emulator: Emulator, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _flow(emulator, tmp_path)
    records = caplog.records
    assert {r.name.split(".")[0] for r in records} >= {"ecpay_lifecycle", "httpx"}
    assert {r.levelno for r in records} >= {logging.DEBUG, logging.INFO, logging.WARNING}
    assert_clean(caplog.text, "the captured log")
    for record in records:
        where = f"log record {record.name}:{record.lineno}"
        assert_clean(record.getMessage(), where)
        # The structured fields (``extra``) a JSON formatter would print, and the arguments.
        for field, value in vars(record).items():
            if field != "exc_info":
                assert_object_clean(value, f"{where} field {field}")
        if record.exc_info and record.exc_info[1] is not None:
            assert_traceback_clean(record.exc_info[1])


# -- channel: the command's --json output -----------------------------------------------------


def _environment(monkeypatch: pytest.MonkeyPatch, url: str, **changes: str) -> None:
    settings = {
        "ECPAY_MERCHANT_ID": MID,
        "ECPAY_HASH_KEY": KEY,
        "ECPAY_HASH_IV": IV,
        "ECPAY_AUTO_CLOSE": "0",
        "ECPAY_BASE_URL": url,
    }
    for name, value in {**settings, **changes}.items():
        monkeypatch.setenv(name, value)


def _command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    captured = capsys.readouterr()
    text = out.getvalue() + captured.out + captured.err
    assert_clean(text, f"the output of {' '.join(argv)}")
    return code, out.getvalue() + captured.out


def test_no_secret_in_the_commands_json_output(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = Emulator(now=dt.datetime.now(dt.UTC))
    emulator.add_merchant(MID, KEY, IV, balance=10**7, auto_close=False)
    emulator.authorize(MID, "S1", 1000)
    path = tmp_path / "ecpay.db"
    # A stuck capture in the journal: the reply never came.
    emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
    with Client(
        Credentials(MID, KEY, IV, auto_close=False),
        transport=httpx.MockTransport(emulator.handler),
        journal=SQLiteJournal(path),
    ) as client:
        assert isinstance(raised(client.capture, "S1"), OutcomeUnknown)
    # The sweep's query gets a reply that does not decrypt: its error is in the JSON.
    emulator.faults.inject(Fault.GARBLED_DATA, endpoint=Endpoint.CREDIT_DETAIL, times=None)
    with serving(emulator) as url:
        _environment(monkeypatch, url)
        for argv in (
            ("sweep", "--journal", str(path), "--json"),
            ("journal", "--journal", str(path), "--json"),
            ("plan", "--state", "authorized", "--amount", "1000", "--refund", "100", "--json"),
        ):
            _, text = _command(capsys, *argv)
            json.loads(text)
        # Settings that are wrong are named, not shown, in JSON too.
        for changes in (
            {"ECPAY_MERCHANT_ID": KEY, "ECPAY_HASH_KEY": MID},
            {"ECPAY_HASH_IV": IV[:15]},
            {"ECPAY_HASH_KEY": KEY + "é"},
        ):
            _environment(monkeypatch, url, **changes)
            code, _ = _command(capsys, "sweep", "--journal", str(path), "--json")
            assert code == 2
    out = io.StringIO()
    assert run_demo(json_output=True, out=out, keys=(KEY, IV)) == 0
    assert_clean(out.getvalue(), "demo --json")
    assert json.loads(out.getvalue())["rows"]


# -- channel: the served emulator (admin routes, event log, console) --------------------------


def test_no_secret_in_what_the_served_emulator_answers(emulator: Emulator) -> None:
    with serving(emulator) as url, httpx.Client(base_url=url) as http:
        added = http.post(
            "/_emulator/merchants",
            json={"merchant_id": "2000132", "hash_key": IV, "hash_iv": KEY, "balance": 5},
        )
        assert added.status_code == 201
        assert_clean(added.text, "the admin route's answer")
        for body in (
            {"merchant_id": KEY, "hash_key": MID, "hash_iv": IV},
            {"merchant_id": "2000133", "hash_key": KEY, "hash_iv": IV[:15]},
            {"merchant_id": "2000133", "hash_key": KEY, "hash_iv": IV, "platform_id": KEY},
            {"merchant_id": "2000133", "hash_key": [KEY], "hash_iv": IV},
        ):
            refused = http.post("/_emulator/merchants", json=body)
            assert refused.status_code == 400
            assert_clean(refused.text, "the admin route's refusal")
            assert any(name in refused.json()["error"] for name in body)
        for path in ("/_emulator/events", "/_emulator/merchants", "/_emulator/overview", "/"):
            shown = http.get(path)
            assert shown.status_code == 200, path
            assert_clean(shown.text, f"GET {path}")
    for event in emulator.events:
        assert_object_clean(event, "the event log")


def test_no_secret_in_the_served_emulators_process_list_or_console() -> None:
    """``ecpay-lifecycle serve`` as a real process, the merchant's secrets from the environment:
    its command line (what ``ps`` shows every user) and everything it prints at log level
    debug, through a capture, a reply that does not decrypt and a refused admin request."""
    script = shutil.which("ecpay-lifecycle", path=os.path.dirname(sys.executable))
    assert script is not None, "the ecpay-lifecycle script is not installed in this venv"
    child = subprocess.Popen(
        [script, "serve", "--port", "0", "--log-level", "debug", "--manual-close"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ECPAY_EMULATOR_MERCHANTS": f"{MID}:{KEY}:{IV}"},
    )
    assert child.stdout is not None
    banner = ""
    try:
        banner = child.stdout.readline()
        assert banner.startswith("ECPay emulator on http://127.0.0.1:"), banner
        url = banner.split()[3]
        cmdline = pathlib.Path(f"/proc/{child.pid}/cmdline").read_bytes()
        assert_clean(cmdline.decode("utf-8", "replace"), "serve's command line")
        listing = subprocess.run(
            ["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True
        )
        assert "ecpay-lifecycle serve" in listing.stdout
        assert_clean(listing.stdout, "the process list")
        with (
            httpx.Client(base_url=url, timeout=5.0) as http,
            Client(Credentials(MID, KEY, IV, auto_close=False), base_url=url) as client,
        ):
            order = {"merchant_id": MID, "merchant_trade_no": "P1", "amount": 1000}
            assert http.post("/_emulator/orders", json=order).status_code == 201
            client.capture("P1")
            garbled = {"fault": "garbled_data", "endpoint": "CREDIT_DETAIL"}
            assert http.post("/_emulator/faults", json=garbled).status_code == 201
            assert isinstance(raised(client.query, "P1"), CodecError)
            swapped = {"merchant_id": KEY, "hash_key": MID, "hash_iv": IV}
            assert http.post("/_emulator/merchants", json=swapped).status_code == 400
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            out, err = child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
    assert child.returncode == 0, err
    assert "Traceback" not in err
    assert_clean(banner + out + err, "serve's console output")


# -- channel: pickle and copy -----------------------------------------------------------------


def _holders(emulator: Emulator) -> dict[str, object]:
    credentials = Credentials(MID, KEY, IV)
    return {
        "Credentials": credentials,
        "AesCodec": credentials.codec,
        "Secret": credentials.hash_key,
        "ReplyCodec": ReplyCodec(KEY.encode(), IV.encode()),
        "Client": make_client(emulator),
        "AsyncClient": AsyncClient(credentials, transport=httpx.MockTransport(emulator.handler)),
    }


COPIES: dict[str, Callable[[object], object]] = {
    "pickle": pickle.dumps,
    "pickle protocol 0": functools.partial(pickle.dumps, protocol=0),
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}


@pytest.mark.parametrize("how", COPIES.values(), ids=COPIES.keys())
def test_pickle_and_copy_give_a_typed_error_that_says_why(
    how: Callable[[object], object], emulator: Emulator
) -> None:
    for holder in _holders(emulator).values():
        with pytest.raises(SecretNotSerialisable) as info:
            how(holder)
        assert isinstance(info.value, TypeError)  # as Python's own "cannot pickle" errors
        message = str(info.value)
        assert "secrets are never serialised" in message
        assert "build Credentials from the environment in each process" in message
        assert_clean(message, "the error")


def _nothing(_: object) -> None:
    """A child process's target; never runs."""


def test_a_spawned_process_cannot_be_handed_credentials() -> None:
    # multiprocessing's spawn pickles the target's arguments before it starts the child.
    process = multiprocessing.get_context("spawn").Process(
        target=_nothing, args=(Credentials(MID, KEY, IV),)
    )
    with pytest.raises(SecretNotSerialisable, match="each process"):
        process.start()
