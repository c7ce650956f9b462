"""A recording TCP proxy: forwards bytes both ways and keeps every request frame it saw.

Threads, not trio: the clients it records (librdkafka, kafka-python, aiokafka, kcat) run in
their own threads, event loops and processes, and a thread per direction per connection is
the least code that cannot be starved by any of them. Requests are recorded whole, without
their 4-byte size prefix, as ``(api_key, api_version, payload)``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from kelp.address import parse_host_port
from kelp.fuzz.stack import free_port

Recorded = tuple[int, int, bytes]


class RecordingProxy:
    def __init__(self, upstream: str, port: int | None = None) -> None:
        self.upstream = parse_host_port(upstream)
        self.port = port if port is not None else free_port()
        self.frames: list[Recorded] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RecordingProxy:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for sock in [self._listener, *self._sockets]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            self._spawn(self._pump, client, server, True)
            self._spawn(self._pump, server, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        buffered = bytearray()
        try:
            while chunk := source.recv(256 * 1024):
                sink.sendall(chunk)
                if requests:
                    buffered += chunk
                    self._record(buffered)
        except OSError:
            pass
        finally:
            # One side went away: close both so the other pump ends too.
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _record(self, buffered: bytearray) -> None:
        while len(buffered) >= 4:
            (size,) = struct.unpack_from(">i", buffered)
            if size < 8 or len(buffered) < 4 + size:
                return
            payload = bytes(buffered[4 : 4 + size])
            del buffered[: 4 + size]
            api_key, version = struct.unpack_from(">hh", payload)
            with self._lock:
                self.frames.append((api_key, version, payload))
