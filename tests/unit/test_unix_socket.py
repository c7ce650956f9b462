"""kelp.unix_socket: a Unix socket's mode is set, never inherited from the umask, and a stale
socket file is replaced."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from kelp.unix_socket import bind_unix


def test_the_mode_is_set_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        listener = bind_unix(tmp_path / "a.sock")
    finally:
        os.umask(previous)
    with listener:
        assert stat.S_IMODE(os.stat(tmp_path / "a.sock").st_mode) == 0o600
        assert not listener.getblocking()
    previous = os.umask(0o077)
    try:
        listener = bind_unix(tmp_path / "b.sock", mode=0o660, gid=os.getgid())
    finally:
        os.umask(previous)
    with listener:
        info = os.stat(tmp_path / "b.sock")
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getgid()


def test_a_stale_socket_is_replaced_and_served(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = bind_unix(path)
    stale.close()  # its file stays behind, as after a crash
    with bind_unix(path) as listener, socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        listener.setblocking(True)
        accepted, _ = listener.accept()
        accepted.close()
