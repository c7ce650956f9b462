"""A listening Unix socket that only its intended users can ever reach.

Shared by every server on a Unix socket (the gRPC servers in ``kelp.grpc``, the sidecar's
read socket): the socket is bound under umask 0177, so it exists only as 0600 until the
explicit chmod to ``mode`` (and chown to ``gid``); a stale socket file is replaced (the caller
checked that nobody serves it).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def bind_unix(path: str | Path, *, mode: int = 0o600, gid: int | None = None,
              backlog: int = 100) -> socket.socket:
    """A non-blocking listening socket at ``path`` with ``mode`` (and group ``gid``)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o177)  # process-wide, but only while the socket is bound
        try:
            listener.bind(str(path))
        finally:
            os.umask(previous)
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        listener.listen(backlog)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener
