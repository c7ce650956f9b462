"""Client quotas end to end: DescribeClientQuotas/AlterClientQuotas as Kafka answers them,
durable across a broker restart, and enforced — a producer_byte_rate or consumer_byte_rate
at half of what a client does unthrottled halves its measured rate (librdkafka reports the
throttle time the gateway sends)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from tests.kafka_raw import request_once
from tests.kelp_procs import Cluster

VALUE = b"q" * 10_000


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "cluster")
    try:
        yield running.start()
    finally:
        running.stop()


def alter(cluster: Cluster, entity: list[tuple[str, str | None]],
          ops: list[tuple[str, float, bool]], validate_only: bool = False):
    request_type = load_request_schema(49, 1)
    module = sys.modules[request_type.__module__]
    body = request_type(validate_only=validate_only, entries=(module.EntryData(
        entity=tuple(module.EntityData(entity_type=t, entity_name=n) for t, n in entity),
        ops=tuple(module.OpData(key=k, value=v, remove=r) for k, v, r in ops)),))
    (entry,) = request_once(cluster.bootstrap, body).entries
    return entry


def describe(cluster: Cluster, components: list[tuple[str, int, str | None]],
             strict: bool = False) -> dict:
    request_type = load_request_schema(48, 1)
    module = sys.modules[request_type.__module__]
    body = request_type(strict=strict, components=tuple(
        module.ComponentData(entity_type=t, match_type=m, match=n) for t, m, n in components))
    response = request_once(cluster.bootstrap, body)
    assert response.error_code == ErrorCode.none, response.error_message
    return {tuple((e.entity_type, e.entity_name) for e in entry.entity):
            {v.key: v.value for v in entry.values} for entry in response.entries}


def test_quotas_are_described_altered_and_durable(own: Cluster) -> None:
    assert alter(own, [("client-id", "c1")], [("producer_byte_rate", 1024, False)]
                 ).error_code == 0
    assert alter(own, [("client-id", None)], [("consumer_byte_rate", 2048, False)]
                 ).error_code == 0
    assert alter(own, [("user", "u"), ("client-id", "c1")],
                 [("request_percentage", 50, False)]).error_code == 0
    refused = alter(own, [("client-id", "c1")], [("connection_creation_rate", 5, False)])
    assert refused.error_code == ErrorCode.invalid_request
    assert alter(own, [("ip", "nope")], [("connection_creation_rate", 5, False)]
                 ).error_code == ErrorCode.invalid_request
    assert alter(own, [("client-id", "c2")], [("producer_byte_rate", 1, False)],
                 validate_only=True).error_code == 0
    own.restart_broker(hard=True)
    everything = describe(own, [])
    assert everything == {(("client-id", "c1"),): {"producer_byte_rate": 1024.0},
                          (("client-id", None),): {"consumer_byte_rate": 2048.0},
                          (("client-id", "c1"), ("user", "u")): {"request_percentage": 50.0}}
    assert describe(own, [("client-id", 0, "c1")], strict=True) == {
        (("client-id", "c1"),): {"producer_byte_rate": 1024.0}}
    assert list(describe(own, [("client-id", 1, None)])) == [(("client-id", None),)]
    assert list(describe(own, [("user", 2, None)])) == [(("client-id", "c1"), ("user", "u"))]
    assert alter(own, [("client-id", "c1")], [("producer_byte_rate", 0, True)]
                 ).error_code == 0
    assert (("client-id", "c1"),) not in describe(own, [])


OFFERED = 8_000_000  # bytes per second the test producer offers


def _produce_for(cluster: Cluster, topic: str, client_id: str, seconds: float,
                 throttles: list[int], offered: float = OFFERED) -> tuple[float, float]:
    """Produce at ``offered`` bytes per second for ``seconds``: the acknowledged rate over
    the whole run and over its second half (past the burst Kafka's windows allow)."""
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "client.id": client_id,
                         "linger.ms": 5, "compression.type": "none",
                         "queue.buffering.max.kbytes": 16384, "acks": 1,
                         "throttle_cb": lambda event: throttles.append(
                             event.throttle_time)})
    acked: list[tuple[float, int]] = []

    def delivered(err, msg) -> None:
        if err is None:
            acked.append((time.monotonic(), len(msg.value())))

    started = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - started < seconds:
        if sent < (now - started) * offered:
            try:
                producer.produce(topic, VALUE, on_delivery=delivered)
                sent += len(VALUE)
            except BufferError:
                pass  # the client's queue is full: throttled, as it should be
        producer.poll(0.001)
    half = started + seconds / 2
    whole = sum(size for at, size in acked) / seconds
    second_half = sum(size for at, size in acked if at >= half) / (seconds / 2)
    producer.purge()
    producer.flush(30)
    return whole, second_half


