"""The one ``host:port`` parser every kelp process, tool and flag uses.

``127.0.0.1:9092``, ``localhost:0``, ``:9092`` (the default host) and ``[::1]:9092`` (an IPv6
host needs its brackets, as in a URL: without them ``::1:9092`` could mean either a host
``::1`` and port 9092 or the address ``::1:9092`` with no port at all).
"""

from __future__ import annotations

from dataclasses import dataclass


def parse_host_port(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"host:port"`` to ``(host, port)``; raises ``ValueError`` that quotes ``text``.

    The host comes back without brackets (``[::1]:9092`` gives ``("::1", 9092)``), ready for
    ``socket.create_connection`` and friends; port 0 is allowed (the OS picks one).
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"unbalanced brackets around the host in {text!r}")
        host = host[1:-1]
    elif ":" in host or "]" in host:
        raise ValueError(f"an IPv6 host needs brackets, as in [::1]:9092, got {text!r}")
    number = int(port)
    if number > 65535:
        raise ValueError(f"port {number} out of range (0-65535) in {text!r}")
    return host or default_host, number


def format_host_port(host: str, port: int) -> str:
    """The inverse of ``parse_host_port``: brackets an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Address:
    """A gRPC endpoint: ``host:port`` or ``unix:/path/to.sock`` (``kelp.grpc.Address``)."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        if text.startswith("unix:"):
            if not text[len("unix:") :]:
                raise ValueError(f"expected unix:/path, got {text!r}")
            return cls(path=text[len("unix:") :])
        try:
            host, port = parse_host_port(text)
        except ValueError as exc:
            raise ValueError(f"{exc} (or unix:/path)") from None
        return cls(host=host, port=port)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return format_host_port(self.host or "", self.port or 0)
