"""The hand-framed Fetch response is byte for byte kio's, for every Fetch version served.

kio's encoder is the reference (Kafka's own schemas); ``fetch_response`` only avoids copying
the records. Also: the scatter write that sends the buffers delivers them whole and in order.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode
from kio.static.primitive import Records

from gateway.kafka import apis, fetch_response, messages
from gateway.kafka.connection import KafkaConnection, Request
from gateway.kafka.headers import RequestHeader
from gateway.scatter import MAX_BUFFERS_PER_CALL, send_buffers

LOW, HIGH = apis.SUPPORTED[apis.ApiKey.FETCH]
VERSIONS = list(range(LOW, HIGH + 1))
BIG = fetch_response.INLINE_RECORDS + 1  # records past this stay separate buffers
# kio registers strategies for its primitives except record sets (the same registration as
# test_codec_properties'; each drawn body's records are replaced below anyway).
st.register_type_strategy(Records, st.binary(max_size=64).map(Records))


def _request(version: int, correlation_id: int = 1234) -> Request:
    return Request(RequestHeader(apis.ApiKey.FETCH, version, correlation_id, "c"),
                   body=object(), size=0)


def _kio_frame(version: int, body: Any, correlation_id: int = 1234) -> bytes:
    return KafkaConnection(1024).encode_response(_request(version, correlation_id), body)


def _hand_frame(version: int, body: Any, correlation_id: int = 1234) -> bytes:
    buffers = fetch_response.encode(version, correlation_id, body)
    assert buffers is not None
    joined = b"".join(buffers)
    assert fetch_response.frame_size(buffers) == len(joined)
    return joined


def _types(version: int) -> tuple[type, type, type, type]:
    response = messages.response_type(apis.ApiKey.FETCH, version)
    return (response, messages.nested(response, "FetchableTopicResponse"),
            messages.nested(response, "PartitionData"),
            messages.nested(response, "AbortedTransaction"))


def _partition(version: int, index: int, records: bytes | None, *,
               error: ErrorCode = ErrorCode.none,
               aborted: list[tuple[int, int]] | None = None) -> Any:
    _response, _topic, partition, aborted_type = _types(version)
    return messages.build(
        partition, partition_index=index, error_code=error, high_watermark=1_000_000 + index,
        last_stable_offset=999_999, log_start_offset=17, preferred_read_replica=-1,
        aborted_transactions=None if aborted is None else tuple(
            aborted_type(producer_id=pid, first_offset=first) for pid, first in aborted),
        records=records)


def _response(version: int, topics: list[tuple[str, list[Any]]], *,
              throttle_ms: int = 0, error: ErrorCode = ErrorCode.none) -> Any:
    response, topic_type, _partition_type, _aborted = _types(version)
    return messages.build(
        response, throttle_time=datetime.timedelta(milliseconds=throttle_ms), error_code=error,
        session_id=0, responses=tuple(
            messages.build(topic_type, topic=name, topic_id=uuid.uuid5(uuid.NAMESPACE_DNS, name),
                           partitions=tuple(parts))
            for name, parts in topics))


def _cases(version: int) -> dict[str, Any]:
    big = bytes(range(256)) * 40
    return {
        "no topics": _response(version, []),
        "topic without partitions": _response(version, [("t", [])]),
        "empty records": _response(version, [("t", [_partition(version, 0, b"")])]),
        "null records": _response(version, [("t", [_partition(version, 0, None)])]),
        "small records": _response(version, [("t", [_partition(version, 3, b"abc" * 100)])]),
        "large records": _response(version, [("t", [_partition(version, 0, big)])]),
        "errors": _response(version, [("t", [
            _partition(version, 0, b"", error=ErrorCode.not_leader_or_follower),
            _partition(version, 1, b"", error=ErrorCode.offset_out_of_range)])],
            error=ErrorCode.unknown_server_error, throttle_ms=1500),
        "aborted transactions": _response(version, [("t", [
            _partition(version, 0, big, aborted=[(7, 100), (2**40, 0), (-1, 2**62)]),
            _partition(version, 1, b"x", aborted=[]),
            _partition(version, 2, None, aborted=None)])]),
        "many topics": _response(version, [
            (f"topic-{t}-é", [_partition(version, p, big if (t + p) % 3 == 0 else b"r" * p)
                              for p in range(5)]) for t in range(4)]),
    }


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
@pytest.mark.parametrize("case", list(_cases(LOW)))
def test_hand_frame_is_kios(version: int, case: str) -> None:
    body = _cases(version)[case]
    assert _hand_frame(version, body) == _kio_frame(version, body)


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_large_records_are_not_copied(version: int) -> None:
    records = bytes(BIG) * 3
    body = _response(version, [("t", [_partition(version, 0, records),
                                      _partition(version, 1, records)])])
    buffers = fetch_response.encode(version, 1, body)
    assert buffers is not None
    assert sum(1 for b in buffers if b is records) == 2


def test_a_set_tagged_field_is_left_to_kio() -> None:
    version = HIGH
    body = _cases(version)["large records"]
    part = body.responses[0].partitions[0]
    leader_type = type(part.current_leader)
    moved = dataclasses.replace(part, current_leader=leader_type(leader_id=3, leader_epoch=9))
    body = dataclasses.replace(body, responses=(
        dataclasses.replace(body.responses[0], partitions=(moved,)),))
    assert fetch_response.encode(version, 1, body) is None
    buffers = KafkaConnection(1024).encode_response_buffers(_request(version), body)
    assert b"".join(buffers) == _kio_frame(version, body)


def _defaults(entity: Any) -> Any:
    """``entity`` with every tagged field at its default (what kelp sends)."""
    changes = {f.name: f.default for f in dataclasses.fields(entity)
               if f.metadata.get("tag") is not None}
    return dataclasses.replace(entity, **changes)


_records = st.one_of(st.none(), st.binary(max_size=64),
                     st.binary(min_size=BIG - 2, max_size=BIG + 200))


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), correlation_id=st.integers(-(2**31), 2**31 - 1))
def test_hypothesis_bodies_match_kio(version: int, data: st.DataObject,
                                     correlation_id: int) -> None:
    body = data.draw(st.from_type(_types(version)[0]))
    # kio's strategy sets tagged fields kelp never sends; those go through kio (tested above).
    body = dataclasses.replace(_defaults(body), responses=tuple(
        dataclasses.replace(topic, partitions=tuple(
            dataclasses.replace(_defaults(part), records=data.draw(_records))
            for part in topic.partitions))
        for topic in body.responses))
    assert _hand_frame(version, body, correlation_id) == \
        _kio_frame(version, body, correlation_id)


async def test_scatter_write_delivers_every_buffer_in_order() -> None:
    left, right = trio.socket.socketpair()
    sender, receiver = trio.SocketStream(left), trio.SocketStream(right)
    # More buffers than one sendmsg takes, of sizes that make the kernel take part of one.
    buffers: list[bytes | bytearray | memoryview] = [
        bytes([i % 251]) * (1 + (i * 7919) % 20_000) for i in range(MAX_BUFFERS_PER_CALL * 3)]
    buffers[5] = b""
    buffers[9] = bytearray(b"head")
    buffers[11] = memoryview(b"0123456789")[2:8]
    expected = b"".join(buffers)
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(expected):
            chunk = await receiver.receive_some(65536)
            assert chunk
            received.extend(chunk)

    async with sender, receiver, trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await send_buffers(sender, buffers)
    assert bytes(received) == expected


async def test_scatter_write_to_a_gone_peer_is_a_broken_resource() -> None:
    left, right = trio.socket.socketpair()
    sender = trio.SocketStream(left)
    right.close()
    with pytest.raises(trio.BrokenResourceError):
        await send_buffers(sender, [b"a" * 100, b"b" * 10_000_000])
    await sender.aclose()


class _Unread:
    """Records the writer will send from elsewhere (as a segment-file range): only sized."""

    def __len__(self) -> int:
        return 10


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_records_that_are_not_bytes_are_left_to_the_writer(version: int) -> None:
    unread = _Unread()
    body = _response(version, [("t", [_partition(version, 0, b"x" * 10)])])
    expected = _kio_frame(version, body)
    part = dataclasses.replace(body.responses[0].partitions[0], records=unread)
    body = dataclasses.replace(body, responses=(
        dataclasses.replace(body.responses[0], partitions=(part,)),))
    buffers = fetch_response.encode(version, 1234, body)
    assert buffers is not None and unread in buffers
    assert fetch_response.frame_size(buffers) == len(expected)
    at = buffers.index(unread)
    joined = b"".join(b"x" * 10 if b is unread else b for b in buffers)  # type: ignore[misc]
    assert joined == expected and at > 0
