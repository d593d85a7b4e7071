"""The emulator's state as JSON: settings both ways, a typed reader for state files, and the
owner-only files that hold HashKeys (state files, merchants files).

Pure except for the three file functions at the end; imports no emulator module above
:mod:`._settings`, so :mod:`._state` and :mod:`._emulator` both build on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import os
import pathlib
import stat
import tempfile
from collections.abc import Mapping
from typing import Any, cast

import attrs

from ecpay_lifecycle._codec import Secret
from ecpay_lifecycle._exceptions import ConfigurationError, InvalidArgument
from ecpay_lifecycle._models import Action, GatewayStatus, check_aware

from ._settings import EmulatorSettings, Refusal, RefusalReply, ReplyFlavour, UrlEncoding

__all__ = [
    "FORMAT",
    "VERSION",
    "Reader",
    "check_owner_only",
    "read_json_file",
    "settings_from_json",
    "settings_to_json",
    "write_owner_only",
]

#: What a state file says it is, and the newest layout this version reads and writes.
FORMAT = "ecpay-lifecycle-emulator-state"
VERSION = 1

_DURATIONS = {
    "close_limit",
    "notice_after",
    "abandon_after",
    "timestamp_tolerance",
    "credit_detail_lag",
}
_TIMES = {"batch_time", "batch_window_end"}


# -- settings ----------------------------------------------------------------------------------


def settings_from_json(data: object) -> EmulatorSettings:
    """:class:`EmulatorSettings` from JSON: durations in seconds, times as ``"HH:MM"``,
    statuses and enums by value, ``full_amount_actions`` as letters, ``refusals`` as
    ``{"over_date": [code, "message"]}``. Unknown keys are errors."""
    if not isinstance(data, dict):
        raise InvalidArgument("settings must be a JSON object")
    names = {field.name for field in attrs.fields(EmulatorSettings)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise InvalidArgument(f"unknown emulator setting {key!r}")
        try:
            values[key] = _setting(key, value)
        except (ValueError, TypeError, OverflowError) as error:
            raise InvalidArgument(f"setting {key}: {error}") from error
    return EmulatorSettings(**values)


def settings_to_json(settings: EmulatorSettings) -> dict[str, Any]:
    """Every field of ``settings`` as :func:`settings_from_json` reads it back (equal)."""
    out: dict[str, Any] = {}
    for field in attrs.fields(EmulatorSettings):
        value = getattr(settings, field.name)
        if field.name in _DURATIONS:
            out[field.name] = value.total_seconds()
        elif field.name in _TIMES:
            out[field.name] = value.isoformat()
        elif field.name == "full_amount_actions":
            out[field.name] = sorted(action.value for action in value)
        elif field.name == "refusals":
            out[field.name] = {
                reason.value: [reply.rtn_code, reply.rtn_msg] for reason, reply in value.items()
            }
        elif isinstance(value, GatewayStatus):
            out[field.name] = value.chinese
        elif isinstance(value, enum.Enum):
            out[field.name] = value.value
        else:
            out[field.name] = value
    return out


def _setting(key: str, value: Any) -> Any:
    if key in _DURATIONS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"{key} is a number of seconds")
        return dt.timedelta(seconds=value)
    if key in _TIMES:
        return dt.time.fromisoformat(value)
    if key == "credit_detail_flavour":
        return ReplyFlavour(value)
    if key == "reply_url_encoding":
        return UrlEncoding(value)
    if key == "unionpay_start_status":
        return GatewayStatus.parse(value)
    if key == "full_amount_actions":
        return frozenset(Action(letter) for letter in value)
    if key == "refusals":
        return {Refusal(name): RefusalReply(*pair) for name, pair in dict(value).items()}
    return value


# -- reading a state file ----------------------------------------------------------------------


class Reader:
    """Typed access to one JSON object of a state file.

    Every error is a :class:`ConfigurationError` naming where in the file the problem is
    (``orders[3].status``) and what was expected, never the value found: the file holds
    HashKeys, and a swapped field could put one anywhere. The object is held in a
    :class:`Secret`, so neither a repr nor a traceback's locals show it.
    """

    __slots__ = ("_held", "_where")

    def __init__(self, data: object, where: str) -> None:
        held: Secret[object] = Secret(data)
        del data  # out of the locals a traceback shows
        if not isinstance(held.reveal(), dict):
            raise ConfigurationError(f"{where or 'the state'} must be a JSON object")
        self._held = cast("Secret[Mapping[str, Any]]", held)
        self._where = where

    @property
    def where(self) -> str:
        """Where this object is in the file (``orders[3]``)."""
        return self._where or "the state"

    def _path(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def _get(self, key: str) -> Any:
        if key not in self._held.reveal():
            raise ConfigurationError(f"{self._path(key)} is missing")
        return self._held.reveal()[key]

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (and not null)."""
        return self._held.reveal().get(key) is not None

    def raw(self, key: str) -> Any:
        """The value as it is (for JSON passed through unchanged, such as a request)."""
        return self._get(key)

    def text(self, key: str) -> str:
        """A string."""
        value = self._get(key)
        if not isinstance(value, str):
            raise ConfigurationError(f"{self._path(key)} must be a string")
        return value

    def optional_text(self, key: str) -> str | None:
        """A string or null (absent is null)."""
        return self.text(key) if self.has(key) else None

    def integer(self, key: str, *, minimum: int | None = 0) -> int:
        """A whole number, at least ``minimum`` (None: any)."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{self._path(key)} must be a whole number")
        if minimum is not None and value < minimum:
            raise ConfigurationError(f"{self._path(key)} must be at least {minimum}")
        return value

    def number(self, key: str) -> float:
        """A number (int or float)."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"{self._path(key)} must be a number")
        return float(value)

    def flag(self, key: str) -> bool:
        """true or false."""
        value = self._get(key)
        if not isinstance(value, bool):
            raise ConfigurationError(f"{self._path(key)} must be true or false")
        return value

    def time(self, key: str) -> dt.datetime:
        """An ISO 8601 date-time with a UTC offset."""
        text = self.text(key)
        try:
            return check_aware(dt.datetime.fromisoformat(text), field=key)
        except (ValueError, InvalidArgument) as error:
            raise ConfigurationError(
                f"{self._path(key)} must be an ISO 8601 time with a UTC offset"
            ) from error

    def member(self, key: str, cls: type[enum.Enum]) -> Any:
        """A member of ``cls`` by name."""
        name = self.text(key)
        try:
            return cls[name]
        except KeyError as error:
            raise ConfigurationError(
                f"{self._path(key)} must name a {cls.__name__} member"
            ) from error

    def obj(self, key: str) -> Reader:
        """A nested JSON object."""
        return Reader(self._get(key), self._path(key))

    def items(self, key: str) -> list[Reader]:
        """A list of JSON objects."""
        if not isinstance(self._get(key), list):
            raise ConfigurationError(f"{self._path(key)} must be a list")
        return [
            Reader(self._get(key)[index], f"{self._path(key)}[{index}]")
            for index in range(len(self._get(key)))
        ]


