"""The API table: one source of versions, consistent with kio, dispatch and the codecs."""

from __future__ import annotations

import pytest
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.index import api_key_map

from gateway.handlers import HANDLERS
from gateway.handlers.api_versions import response
from gateway.kafka import apis, legacy, messages
from gateway.kafka.apis import ApiKey

SERVED = [(api, version) for api, (low, high) in sorted(apis.SUPPORTED.items())
          for version in range(low, high + 1)]


def test_names_are_kios() -> None:
    for key in ApiKey:
        assert api_key_map[key] == key.name.lower()
    assert apis.api_name(27) == "WRITE_TXN_MARKERS"  # known to kio, not served
    assert apis.api_name(999) == "api_key_999"


def test_every_served_api_has_a_handler_and_nothing_else_does() -> None:
    assert set(HANDLERS) == set(apis.SUPPORTED)
    with pytest.raises(RuntimeError, match="no handler for \\['FETCH'\\]"):
        apis.require_handlers({k: v for k, v in HANDLERS.items() if k != ApiKey.FETCH})
    with pytest.raises(RuntimeError, match="unserved \\['WRITE_TXN_MARKERS'\\]"):
        apis.require_handlers({**HANDLERS, 27: HANDLERS[ApiKey.FETCH]})


def test_api_versions_advertises_exactly_the_table() -> None:
    body = response(3, ErrorCode.none)
    assert {k.api_key: (k.min_version, k.max_version) for k in body.api_keys} == dict(
        apis.SUPPORTED)


@pytest.mark.parametrize(("api", "version"), SERVED)
def test_every_served_version_has_a_codec(api: int, version: int) -> None:
    if apis.is_legacy(api, version):
        assert api in legacy.CODECS and version in legacy.LEGACY_PRODUCE_VERSIONS
    else:
        assert load_request_schema(api, version) is messages.request_type(api, version)
        assert load_response_schema(api, version) is messages.response_type(api, version)


def test_legacy_versions_are_below_kios_first_schema() -> None:
    assert [v for api, v in SERVED if apis.is_legacy(api, v)] == [0, 1, 2]
    assert apis.kio_version(ApiKey.PRODUCE, 1) == 3
    assert apis.kio_version(ApiKey.PRODUCE, 7) == 7
    assert not apis.is_legacy(ApiKey.PRODUCE, -1)  # not served at all


def test_header_versions_come_from_kio() -> None:
    assert apis.request_header_version(ApiKey.METADATA, 8) == 1
    assert apis.request_header_version(ApiKey.METADATA, 9) == 2
    assert apis.request_header_version(ApiKey.PRODUCE, 0) == 1
    assert apis.request_header_version(ApiKey.API_VERSIONS, 3) == 2
    # ApiVersions answers with header v0 even in its flexible versions; others use v1 there.
    def header(api: int, version: int) -> int:
        entity = messages.error_response(messages.response_type(api, version), ErrorCode.none, "")
        return messages.response_header_version(entity)

    assert messages.response_type(ApiKey.API_VERSIONS, 3).__flexible__
    assert header(ApiKey.API_VERSIONS, 3) == 0
    assert header(ApiKey.METADATA, 12) == 1
    assert header(ApiKey.PRODUCE, 2) == 0
