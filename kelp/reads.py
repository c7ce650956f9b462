"""The parameters of a ``/read`` request (sidecar and broker HTTP), validated strictly (sans-IO).

SeaweedFS's sidecar silently defaulted a missing size or cookie and read the wrong bytes;
here every parameter is required, unknown or repeated ones are errors, and numbers are plain
ASCII decimals in range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kelp import fileid

MAX_READ_BYTES = 64 * 1024 * 1024
MAX_OFFSET = 2**63 - 1


class BadReadRequest(ValueError):
    pass


@dataclass(frozen=True)
class ReadRequest:
    file_id: fileid.FileId
    offset: int
    size: int

    def describe(self) -> dict[str, Any]:
        return {"file_id": str(self.file_id), "volume": self.file_id.volume,
                "needle_key": f"{self.file_id.key:#x}", "cookie": f"{self.file_id.cookie:#010x}",
                "offset": self.offset, "size": self.size}


_ID_FORM = ("file_id",)
_PARTS_FORM = ("volume", "needle", "cookie")
_READ_PARAMS = frozenset((*_ID_FORM, *_PARTS_FORM, "offset", "size"))


def parse_read_request(items: tuple[tuple[str, str], ...]) -> ReadRequest:
    """Validate ``/read`` parameters; raises :class:`BadReadRequest` naming the problem.

    Nothing is defaulted (SeaweedFS's sidecar filled in a missing size and cookie, and the
    reads it served were wrong): the chunk is named by ``file_id`` *or* by ``volume``,
    ``needle`` and ``cookie`` (decimal or 0x hex), and ``offset`` and ``size`` are required.
    Unknown and repeated parameters are errors too, since a typo would otherwise act like an
    omission.
    """
    seen: dict[str, str] = {}
    for name, value in items:
        if name not in _READ_PARAMS:
            raise BadReadRequest(
                f"unknown parameter {name!r}; /read takes file_id (or volume, needle, cookie), "
                "offset and size")
        if name in seen:
            raise BadReadRequest(f"parameter {name!r} given more than once")
        seen[name] = value
    by_id, by_parts = "file_id" in seen, any(p in seen for p in _PARTS_FORM)
    if by_id and by_parts:
        raise BadReadRequest("give either file_id or volume/needle/cookie, not both")
    if not by_id and not by_parts:
        raise BadReadRequest("missing file_id (e.g. file_id=3,01637037d6)")
    required = ["offset", "size"] + ([] if by_id else list(_PARTS_FORM))
    if missing := [name for name in required if name not in seen]:
        raise BadReadRequest(f"missing parameter(s): {', '.join(missing)}")
    try:
        if by_id:
            fid = fileid.parse(seen["file_id"])
        else:
            fid = fileid.FileId(fileid.parse_volume(seen["volume"]),
                                fileid.parse_key(seen["needle"]),
                                fileid.parse_cookie(seen["cookie"]))
    except fileid.FileIdError as exc:
        raise BadReadRequest(str(exc)) from None
    offset = _parse_int("offset", seen["offset"], 0, MAX_OFFSET)
    size = _parse_int("size", seen["size"], 1, MAX_READ_BYTES)
    return ReadRequest(fid, offset, size)


def _parse_int(name: str, text: str, low: int, high: int) -> int:
    # ASCII digits only: int() would also take "+5", " 5", "5_0" and non-ASCII digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise BadReadRequest(f"{name} must be a decimal integer in {low}..{high}, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise BadReadRequest(f"{name} must be in {low}..{high}, got {value}")
    return value
