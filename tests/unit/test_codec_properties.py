"""Property tests of the codec against kio (Kafka's own schemas).

Every request version kelp advertises: anything kio can encode, kelp's connection decodes back
to the same value. Every response version: what kio encodes, kelp frames with the right header
and kio decodes back.
"""

from __future__ import annotations

import datetime
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.static.primitive import Records, i64Timedelta

from gateway.kafka import apis, legacy, messages
from gateway.kafka.connection import KafkaConnection, Request
from gateway.kafka.headers import RequestHeader
from tests.kafka_raw import encode_request

ADVERTISED = [(api, version) for api, (low, high) in sorted(apis.SUPPORTED.items())
              for version in range(low, high + 1)
              if not (api == apis.ApiKey.PRODUCE and version in legacy.LEGACY_PRODUCE_VERSIONS)]
# kio registers strategies for its primitives except record sets; any bytes will do here.
st.register_type_strategy(Records, st.binary(max_size=64).map(Records))
# kio's own strategy reaches the edges of timedelta, where its encoder writes milliseconds its
# decoder then refuses ("timedelta milliseconds overflow"); real clients send -1 or small values.
st.register_type_strategy(i64Timedelta, st.integers(-(2**50), 2**50).map(
    lambda ms: i64Timedelta.parse(datetime.timedelta(milliseconds=ms))))
SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize(("api", "version"), ADVERTISED,
                         ids=[f"{apis.api_name(a)}-v{v}" for a, v in ADVERTISED])
@SETTINGS
@given(data=st.data())
def test_every_request_round_trips(api: int, version: int, data: st.DataObject) -> None:
    request = data.draw(st.from_type(messages.request_type(api, version)))
    conn = KafkaConnection(64 * 1024 * 1024)
    conn.receive_data(encode_request(request, correlation_id=7))
    decoded = conn.next_request()
    assert decoded is not None and decoded.body == request
    assert (decoded.api_key, decoded.version, decoded.header.correlation_id) == (api, version, 7)


@pytest.mark.parametrize(("api", "version"), ADVERTISED,
                         ids=[f"{apis.api_name(a)}-v{v}" for a, v in ADVERTISED])
@SETTINGS
@given(data=st.data())
def test_every_response_frames_for_kio(api: int, version: int, data: st.DataObject) -> None:
    from kio.serial import entity_reader

    response_type = messages.response_type(api, version)
    response = data.draw(st.from_type(response_type))
    request = Request(RequestHeader(api, version, 99, "c"), body=object(), size=0)
    frame = KafkaConnection(1024).encode_response(request, response)
    (size, correlation) = struct.unpack_from(">ii", frame)
    assert size == len(frame) - 4 and correlation == 99
    flexible = response_type.__flexible__ and api != apis.ApiKey.API_VERSIONS
    body_at = 8 + (1 if flexible else 0)
    decoded, _ = entity_reader(response_type)(frame, body_at)
    assert decoded == response
