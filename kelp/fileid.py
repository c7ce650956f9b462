"""SeaweedFS file ids: ``<volume>,<needle key hex><cookie 8 hex>``, e.g. ``3,01637037d6``.

Sans-IO and strict. The id names a needle (a chunk of bytes) in a volume: the volume is a
decimal uint32, then after the comma one hex run whose *last eight* digits are the 32-bit cookie
and whose leading 1-16 digits are the 64-bit needle key. ``3,01637037d6`` is volume 3, key 0x01,
cookie 0x637037d6. SeaweedFS writes the key with its leading zero *bytes* dropped, so the key
part has an even number of digits; either parity is accepted when parsing.

Python's ``int()`` would also take ``+3``, `` 3``, ``3_0`` and non-ASCII digits; every field
is therefore matched against an explicit ASCII pattern first. SeaweedFS's own sidecar took
the cookie as a separate parameter and read it as decimal or hex depending on the path, which
is how ids got mis-parsed; :func:`parse_cookie` and :func:`parse_key` accept the two spellings
people actually use, decimal or ``0x`` hex, and nothing that could be either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_VOLUME = 2**32 - 1
# In a cluster a volume's top bits name the broker that numbered it (SeaweedFS's master maps a
# volume to its server; here the number says it): broker ``b`` numbers its volumes from
# ``b << BROKER_VOLUME_BITS``, so any process can tell which broker serves a file id.
BROKER_VOLUME_BITS = 20
MAX_CLUSTER_BROKER_ID = (MAX_VOLUME >> BROKER_VOLUME_BITS)


def broker_of(volume: int) -> int:
    """The id of the broker that numbered ``volume``."""
    return volume >> BROKER_VOLUME_BITS
MAX_KEY = 2**64 - 1
MAX_COOKIE = 2**32 - 1
COOKIE_DIGITS = 8

_VOLUME = re.compile(r"[0-9]{1,10}")
# 1..16 key digits, then exactly 8 cookie digits.
_KEY_COOKIE = re.compile(r"[0-9a-fA-F]{9,24}")
_DECIMAL = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"0[xX]([0-9a-fA-F]{1,16})")


class FileIdError(ValueError):
    """The text is not a valid file id (or part of one); the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class FileId:
    volume: int
    key: int
    cookie: int

    def __post_init__(self) -> None:
        _check_range("volume", self.volume, MAX_VOLUME)
        _check_range("needle key", self.key, MAX_KEY)
        _check_range("cookie", self.cookie, MAX_COOKIE)

    @classmethod
    def parse(cls, text: str) -> FileId:
        return parse(text)

    def __str__(self) -> str:
        return format_file_id(self)


def _check_range(what: str, value: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise FileIdError(f"{what} must be an integer in 0..{maximum}, got {value!r}")


def parse(text: str) -> FileId:
    """Parse ``<volume>,<key hex><cookie 8 hex>``; raises :class:`FileIdError`."""
    volume, comma, key_cookie = text.partition(",")
    if not comma:
        raise FileIdError(
            f"file id {text!r} has no comma; expected <volume>,<needle hex><cookie 8 hex> "
            "such as 3,01637037d6")
    if not _VOLUME.fullmatch(volume) or int(volume) > MAX_VOLUME:
        raise FileIdError(
            f"file id {text!r}: volume {volume!r} is not a decimal integer in 0..{MAX_VOLUME}")
    if not _KEY_COOKIE.fullmatch(key_cookie):
        raise FileIdError(
            f"file id {text!r}: {key_cookie!r} is not 9 to 24 hex digits (1-16 for the needle "
            f"key, then {COOKIE_DIGITS} for the cookie)")
    split = len(key_cookie) - COOKIE_DIGITS
    return FileId(int(volume), int(key_cookie[:split], 16), int(key_cookie[split:], 16))


def format_file_id(file_id: FileId) -> str:
    """The canonical text, as SeaweedFS writes it: leading zero bytes of the key dropped.

    SeaweedFS drops *every* byte of a zero key, leaving only the cookie, which its own parser
    then rejects; key 0 is written as ``00`` here so that every id round-trips.
    """
    key = file_id.key.to_bytes(8, "big").lstrip(b"\0") or b"\0"
    return f"{file_id.volume},{key.hex()}{file_id.cookie:08x}"


def parse_cookie(text: str) -> int:
    """A cookie given on its own: decimal (``1668298710``) or hex with ``0x`` (``0x637037d6``).

    Bare hex (``637037d6``) is refused rather than guessed: ``12345678`` would be both.
    """
    return _parse_number("cookie", text, MAX_COOKIE, example="1668298710 or 0x637037d6")


def parse_key(text: str) -> int:
    """A needle key given on its own: decimal or ``0x`` hex, like :func:`parse_cookie`."""
    return _parse_number("needle key", text, MAX_KEY, example="1 or 0x01")


def parse_volume(text: str) -> int:
    if not _VOLUME.fullmatch(text) or int(text) > MAX_VOLUME:
        raise FileIdError(f"volume must be a decimal integer in 0..{MAX_VOLUME}, got {text!r}")
    return int(text)


def _parse_number(what: str, text: str, maximum: int, *, example: str) -> int:
    if _DECIMAL.fullmatch(text):
        value = int(text)
    elif match := _HEX.fullmatch(text):
        value = int(match.group(1), 16)
    else:
        raise FileIdError(
            f"{what} must be decimal or hex with a 0x prefix (e.g. {example}), got {text!r}")
    if value > maximum:
        raise FileIdError(f"{what} {text!r} exceeds {maximum:#x}")
    return value