def test_a_producer_quota_halves_its_rate(cluster: Cluster, topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1)])[topic_name].result(30)
    client_id = f"quota-{topic_name}"
    # The baseline is the second half of its run too: the first includes the client's
    # connection and metadata round trips, which a loaded machine can stretch to a second.
    _, unthrottled = _produce_for(cluster, topic_name, client_id, 4, [])
    quota = int(unthrottled / 2)
    assert alter(cluster, [("client-id", client_id)],
                 [("producer_byte_rate", quota, False)]).error_code == 0
    try:
        time.sleep(0.5)  # the gateway reads the quotas again at once after an alteration
        throttles: list[int] = []
        # Kafka measures over 11 windows of 1 s, so a client may burst for its first
        # seconds; the second half of the run shows the rate the quota holds it to.
        whole, steady = _produce_for(cluster, topic_name, client_id, 16, throttles)
    finally:
        alter(cluster, [("client-id", client_id)], [("producer_byte_rate", 0, True)])
    print(f"producer: unthrottled {unthrottled / 1e6:.2f} MB/s, quota {quota / 1e6:.2f} MB/s, "
          f"throttled {whole / 1e6:.2f} MB/s over 16 s, {steady / 1e6:.2f} MB/s over its "
          f"second half, {len(throttles)} throttle events")
    assert unthrottled > 0.8 * OFFERED  # the baseline was not limited by the machine
    assert throttles and max(throttles) > 0
    # Held near the quota (Kafka's throttling lags a client with many requests in flight:
    # seen between 0.58 and 0.68 of the unthrottled rate on this shared machine).
    assert 0.35 * unthrottled < steady < 0.75 * unthrottled


def _consume_for(cluster: Cluster, topic: str, client_id: str, seconds: float,
                 throttles: list[int]) -> float:
    """Bytes per second a consumer reads, going round the topic again at its end."""
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "client.id": client_id,
                         "group.id": client_id, "enable.auto.commit": False,
                         "enable.partition.eof": True, "fetch.max.bytes": 1_000_000,
                         "throttle_cb": lambda event: throttles.append(event.throttle_time)})
    consumer.assign([TopicPartition(topic, 0, 0)])
    received = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    received += len(message.value())
                elif message.error().code() == KafkaError._PARTITION_EOF:
                    consumer.seek(TopicPartition(topic, 0, 0))
    finally:
        elapsed = time.monotonic() - started
        consumer.close()
    return received / elapsed


def test_a_consumer_quota_halves_its_rate(cluster: Cluster, topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1)])[topic_name].result(30)
    _produce_for(cluster, topic_name, f"{topic_name}-loader", 5, [])  # 40 MB, read round
    client_id = f"quota-{topic_name}"
    unthrottled = _consume_for(cluster, topic_name, client_id, 2, [])
    quota = int(unthrottled / 2)
    assert alter(cluster, [("client-id", client_id)],
                 [("consumer_byte_rate", quota, False)]).error_code == 0
    try:
        time.sleep(0.5)
        throttles: list[int] = []
        throttled = _consume_for(cluster, topic_name, client_id, 14, throttles)
    finally:
        alter(cluster, [("client-id", client_id)], [("consumer_byte_rate", 0, True)])
    print(f"consumer: unthrottled {unthrottled / 1e6:.1f} MB/s, quota {quota / 1e6:.1f} MB/s, "
          f"throttled {throttled / 1e6:.1f} MB/s, throttle events {len(throttles)}")
    assert throttles and max(throttles) > 0
    assert throttled < 0.75 * unthrottled
