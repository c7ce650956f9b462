"""Codecs for the served versions older than kio's schemas (``apis.is_legacy``): Produce v0-v2.

kelp advertises them because librdkafka only compresses with gzip or snappy when the broker's
Produce range overlaps v0 (and lz4 when FindCoordinator v0 is served). Modern clients never pick
them; an old client that does and sends magic 0/1 message sets gets a clear
UNSUPPORTED_FOR_MESSAGE_FORMAT from the broker, because kelp stores v2 record batches only.

The request decodes into kio's Produce v3 type (v3 only adds ``transactional_id``), so handlers
see one shape; the response encodes from kio's v3 type down to the asked version.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kio.schema.produce.v3.request import PartitionProduceData, ProduceRequest, TopicProduceData

from gateway.kafka import apis
from gateway.kafka.apis import ApiKey
from gateway.kafka.headers import MalformedHeader


class _Reader:
    def __init__(self, data: bytes, position: int) -> None:
        self.data = data
        self.position = position

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.position + size > len(self.data):
            raise MalformedHeader("request body truncated")
        (value,) = struct.unpack_from(fmt, self.data, self.position)
        self.position += size
        return value

    def string(self) -> str:
        length = self.take(">h")
        if length < 0:
            raise MalformedHeader("null topic name")
        return self.raw(length).decode("utf-8")

    def raw(self, length: int) -> bytes:
        if length < 0 or self.position + length > len(self.data):
            raise MalformedHeader("field runs past the frame")
        value = self.data[self.position : self.position + length]
        self.position += length
        return value

    def count(self) -> int:
        value = self.take(">i")
        if value < 0 or value > len(self.data):
            raise MalformedHeader(f"invalid array length {value}")
        return value


def decode_produce(data: bytes, position: int) -> ProduceRequest:
    reader = _Reader(data, position)
    acks = reader.take(">h")
    timeout_ms = reader.take(">i")
    topics = []
    for _ in range(reader.count()):
        name = reader.string()
        partitions = []
        for _ in range(reader.count()):
            index = reader.take(">i")
            length = reader.take(">i")
            records = None if length == -1 else reader.raw(length)
            partitions.append(PartitionProduceData(index=index, records=records))
        topics.append(TopicProduceData(name=name, partition_data=tuple(partitions)))
    return ProduceRequest(transactional_id=None, acks=acks,
                          timeout=datetime.timedelta(milliseconds=timeout_ms),
                          topic_data=tuple(topics))


def encode_produce_response(version: int, response: Any) -> bytes:
    """Encode a kio Produce v3 response entity in the v0, v1 or v2 layout."""
    out = [struct.pack(">i", len(response.responses))]
    for topic in response.responses:
        name = topic.name.encode()
        out.append(struct.pack(">h", len(name)) + name)
        out.append(struct.pack(">i", len(topic.partition_responses)))
        for part in topic.partition_responses:
            out.append(struct.pack(">ihq", part.index, part.error_code.value, part.base_offset))
            if version >= 2:
                append_time = part.log_append_time
                millis = -1 if append_time is None else int(append_time.timestamp() * 1000)
                out.append(struct.pack(">q", millis))
    if version >= 1:
        out.append(struct.pack(">i", int(response.throttle_time.total_seconds() * 1000)))
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Codec:
    decode: Callable[[bytes, int], Any]  # (frame, body offset) -> kio request entity
    encode: Callable[[int, Any], bytes]  # (version, kio response entity) -> body bytes


# Produce's legacy versions as the table has them (for tests that iterate them).
LEGACY_PRODUCE_VERSIONS = range(apis.SUPPORTED[ApiKey.PRODUCE][0],
                                apis.kio_version(ApiKey.PRODUCE, 0))

# By API key; which versions take these is the API table's call (``apis.is_legacy``).
CODECS: dict[int, Codec] = {
    ApiKey.PRODUCE: Codec(decode_produce, encode_produce_response),
}
