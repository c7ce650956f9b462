"""A request kelp cannot serve because of a fault on its side gets UNKNOWN_SERVER_ERROR in its
own response type (not a dropped connection), for every API and version kelp advertises."""

from __future__ import annotations

import pytest
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from gateway.kafka import apis, messages

ADVERTISED = [(api, version) for api, (low, high) in sorted(apis.SUPPORTED.items())
              for version in range(low, high + 1)]


@pytest.mark.parametrize(("api", "version"), ADVERTISED,
                         ids=[f"{apis.api_name(a)}-v{v}" for a, v in ADVERTISED])
def test_every_response_type_has_an_error_form(api: int, version: int) -> None:
    response_type = messages.response_type(api, version)
    body = messages.error_response(response_type, ErrorCode.unknown_server_error, "kelp: bug")
    if hasattr(body, "error_code"):
        assert body.error_code == ErrorCode.unknown_server_error
    encoded = messages.encode_response(api, version, body)
    if not apis.is_legacy(api, version):
        decoded, _ = entity_reader(response_type)(encoded, 0)
        assert decoded == body
