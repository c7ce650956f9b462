"""A raw Kafka client for tests: requests encoded by kio, sent over a plain socket."""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from kio.index import load_response_schema
from kio.serial import entity_reader, entity_writer


def encode_request(body: Any, correlation_id: int = 1, client_id: str = "raw-test") -> bytes:
    header = struct.pack(">hhi", body.__api_key__, body.__version__, correlation_id)
    header += struct.pack(">h", len(client_id)) + client_id.encode()
    if body.__flexible__:
        header += b"\x00"  # no tagged fields
    buffer = io.BytesIO()
    entity_writer(type(body))(buffer, body)
    payload = header + buffer.getvalue()
    return struct.pack(">i", len(payload)) + payload


class RawClient:
    def __init__(self, bootstrap: str, timeout: float = 10.0) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, body: Any, correlation_id: int = 1) -> None:
        self.sock.sendall(encode_request(body, correlation_id))

    def read_frame(self) -> bytes:
        size = struct.unpack(">i", self._exactly(4))[0]
        return self._exactly(size)

    def request(self, body: Any, correlation_id: int = 1) -> Any:
        self.send(body, correlation_id)
        frame = self.read_frame()
        assert struct.unpack_from(">i", frame)[0] == correlation_id
        response_type = load_response_schema(body.__api_key__, body.__version__)
        offset = 4 + (1 if response_type.__flexible__ and body.__api_key__ != 18 else 0)
        response, _ = entity_reader(response_type)(frame, offset)
        return response

    def is_closed_by_peer(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _exactly(self, size: int) -> bytes:
        chunks, remaining = [], size
        while remaining:
            chunk = self.sock.recv(remaining)
            if not chunk:
                raise ConnectionError("closed by peer")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


def request_once(bootstrap: str, body: Any, timeout: float = 30.0) -> Any:
    """One request on a connection of its own; its decoded response."""
    client = RawClient(bootstrap, timeout=timeout)
    try:
        return client.request(body)
    finally:
        client.close()
