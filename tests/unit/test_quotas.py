"""Client quotas, sans-IO: entity rules (broker.quotas) and rate measurement and throttling
(gateway.quotas), as Kafka defines them."""

from __future__ import annotations

import pytest

from broker import quotas as store
from gateway.quotas import SAMPLES, WINDOW_S, ClientQuotas, Rate, precedence, throttle_s


def test_entities_are_checked():
    assert store.entity_of([("user", "u"), ("client-id", None)]) == (
        ("client-id", None), ("user", "u"))
    for parts in ([], [("user", "a"), ("user", "b")], [("group", "g")],
                  [("ip", "1.2.3.4"), ("user", "u")], [("ip", "not-an-ip")]):
        with pytest.raises(store.QuotaError):
            store.entity_of(parts)


def test_keys_and_values_are_checked():
    client = store.entity_of([("client-id", "c")])
    ip = store.entity_of([("ip", "10.0.0.1")])
    store.check_ops(client, [store.QuotaOp("producer_byte_rate", 1024, False)])
    store.check_ops(ip, [store.QuotaOp("connection_creation_rate", 5, False)])
    for entity, op in ((client, store.QuotaOp("connection_creation_rate", 5, False)),
                       (ip, store.QuotaOp("producer_byte_rate", 5, False)),
                       (client, store.QuotaOp("producer_byte_rate", 1.5, False)),
                       (client, store.QuotaOp("producer_byte_rate", -1, False)),
                       (client, store.QuotaOp("producer_byte_rate", float("nan"), False)),
                       (client, store.QuotaOp("nope", 1, False))):
        with pytest.raises(store.QuotaError):
            store.check_ops(entity, [op])


def test_filters_match_as_kafka():
    exact = (("client-id", "c"),)
    default = (("client-id", None),)
    both = (("client-id", "c"), ("user", "u"))
    by_name = [store.Filter("client-id", store.EXACT, "c")]
    assert store.matches(exact, by_name, strict=True)
    assert store.matches(both, by_name, strict=False)
    assert not store.matches(both, by_name, strict=True)
    assert store.matches(default, [store.Filter("client-id", store.DEFAULT, None)], False)
    assert not store.matches(exact, [store.Filter("client-id", store.DEFAULT, None)], False)
    assert store.matches(exact, [store.Filter("client-id", store.SPECIFIED, None)], False)
    with pytest.raises(store.QuotaError):
        store.check_filters([store.Filter("client-id", store.EXACT, None)])


def test_the_most_specific_entity_wins():
    order = precedence("u", "c")
    assert order[0] == (("client-id", "c"), ("user", "u"))
    assert order[-1] == (("client-id", None),)
    quotas = ClientQuotas(broker=None)  # type: ignore[arg-type]
    quotas.entries = {(("client-id", None),): {"producer_byte_rate": 10.0},
                      (("client-id", "c"),): {"producer_byte_rate": 99.0}}
    assert quotas.quota("producer_byte_rate", "c") == ((("client-id", "c"),), 99.0)
    assert quotas.quota("producer_byte_rate", "other") == ((("client-id", None),), 10.0)
    assert quotas.quota("consumer_byte_rate", "c") is None


def test_rate_is_measured_over_at_least_the_full_window():
    rate = Rate()
    rate.record(1000, 0.0)
    assert rate.measured(0.5) == (1000 / ((SAMPLES - 1) * WINDOW_S), (SAMPLES - 1) * WINDOW_S)
    # Old windows fall out of the measurement.
    rate.record(10, 100.0)
    assert rate.measured(100.0)[0] == pytest.approx(10 / ((SAMPLES - 1) * WINDOW_S))


def test_throttle_brings_the_rate_back_to_the_quota():
    rate = Rate()
    for second in range(12):
        rate.record(1500, float(second))  # 1500 B/s against a 1000 B/s quota
    observed, span = rate.measured(11.5)
    delay = throttle_s(rate, 1000, 11.5)
    # Waiting ``delay`` without sending makes the average over the span equal the quota.
    assert observed * span / (span + delay) == pytest.approx(1000)
    assert throttle_s(rate, 10_000, 11.5) == 0.0


def test_each_client_under_a_default_quota_is_measured_alone():
    quotas = ClientQuotas(broker=None)  # type: ignore[arg-type]
    quotas.entries = {(("client-id", None),): {"producer_byte_rate": 100.0}}
    assert quotas.record("producer_byte_rate", "a", 900, 0.0) == 0.0  # 90 B/s over 10 s
    assert quotas.record("producer_byte_rate", "b", 900, 0.0) == 0.0
    assert quotas.record("producer_byte_rate", "a", 900, 0.1) > 0
