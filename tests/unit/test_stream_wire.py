"""The hand codec of the broker's Append and Fetch stream messages (kelp.stream_wire) writes
the very bytes betterproto writes and reads them back to the same messages, either way."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kelp import stream_wire
from kelp.fetch_wire import FetchReplyWire
from kelp.rpc.broker import v1 as pb
from kelp.stream_wire import MalformedMessage, StreamCodec, uvarint

U64 = st.integers(0, 2**64 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=20)

append_requests = st.builds(pb.AppendRequest, request_id=U64, topic=TEXT, partition=I32,
                            records=st.binary(max_size=300), acks=I32)
append_replies = st.builds(
    pb.AppendReply, request_id=U64, error_code=I32, error_message=TEXT, base_offset=I64,
    log_append_time=I64, log_start_offset=I64,
    record_errors=st.lists(st.builds(pb.RecordError, batch_index=I32, message=TEXT),
                           max_size=3))
fetch_requests = st.builds(
    pb.FetchRequest, request_id=U64,
    partitions=st.lists(st.builds(pb.FetchPartition, topic=TEXT, partition=I32, offset=I64,
                                  max_bytes=I32), max_size=6),
    max_wait_ms=I32, min_bytes=I32, max_bytes=I32, cancel=st.booleans(),
    isolation_level=I32, file_ranges=st.booleans())
fetched_partitions = st.builds(
    pb.FetchedPartition, topic=TEXT, partition=I32, error_code=I32, high_watermark=I64,
    log_start_offset=I64, records=st.binary(max_size=200), last_stable_offset=I64,
    aborted=st.lists(st.builds(pb.AbortedTransaction, producer_id=I64, first_offset=I64),
                     max_size=3),
    file=st.one_of(st.none(), st.builds(pb.FileRange, path=TEXT, device=U64, inode=U64,
                                        position=I64, size=I64)))

replica_fetch_requests = st.builds(
    pb.ReplicaFetchRequest, topic=TEXT, partition=I32, replica_id=I32, leader_epoch=I32,
    fetch_offset=I64, max_bytes=I32, max_wait_ms=I32, topic_id=TEXT)
replica_fetch_replies = st.builds(
    pb.ReplicaFetchReply, error_code=I32, error_message=TEXT, records=st.binary(max_size=300),
    high_watermark=I64, log_start_offset=I64, log_end_offset=I64, leader_epoch=I32)

CASES = [(stream_wire.APPEND_REQUEST, append_requests),
         (stream_wire.REPLICA_FETCH_REQUEST, replica_fetch_requests),
         (stream_wire.REPLICA_FETCH_REPLY, replica_fetch_replies),
         (stream_wire.APPEND_REPLY, append_replies),
         (stream_wire.FETCH_REQUEST, fetch_requests),
         (stream_wire.FETCHED_PARTITION, fetched_partitions)]


@pytest.mark.parametrize(("schema", "messages"), CASES,
                         ids=[schema.cls.__name__ for schema, _ in CASES])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_same_bytes_as_betterproto_and_back(schema: stream_wire.Schema, messages: Any,
                                                data: st.DataObject) -> None:
    message = data.draw(messages)
    wire = schema.encode(message)
    assert wire == bytes(message)
    assert schema.decode(wire) == message
    assert type(message).FromString(wire) == message


@pytest.mark.parametrize("schema", [schema for schema, _ in CASES] + [
    stream_wire.FETCH_PARTITION, stream_wire.RECORD_ERROR, stream_wire.ABORTED_TRANSACTION,
    stream_wire.FILE_RANGE], ids=lambda schema: schema.cls.__name__)
def test_every_field_of_the_generated_message_is_in_its_table(
        schema: stream_wire.Schema) -> None:
    # A field added to broker.proto (and regenerated) but not here would be dropped on the
    # wire without a word: the tables must name exactly the generated fields.
    generated = {field.name for field in dataclasses.fields(schema.cls)}
    assert {name for name, _, _, _ in schema.by_number.values()} == generated


def test_unknown_fields_of_a_newer_peer_are_skipped() -> None:
    unknown = (uvarint(99 << 3 | 0) + b"\x05" + uvarint(98 << 3 | 5) + b"abcd"
               + uvarint(97 << 3 | 1) + b"12345678" + uvarint(96 << 3 | 2) + b"\x02hi")
    request = pb.AppendRequest(request_id=7, topic="t", partition=2, records=b"r", acks=-1)
    assert stream_wire.APPEND_REQUEST.decode(unknown + bytes(request)) == request


@pytest.mark.parametrize("wire", [
    b"\x12\x05abc",  # a topic longer than the message
    b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a varint past ten bytes
    b"\x08",  # a value that never comes
    b"\x10",  # a key for a varint field with nothing after it
    b"\x0b",  # a group (wire type 3)
    b"\x00\x01",  # field number 0
    b"\x0a\x01x",  # request_id (a varint) sent length-delimited
    b"\x22\x00\x20\x01" + b"\x12\x02\xff\xfe",  # a topic that is not UTF-8
    b"\x09" + b"1234567",  # a fixed64 request_id: wrong wire type
])
def test_malformed_bytes_are_refused(wire: bytes) -> None:
    with pytest.raises((MalformedMessage, UnicodeDecodeError)):
        stream_wire.APPEND_REQUEST.decode(wire)


def test_grpclib_codec_takes_only_the_messages_it_knows() -> None:
    codec = StreamCodec()
    request = pb.AppendRequest(request_id=1, topic="t", records=b"x", acks=1)
    assert codec.encode(request, pb.AppendRequest) == bytes(request)
    assert codec.decode(bytes(request), pb.AppendRequest) == request
    # Anything else is betterproto's (and grpclib's type check stays).
    ack = pb.CommitOffsetsRequest(group_id="g")
    assert codec.decode(codec.encode(ack, pb.CommitOffsetsRequest),
                        pb.CommitOffsetsRequest) == ack
    with pytest.raises(TypeError):
        codec.encode(ack, pb.AppendRequest)
    # A FetchReply subclass that frames its records itself keeps doing so.
    partitions = [pb.FetchedPartition(records=b"abc")]
    reply = FetchReplyWire(request_id=3, partitions=partitions)
    assert codec.decode(codec.encode(reply, FetchReplyWire), FetchReplyWire) == pb.FetchReply(
        request_id=3, partitions=partitions)
