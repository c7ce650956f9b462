"""Exceptions raised by the UCX binding, and the mapping from ``ucs_status_t`` to them.

Every failure UCX reports — a status returned by a call, a status delivered to a completion
callback, an endpoint error callback — becomes a `UcxError` carrying the numeric status and
UCX's own text. Failures that mean "the other side is gone or unreachable" are `PeerError`, so a
caller can fall back (e.g. to HTTP) on exactly those. The binding's own refusals (closed
objects, a bad setting) reuse the closest UCX status so callers need only one field to look at.
"""

from __future__ import annotations

from rdma.ucx._binding import UcxUnavailable
from rdma.ucx._cdef import CONSTANTS

__all__ = ["PeerError", "UcxError", "UcxUnavailable"]

IO_ERROR = CONSTANTS["UCS_ERR_IO_ERROR"]
INVALID_PARAM = CONSTANTS["UCS_ERR_INVALID_PARAM"]
CANCELED = CONSTANTS["UCS_ERR_CANCELED"]
NOT_CONNECTED = CONSTANTS["UCS_ERR_NOT_CONNECTED"]
UNSUPPORTED = CONSTANTS["UCS_ERR_UNSUPPORTED"]

# Statuses that describe the remote side (or the path to it) rather than a local mistake, plus
# UCS_ERR_FIRST_LINK_FAILURE .. UCS_ERR_LAST_ENDPOINT_FAILURE (-40 .. -89).
_PEER_STATUSES = frozenset(
    CONSTANTS[name]
    for name in (
        "UCS_ERR_IO_ERROR",
        "UCS_ERR_UNREACHABLE",
        "UCS_ERR_TIMED_OUT",
        "UCS_ERR_REJECTED",
        "UCS_ERR_NOT_CONNECTED",
        "UCS_ERR_CONNECTION_RESET",
    )
)


class UcxError(Exception):
    """A UCX operation failed. ``status`` is the ``ucs_status_t`` value (negative)."""

    def __init__(self, status: int, what: str, text: str | None = None) -> None:
        self.status = status
        self.what = what
        self.text = text or f"status {status}"
        super().__init__(f"{what}: {self.text} ({status})")


class PeerError(UcxError):
    """The peer died, reset the connection or cannot be reached."""


def is_peer_status(status: int) -> bool:
    return status in _PEER_STATUSES or -89 <= status <= -40
