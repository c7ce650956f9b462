"""Bounded decoding: requests are vetted against their schema before kio allocates for them."""

from __future__ import annotations

import contextlib
import datetime
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.schema.metadata.v12 import MetadataRequest
from kio.schema.metadata.v12.request import MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from gateway.kafka import apis, messages, vet
from gateway.kafka.connection import KafkaConnection, ProtocolError
from tests.kafka_raw import encode_request


def _header(api: int, version: int, flexible: bool) -> bytes:
    return struct.pack(">hhih", api, version, 5, 3) + b"cli" + (b"\x00" if flexible else b"")


def _decode(payload: bytes):
    conn = KafkaConnection(64 * 1024 * 1024)
    conn.receive_data(struct.pack(">i", len(payload)) + payload)
    return conn.next_request()


def test_a_huge_compact_array_count_is_refused_before_decoding():
    # The ~30-byte frame that made kio reserve 34 GB and abort the gateway.
    body = b"\xff\xff\xff\xff\x0f" + b"\x00" * 3
    with pytest.raises(ProtocolError, match="cannot fit"):
        _decode(_header(3, 12, True) + body)


def test_a_huge_legacy_array_count_is_refused():
    body = struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 8
    with pytest.raises(ProtocolError, match="cannot fit"):
        _decode(_header(3, 8, False) + body)


def test_null_where_the_schema_forbids_null_is_malformed():
    # Produce v9 (flexible): transactional id null, acks, timeout, topic_data as null (0).
    body = b"\x00" + struct.pack(">hi", -1, 1000) + b"\x00" + b"\x00"
    with pytest.raises(ProtocolError, match="null where the schema forbids null"):
        _decode(_header(0, 9, True) + body)
    # The same shape with an empty array decodes.
    ok = _decode(_header(0, 9, True) + b"\x00" + struct.pack(">hi", -1, 1000) + b"\x01\x00")
    assert ok is not None and ok.body.topic_data == ()


def test_nullable_arrays_may_be_null():
    request = MetadataRequest(topics=None, allow_auto_topic_creation=False,
                              include_topic_authorized_operations=False)
    conn = KafkaConnection(1 << 20)
    conn.receive_data(encode_request(request))
    decoded = conn.next_request()
    assert decoded is not None and decoded.body.topics is None


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_strings_and_records_are_refused(cut: int):
    request = ProduceRequest(transactional_id=None, acks=1, timeout=datetime.timedelta(seconds=1),
                              topic_data=(
        TopicProduceData(name="topic", partition_data=(
            PartitionProduceData(index=0, records=b"x" * 100),)),))
    frame = encode_request(request)
    payload = frame[4:-cut]
    with pytest.raises(ProtocolError):
        _decode(payload)


def test_overlong_varints_are_refused():
    with pytest.raises(vet.Malformed, match="five bytes"):
        vet.read_uvarint(b"\x80\x80\x80\x80\x80\x01", 0, 6)


def test_tagged_fields_stay_inside_their_size():
    request = MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="a"),),
                              allow_auto_topic_creation=True,
                              include_topic_authorized_operations=False)
    frame = bytearray(encode_request(request))
    # Replace the body's final (empty) tagged section by one field claiming 100 bytes.
    frame[-1:] = b"\x01\x00\x64"
    struct.pack_into(">i", frame, 0, len(frame) - 4)
    with pytest.raises(ProtocolError, match="tagged field"):
        _decode(bytes(frame[4:]))


ADVERTISED = [(api, version) for api, (low, high) in sorted(apis.SUPPORTED.items())
              for version in range(low, high + 1) if not apis.is_legacy(api, version)]


@pytest.mark.parametrize(("api", "version"), ADVERTISED,
                         ids=[f"{apis.api_name(a)}-v{v}" for a, v in ADVERTISED])
