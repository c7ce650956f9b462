"""The small public face of the codec: a Kafka connection as a state machine over bytes.

Feed it received bytes; take whole, decoded requests out; hand it response bodies and send the
bytes it returns. Raises ``ProtocolError`` for anything that must close the connection: an
oversized or garbage frame, an unknown API, a version kelp does not serve. ApiVersions at an
unsupported version is the one exception: the protocol says to answer it in the v0 format with
UNSUPPORTED_VERSION so the client retries lower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.kafka import apis, fetch_response, headers, messages, vet
from gateway.kafka.framing import FrameBuffer, FrameTooLarge, frame


class ProtocolError(Exception):
    """The peer broke the protocol; log this and close the connection."""

    def __init__(self, message: str, *, api_key: int | None = None,
                 version: int | None = None) -> None:
        super().__init__(message)
        self.api_key = api_key
        self.version = version


@dataclass(frozen=True, slots=True)
class Request:
    header: headers.RequestHeader
    body: Any  # a kio request entity, or None for the ApiVersions fallback
    size: int

    @property
    def api_key(self) -> int:
        return self.header.api_key

    @property
    def version(self) -> int:
        return self.header.api_version

    @property
    def unsupported_api_versions(self) -> bool:
        return self.body is None


class KafkaConnection:
    def __init__(self, max_frame_size: int) -> None:
        self._frames = FrameBuffer(max_frame_size)

    @property
    def max_frame_size(self) -> int:
        return self._frames.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, size: int) -> None:
        """Change the limit for frames not yet begun (a frame already arriving keeps it)."""
        self._frames.max_frame_size = size

    def receive_data(self, data: bytes) -> None:
        self._frames.feed(data)

    def pending_frame_size(self) -> int | None:
        """The declared size of a request whose bytes are still arriving, else None."""
        return self._frames.pending_size()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as requests."""
        return self._frames.buffered

    def next_frame(self) -> bytes | None:
        """The next whole frame as it is, or None until more bytes arrive (the bare SASL
        tokens that follow SaslHandshake v0 are framed but are not Kafka requests)."""
        try:
            return self._frames.next_frame()
        except FrameTooLarge as exc:
            raise ProtocolError(str(exc)) from exc

    def next_request(self) -> Request | None:
        """The next whole request, or None until more bytes arrive."""
        try:
            payload = self._frames.next_frame()
        except FrameTooLarge as exc:
            raise ProtocolError(str(exc)) from exc
        if payload is None:
            return None
        try:
            api_key, version, correlation_id = headers.peek_ids(payload)
        except headers.MalformedHeader as exc:
            raise ProtocolError(str(exc)) from exc
        if not apis.supports(api_key, version):
            if api_key == apis.ApiKey.API_VERSIONS and version > 0:
                header = headers.RequestHeader(api_key, version, correlation_id, None)
                return Request(header, None, len(payload))
            raise ProtocolError(
                f"unsupported API {apis.api_name(api_key)} v{version} "
                f"(correlation id {correlation_id})", api_key=api_key, version=version)
        try:
            flexible = apis.request_header_version(api_key, version) >= 2
            header, offset = headers.parse_request_header(payload, flexible=flexible)
            # Vet before decoding: kio's native reader trusts counts and aborts the process
            # when one is huge (see ``vet``). Legacy codecs have their own bounded readers.
            if not apis.is_legacy(api_key, version):
                _end, edits = vet.vet(messages.request_type(api_key, version), payload, offset)
                if edits:  # tagged fields kio does not know: ignored, as Kafka ignores them
                    body = messages.decode_request(api_key, version,
                                                   vet.strip(payload, edits), offset)
                    return Request(header, body, len(payload))
            body = messages.decode_request(api_key, version, payload, offset)
        except (headers.MalformedHeader, vet.Malformed) as exc:
            raise ProtocolError(f"malformed {apis.api_name(api_key)} v{version} request: {exc}",
                                api_key=api_key, version=version) from exc
        except Exception as exc:  # kio raises a variety of errors on garbage
            raise ProtocolError(
                f"malformed {apis.api_name(api_key)} v{version} request: "
                f"{type(exc).__name__}: {exc}", api_key=api_key, version=version) from exc
        return Request(header, body, len(payload))

    def encode_response_buffers(self, request: Request,
                                body: Any) -> list[fetch_response.Buffer]:
        """The framed response as buffers to write in order: a Fetch response around its
        records as they are (see ``fetch_response``), anything else as one buffer."""
        if request.api_key == apis.ApiKey.FETCH:
            buffers = fetch_response.encode(request.version, request.header.correlation_id,
                                            body)
            if buffers is not None:
                return buffers
        return [self.encode_response(request, body)]

    def encode_response(self, request: Request, body: Any) -> bytes:
        """Frame a response entity for ``request`` with the header version kio gives it."""
        flexible = messages.response_header_version(body) >= 1
        return frame(
            headers.response_header(request.header.correlation_id, flexible=flexible)
            + messages.encode_response(request.api_key, request.version, body)
        )