# -- files that hold HashKeys ------------------------------------------------------------------


def check_owner_only(path: pathlib.Path, what: str) -> None:
    """Refuse a file that holds HashKeys when another user could read or change it.

    On POSIX the file must belong to this user and have no group or other permission bits
    (``chmod 600``). A missing file is the caller's business (``FileNotFoundError``).
    """
    info = path.stat()
    if os.name != "posix":  # pragma: no cover - the permission model is POSIX's
        return
    if info.st_uid != os.getuid():
        raise ConfigurationError(f"{what} {path} belongs to another user; it holds HashKeys")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigurationError(
            f"{what} {path} can be read by other users and holds HashKeys: chmod 600 {path}"
        )


def read_json_file(path: pathlib.Path, what: str) -> Secret[Any]:
    """The JSON in ``path``, held as a :class:`Secret` (the file may hold HashKeys); a
    missing, unreadable or non-JSON file is a :class:`ConfigurationError` saying which. Neither
    the message, nor a local of a frame, nor a chained error holds the content."""
    try:
        held = Secret(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigurationError(f"cannot read {what} {path}: {error.strerror}") from error
    except UnicodeDecodeError:
        raise ConfigurationError(f"{what} {path} is not UTF-8 text") from None
    line = _json_problem(held)
    if line is not None:
        # Not chained: a JSONDecodeError keeps the whole document.
        raise ConfigurationError(f"{what} {path} is not JSON{line}") from None
    return Secret(json.loads(held.reveal()))


def _json_problem(held: Secret[str]) -> str | None:
    """None when ``held`` parses as JSON, otherwise where it does not (`` (line N)``)."""
    try:
        json.loads(held.reveal())
    except json.JSONDecodeError as error:
        return f" (line {error.lineno})"
    except (ValueError, RecursionError):
        return ""
    return None


def write_owner_only(path: pathlib.Path, content: Secret[str]) -> None:
    """Replace ``path`` with ``content`` atomically; the file is created with mode 0600.

    The text goes to a new file in the same directory (created 0600, never wider), is flushed
    to disk, then renamed over ``path``: a reader or a crash sees the old file or the new one,
    never half of one.
    """
    directory = path.parent
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(content.reveal())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable, where directories sync
        directory_handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_handle)
        finally:
            os.close(directory_handle)
