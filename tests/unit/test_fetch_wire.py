"""Broker.Fetch replies written and read around their records (kelp.fetch_wire) mean exactly
what betterproto writes and reads: each side reads the other's bytes to the same message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kelp import fetch_wire
from kelp.fetch_wire import FetchReplyWire, MalformedReply, decode_reply, encode_reply
from kelp.rpc.broker import v1 as pb

I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)

partitions = st.builds(
    pb.FetchedPartition, topic=st.text(max_size=20), partition=I32, error_code=I32,
    high_watermark=I64, log_start_offset=I64, last_stable_offset=I64,
    records=st.one_of(st.just(b""), st.binary(max_size=300)),
    aborted=st.lists(st.builds(pb.AbortedTransaction, producer_id=I64, first_offset=I64),
                     max_size=3))
replies = st.builds(pb.FetchReply, request_id=st.integers(0, 2**64 - 1),
                    partitions=st.lists(partitions, max_size=5))


def _wire(reply: pb.FetchReply) -> bytes:
    return bytes(FetchReplyWire(request_id=reply.request_id, partitions=reply.partitions))


@settings(max_examples=200, deadline=None)
@given(reply=replies)
def test_each_side_reads_the_others_bytes(reply: pb.FetchReply) -> None:
    wire = _wire(reply)
    assert pb.FetchReply.FromString(wire) == reply
    assert decode_reply(wire) == reply
    assert decode_reply(bytes(reply)) == reply
    assert b"".join(encode_reply(reply)) == wire


def test_records_are_handed_over_not_copied_when_written() -> None:
    records = b"r" * 100_000
    pieces = encode_reply(pb.FetchReply(request_id=1, partitions=[
        pb.FetchedPartition(topic="t", records=records)]))
    assert any(piece is records for piece in pieces)


def test_grpclib_sees_a_fetch_reply() -> None:
    reply = FetchReplyWire(request_id=5, partitions=[pb.FetchedPartition(topic="t",
                                                                          records=b"abc")])
    assert isinstance(reply, pb.FetchReply)
    decoded = FetchReplyWire.FromString(reply.SerializeToString())
    assert type(decoded) is pb.FetchReply and decoded.partitions[0].records == b"abc"


def test_the_last_records_field_wins_as_protobuf_says() -> None:
    first = bytes(pb.FetchedPartition(topic="t", records=b"old"))
    second = fetch_wire.uvarint(fetch_wire.RECORDS_FIELD << 3 | 2) + b"\x03new"
    inner = first + second
    wire = fetch_wire.uvarint(fetch_wire.PARTITIONS_FIELD << 3 | 2) + \
        fetch_wire.uvarint(len(inner)) + inner
    assert decode_reply(wire).partitions[0].records == b"new"
    assert decode_reply(wire) == pb.FetchReply.FromString(wire)


def test_unknown_fields_are_skipped() -> None:
    unknown = fetch_wire.uvarint(99 << 3 | 0) + b"\x05" + fetch_wire.uvarint(98 << 3 | 5) + \
        b"abcd" + fetch_wire.uvarint(97 << 3 | 1) + b"12345678"
    wire = unknown + _wire(pb.FetchReply(request_id=3, partitions=[
        pb.FetchedPartition(topic="t", records=b"x")]))
    assert decode_reply(wire).partitions[0].records == b"x"
    assert decode_reply(wire).request_id == 3


@pytest.mark.parametrize("wire", [
    b"\x12\x05abc",  # a partition longer than the message
    b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a length past ten varint bytes
    b"\x12",  # a length that never comes
    b"\x12\x04\x32\x10ab",  # records longer than their partition
    b"\x0b",  # a group (wire type 3): not in this message
    b"\x00\x01",  # field number 0
    b"\x09\x01\x02",  # a fixed64 cut short
])
def test_malformed_bytes_are_refused(wire: bytes) -> None:
    with pytest.raises(MalformedReply):
        decode_reply(wire)
