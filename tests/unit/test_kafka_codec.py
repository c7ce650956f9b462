"""The sans-IO Kafka codec: framing, headers, Produce v0-v2, and the connection object."""

from __future__ import annotations

import datetime
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12 import MetadataRequest
from kio.schema.metadata.v12.request import MetadataRequestTopic
from kio.schema.produce.v3.response import (
    PartitionProduceResponse,
    ProduceResponse,
    TopicProduceResponse,
)

from gateway.kafka import headers, legacy
from gateway.kafka.connection import KafkaConnection, ProtocolError
from gateway.kafka.framing import FrameBuffer, FrameTooLarge, frame
from tests.kafka_raw import encode_request


@given(st.lists(st.binary(max_size=300), max_size=10), st.integers(1, 50))
def test_frames_survive_any_chunking(payloads, chunk):
    stream = b"".join(frame(p) for p in payloads)
    buffer, got = FrameBuffer(1 << 20), []
    for start in range(0, len(stream), chunk):
        buffer.feed(stream[start : start + chunk])
        while (payload := buffer.next_frame()) is not None:
            got.append(payload)
    assert got == payloads and buffer.buffered == 0


def test_oversized_and_negative_frames_are_refused_before_buffering():
    for size in (1025, -1):
        buffer = FrameBuffer(1024)
        buffer.feed(struct.pack(">i", size))
        with pytest.raises(FrameTooLarge):
            buffer.next_frame()


def test_flexible_header_skips_unknown_tagged_fields():
    raw = struct.pack(">hhih", 3, 12, 42, 3) + b"cli" + b"\x02" + b"\x05\x01z" + b"\x09\x00"
    header, offset = headers.parse_request_header(raw + b"BODY", flexible=True)
    assert (header.api_key, header.api_version, header.correlation_id) == (3, 12, 42)
    assert header.client_id == "cli" and raw[offset:] == b"" and offset == len(raw)


def test_connection_decodes_a_kio_encoded_request():
    request = MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="a"),),
                              allow_auto_topic_creation=False,
                              include_topic_authorized_operations=False)
    conn = KafkaConnection(1 << 20)
    conn.receive_data(encode_request(request, correlation_id=9))
    decoded = conn.next_request()
    assert decoded is not None and decoded.body == request
    assert decoded.header.correlation_id == 9 and conn.next_request() is None


def test_connection_refuses_unknown_apis():
    conn = KafkaConnection(1 << 20)
    conn.receive_data(frame(struct.pack(">hhih", 12345, 0, 1, -1)))
    with pytest.raises(ProtocolError, match="unsupported API"):
        conn.next_request()


def test_legacy_produce_round_trip():
    records = b"\x00" * 70
    body = struct.pack(">hi", -1, 5000) + struct.pack(">i", 1) + struct.pack(">h", 3) + b"top"
    body += struct.pack(">i", 1) + struct.pack(">ii", 2, len(records)) + records
    request = legacy.decode_produce(body, 0)
    assert request.acks == -1 and request.timeout == datetime.timedelta(seconds=5)
    (topic,) = request.topic_data
    assert topic.name == "top" and topic.partition_data[0].index == 2
    assert topic.partition_data[0].records == records

    response = ProduceResponse(throttle_time=datetime.timedelta(0), responses=(
        TopicProduceResponse(name="top", partition_responses=(PartitionProduceResponse(
            index=2, error_code=ErrorCode.none, base_offset=77),)),))
    v0 = legacy.encode_produce_response(0, response)
    assert v0 == struct.pack(">ih3si", 1, 3, b"top", 1) + struct.pack(">ihq", 2, 0, 77)
    v2 = legacy.encode_produce_response(2, response)
    assert v2 == v0 + struct.pack(">q", -1) + struct.pack(">i", 0)


def test_legacy_produce_rejects_truncation():
    with pytest.raises(headers.MalformedHeader):
        legacy.decode_produce(struct.pack(">hi", 1, 10) + struct.pack(">i", 5), 0)