def test_every_request_type_has_a_vetting_plan(api: int, version: int):
    entity_type = messages.request_type(api, version)
    if vet.min_size(entity_type) == 0:  # no fields at all (ApiVersions v0-2, ListGroups v0-2)
        assert vet.vet(entity_type, b"", 0) == (0, [])
        return
    with pytest.raises(vet.Malformed):
        vet.vet(entity_type, b"\xff" * 3, 0)  # nothing fits in three 0xff bytes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_requests_give_a_request_or_a_protocol_error(data: st.DataObject):
    """Any bytes after a valid header: a decoded request or ProtocolError, nothing else (a
    native abort would kill this test process, which is the point)."""
    api, version = data.draw(st.sampled_from(ADVERTISED))
    flexible = apis.request_header_version(api, version) >= 2
    body = data.draw(st.binary(max_size=64) | st.lists(
        st.sampled_from([b"\xff\xff\xff\xff\x0f", b"\x7f\xff\xff\xff", b"\xff\xff", b"\x00",
                         b"\x01", b"\x80\x80\x80\x80\x80\x01", b"\xff"]),
        max_size=12).map(b"".join))
    with contextlib.suppress(ProtocolError):
        _decode(_header(api, version, flexible) + body)


# Unknown tagged fields: Kafka ignores them (a newer client may add one without a version
# bump); kio's decoder refuses them, so they are cut out before decoding.

def _api_versions_v3(tags: bytes) -> bytes:
    # client_software_name "a", client_software_version "1", then the tagged-field section
    return _header(18, 3, True) + b"\x02a\x021" + tags


def test_an_unknown_tagged_field_is_ignored():
    request = _decode(_api_versions_v3(b"\x02\x05\x02xy\x07\x00"))
    assert request.body.client_software_name == "a"
    assert request.body.client_software_version == "1"


def test_an_unknown_tagged_field_that_overruns_the_frame_is_refused():
    with pytest.raises(ProtocolError, match="runs past the end"):
        _decode(_api_versions_v3(b"\x01\x05\x09xy"))


def test_unknown_tags_inside_a_known_tagged_struct_are_cut_and_its_size_fixed():
    from kio.schema.fetch.v15.request import FetchRequest, ReplicaState

    replica_state = ReplicaState(replica_id=7, replica_epoch=3)
    request = FetchRequest(max_wait=datetime.timedelta(milliseconds=500), min_bytes=1,
                           max_bytes=1024, isolation_level=0, session_id=0, session_epoch=-1,
                           topics=(), forgotten_topics_data=(), rack_id="",
                           cluster_id=None, replica_state=replica_state)
    body = messages.encode(request)
    plain = messages.encode(replica_state)  # int32, int64, empty tagged section (0)
    assert plain.endswith(b"\x00") and plain in body
    # The same struct with an unknown tag 9 inside it, and the request with an unknown tag 4.
    extended = plain[:-1] + b"\x01\x09\x03abc"
    prefix, suffix = body.split(plain)
    tag_start = prefix.rindex(b"\x01" + bytes([len(plain)]))  # tag 1, size of the struct
    body_with_tags = (prefix[:tag_start] + b"\x01" + bytes([len(extended)]) + extended
                      + suffix)
    count_at = prefix.rindex(b"\x01", 0, tag_start)  # the section's count: one field
    body_with_tags = (body_with_tags[:count_at] + b"\x02" + body_with_tags[count_at + 1:]
                      + b"\x04\x01z")
    decoded = _decode(_header(1, 15, True) + body_with_tags).body
    assert decoded.replica_state == replica_state
    assert decoded.max_bytes == 1024


@settings(max_examples=100, deadline=None)
@given(tags=st.lists(st.tuples(st.integers(1, 300), st.binary(max_size=40)), max_size=5))
def test_any_unknown_tags_decode_to_the_request_without_them(tags):
    section = vet._uvarint(len(tags)) + b"".join(
        vet._uvarint(tag) + vet._uvarint(len(value)) + value for tag, value in tags)
    request = _decode(_api_versions_v3(section))
    assert (request.body.client_software_name, request.body.client_software_version) == (
        "a", "1")
