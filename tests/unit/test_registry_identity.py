"""Schema identity independent of JSON key order; Accept negotiation; CONFIG records the
registry cannot read are skipped with a clear reason, and never change a setting."""

from __future__ import annotations

import logging

import pytest

from registry.rest import negotiate
from registry.state import RegistryState, identity_text

CONFIG_KEY = b'{"keytype":"CONFIG","subject":null,"magic":0}'


def test_identity_ignores_key_order_and_whitespace_but_not_array_order():
    a = '{"type": "record", "name": "R", "fields": [{"name": "x", "type": "int"}]}'
    b = '{"fields":[{"type":"int","name":"x"}],"name":"R","type":"record"}'
    assert identity_text("AVRO", a) == identity_text("AVRO", b)
    swapped = ('{"type":"record","name":"R","fields":[{"name":"y","type":"int"},'
               '{"name":"x","type":"int"}]}')
    two = ('{"type":"record","name":"R","fields":[{"name":"x","type":"int"},'
           '{"name":"y","type":"int"}]}')
    assert identity_text("AVRO", swapped) != identity_text("AVRO", two)
    assert identity_text("JSON", "not json") == "not json"
    assert identity_text("PROTOBUF", 'syntax = "proto3";') == 'syntax = "proto3";'


@pytest.mark.parametrize(("accept", "media"), [
    (None, "application/vnd.schemaregistry.v1+json"),
    ("application/json", "application/json"),
    ("application/json;q=0.9, application/vnd.schemaregistry+json;q=0.1", "application/json"),
    ("application/*", "application/vnd.schemaregistry.v1+json"),
    ("text/plain", None),
    ("application/json;q=0", None),
])
def test_negotiation(accept, media):
    assert negotiate(accept) == media


@pytest.mark.parametrize("value", [b"", b"{}", b'{"compatibilityLevel":null}', b"[]",
                                   b'{"compatibilityLevel":""}', b'"FULL"', b"{"])
def test_unreadable_config_records_change_nothing(value, caplog):
    state = RegistryState()
    state.apply(0, CONFIG_KEY, b'{"compatibilityLevel":"FULL"}')
    with caplog.at_level(logging.WARNING, logger="kelp.registry"):
        state.apply(1, CONFIG_KEY, value)
    assert state.global_compatibility == "FULL"
    assert state.skipped_records == 1
    (record,) = caplog.records
    assert record.offset == 1 and "Error" not in record.reason  # no raw exception names


def test_a_null_config_value_deletes_the_setting():
    state = RegistryState()
    state.apply(0, CONFIG_KEY, b'{"compatibilityLevel":"FULL"}')
    state.apply(1, CONFIG_KEY, None)
    assert state.global_compatibility is None
